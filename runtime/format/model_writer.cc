#include "runtime/format/model_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "runtime/format/file_format.h"

namespace moerun {
namespace {


flatbuffers::Offset<fb::Config> BuildConfig(flatbuffers::FlatBufferBuilder& b, const ModelConfig& c) {
  auto rope = fb::CreateRopeConfig(b, c.rope.theta, static_cast<fb::RopeScaling>(c.rope.scaling), c.rope.factor,
                                   c.rope.original_max_position_embeddings, c.rope.beta_fast, c.rope.beta_slow,
                                   c.rope.mscale, c.rope.mscale_all_dim, c.rope.attention_factor);
  fb::ConfigBuilder cb(b);
  cb.add_architecture(static_cast<fb::Architecture>(c.architecture));
  cb.add_vocab_size(c.vocab_size);
  cb.add_hidden_size(c.hidden_size);
  cb.add_intermediate_size(c.intermediate_size);
  cb.add_moe_intermediate_size(c.moe_intermediate_size);
  cb.add_num_layers(c.num_layers);
  cb.add_num_heads(c.num_heads);
  cb.add_q_lora_rank(c.q_lora_rank);
  cb.add_kv_lora_rank(c.kv_lora_rank);
  cb.add_qk_nope_head_dim(c.qk_nope_head_dim);
  cb.add_qk_rope_head_dim(c.qk_rope_head_dim);
  cb.add_v_head_dim(c.v_head_dim);
  cb.add_n_routed_experts(c.n_routed_experts);
  cb.add_n_shared_experts(c.n_shared_experts);
  cb.add_num_experts_per_tok(c.num_experts_per_tok);
  cb.add_n_group(c.n_group);
  cb.add_topk_group(c.topk_group);
  cb.add_routed_scaling_factor(c.routed_scaling_factor);
  cb.add_norm_topk_prob(c.norm_topk_prob);
  cb.add_first_k_dense_replace(c.first_k_dense_replace);
  cb.add_scoring_func(static_cast<fb::ScoringFunc>(c.scoring_func));
  cb.add_topk_method(static_cast<fb::TopkMethod>(c.topk_method));
  cb.add_rms_norm_eps(c.rms_norm_eps);
  cb.add_rope(rope);
  cb.add_max_position_embeddings(c.max_position_embeddings);
  cb.add_bos_token_id(c.bos_token_id);
  cb.add_eos_token_id(c.eos_token_id);
  cb.add_num_nextn_predict_layers(c.num_nextn_predict_layers);
  return cb.Finish();
}

flatbuffers::Offset<flatbuffers::Vector<flatbuffers::Offset<fb::Node>>> BuildNodes(
    flatbuffers::FlatBufferBuilder& b, const std::vector<NodeSpec>& nodes) {
  std::vector<flatbuffers::Offset<fb::Node>> out;
  for (const NodeSpec& n : nodes) {
    std::vector<fb::WeightSlot> slots;
    for (const auto& [role, tensor] : n.weights) slots.emplace_back(role, tensor);
    out.push_back(fb::CreateNode(b, n.op, n.layer, b.CreateVector(n.inputs), b.CreateVector(n.outputs),
                                 b.CreateVectorOfStructs(slots)));
  }
  return b.CreateVector(out);
}

}  // namespace

ModelWriter::~ModelWriter() {
  if (!finished_) Abort();
}

uint32_t ModelWriter::AddTensor(TensorSpec spec) {
  specs_.push_back(std::move(spec));
  return static_cast<uint32_t>(specs_.size() - 1);
}

std::vector<uint8_t> ModelWriter::BuildGraph() const {
  flatbuffers::FlatBufferBuilder b(1 << 16);
  b.ForceDefaults(true);  // the graph's size must not depend on checksum values (written twice)
  auto config = BuildConfig(b, config_);
  std::vector<flatbuffers::Offset<fb::Tensor>> tensors;
  for (size_t i = 0; i < specs_.size(); ++i) {
    const TensorSpec& s = specs_[i];
    tensors.push_back(fb::CreateTensor(b, b.CreateString(s.name), static_cast<fb::DType>(s.dtype),
                                       b.CreateVector(s.shape), layout_[i].offset, layout_[i].size, s.scale,
                                       s.block_rows, s.block_cols, layout_[i].crc));
  }
  auto tensor_vec = b.CreateVector(tensors);
  auto nodes = BuildNodes(b, nodes_);
  auto mtp = BuildNodes(b, mtp_nodes_);
  auto prov = fb::CreateProvenance(b, b.CreateString(provenance_.converter_version), b.CreateString(provenance_.source),
                                   b.CreateString(provenance_.source_dtype), b.CreateString(provenance_.weights_mode));
  auto model = fb::CreateModel(b, kFormatVersion, config, tensor_vec, nodes, mtp, prov);
  fb::FinishModelBuffer(b, model);
  return std::vector<uint8_t>(b.GetBufferPointer(), b.GetBufferPointer() + b.GetSize());
}

Status ModelWriter::WriteAll(uint64_t file_offset, const void* data, size_t bytes) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  while (bytes > 0) {
    const ssize_t n = ::pwrite(fd_, p, bytes, static_cast<off_t>(file_offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return IoError("writing '" + tmp_path_ + "': " + std::strerror(errno));
    }
    if (n == 0) return IoError("writing '" + tmp_path_ + "': no progress (disk full?)");
    p += n;
    bytes -= static_cast<size_t>(n);
    file_offset += static_cast<uint64_t>(n);
  }
  return Status::Ok();
}

Status ModelWriter::Open(const std::string& path) {
  MOERUN_RETURN_IF_ERROR(config_.Validate());
  layout_.assign(specs_.size(), Layout{});
  uint64_t offset = 0;
  for (size_t i = 0; i < specs_.size(); ++i) {
    const TensorSpec& s = specs_[i];
    uint64_t bytes;
    if (!StorageBytes(s.dtype, s.shape, &bytes))
      return InvalidArgument("tensor '" + s.name + "': size overflows or shape " + ShapeString(s.shape) + " does not fit " +
                             DTypeName(s.dtype));
    offset = AlignUp(offset, TensorAlignment(bytes));
    layout_[i].offset = offset;
    layout_[i].size = bytes;
    offset += bytes;
  }
  weights_size_ = offset;
  graph_size_ = BuildGraph().size();
  graph_offset_ = kHeaderSize;
  weights_offset_ = AlignUp(graph_offset_ + graph_size_, kWeightsAlignment);

  path_ = path;
  tmp_path_ = path + ".tmp." + std::to_string(::getpid());
  fd_ = ::open(tmp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) return IoError("cannot create '" + tmp_path_ + "': " + std::strerror(errno));
  current_ = 0;
  return Status::Ok();
}

Status ModelWriter::Append(uint32_t index, const void* data, size_t bytes) {
  if (fd_ < 0) return InternalError("ModelWriter::Append before Open");
  while (current_ < specs_.size() && layout_[current_].written == layout_[current_].size) ++current_;
  if (index != current_)
    return InternalError("tensor '" + specs_[index].name + "' written out of order (expected '" +
                         (current_ < specs_.size() ? specs_[current_].name : std::string("<end>")) + "')");
  Layout& l = layout_[index];
  if (bytes > l.size - l.written)
    return InternalError("tensor '" + specs_[index].name + "': more bytes than its shape holds");
  MOERUN_RETURN_IF_ERROR(WriteAll(weights_offset_ + l.offset + l.written, data, bytes));
  l.crc = Crc32c(data, bytes, l.crc);
  l.written += bytes;
  return Status::Ok();
}

Status ModelWriter::Finish() {
  if (fd_ < 0) return InternalError("ModelWriter::Finish before Open");
  for (size_t i = 0; i < specs_.size(); ++i)
    if (layout_[i].written != layout_[i].size)
      return InternalError("tensor '" + specs_[i].name + "' was not written completely");
  const std::vector<uint8_t> graph = BuildGraph();
  if (graph.size() != graph_size_) return InternalError("graph size changed between layout and finish");
  MOERUN_RETURN_IF_ERROR(WriteAll(graph_offset_, graph.data(), graph.size()));
  FileHeader h{};
  std::memcpy(h.magic, kFileMagic, sizeof(kFileMagic));
  h.format_version = kFormatVersion;
  h.min_reader_version = kFormatVersion;
  h.graph_offset = graph_offset_;
  h.graph_size = graph_size_;
  h.weights_offset = weights_offset_;
  h.weights_size = weights_size_;
  h.graph_crc32c = Crc32c(graph.data(), graph.size());
  h.header_crc32c = Crc32c(&h, offsetof(FileHeader, header_crc32c));
  MOERUN_RETURN_IF_ERROR(WriteAll(0, &h, sizeof(h)));
  // The file must end at the end of the weight area even if the last tensor is empty-padded.
  if (::ftruncate(fd_, static_cast<off_t>(weights_offset_ + weights_size_)) != 0)
    return IoError("sizing '" + tmp_path_ + "': " + std::strerror(errno));
  if (::fsync(fd_) != 0) return IoError("flushing '" + tmp_path_ + "': " + std::strerror(errno));
  // The written pages sit in the page cache as small folios, which a loader's mapping can only map
  // with 4 KiB pages (weights then stream ~20% slower than from 2 MiB pages). Now that they are on
  // disk, drop them: the first load reads the file back through its MADV_HUGEPAGE mapping in 2 MiB
  // folios. Advice only; a failure loses nothing.
  (void)::posix_fadvise(fd_, 0, 0, POSIX_FADV_DONTNEED);
  if (::close(fd_) != 0) {
    fd_ = -1;
    return IoError("closing '" + tmp_path_ + "': " + std::strerror(errno));
  }
  fd_ = -1;
  if (std::rename(tmp_path_.c_str(), path_.c_str()) != 0)
    return IoError("renaming '" + tmp_path_ + "' to '" + path_ + "': " + std::strerror(errno));
  finished_ = true;
  return Status::Ok();
}

void ModelWriter::Abort() {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
  if (!tmp_path_.empty()) ::unlink(tmp_path_.c_str());
}

}  // namespace moerun
