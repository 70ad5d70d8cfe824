// HF DeepSeek-V2/V3 → .moerun: name mapping (MODEL_SPEC §2, §2.1), dtype policy, shape checks and
// the graph nodes of runtime/model/graph_contract.h.
#include "converters/hf_importer.h"

#include <algorithm>
#include <map>
#include <set>

#include "runtime/core/q8_panel.h"
#include "runtime/format/file_format.h"
#include "runtime/model/graph_contract.h"

namespace moerun::convert {
namespace {

using R = fb::Role;

constexpr const char* kConverterVersion = "0.1.0";
constexpr size_t kMaxListedNames = 5;

std::vector<uint64_t> ScaleShape(uint64_t rows, uint64_t cols) {
  return {CeilDiv(rows, kFp8BlockSize), CeilDiv(cols, kFp8BlockSize)};
}

const char* RoleName(R role) { return fb::EnumNameRole(role); }

// Roles stored as F8_E4M3 under --weights fp8: the linear weights DeepSeek's FP8 checkpoints
// quantise (MODEL_SPEC §3), minus kv_b_proj, whose absorbed split (UkT, Uv) is stored bf16.
bool IsFp8Role(R role) {
  switch (role) {
    case R::QProj: case R::QAProj: case R::QBProj: case R::KvAProj: case R::OProj:
    case R::Gate: case R::Up: case R::Down:
    case R::ExpertsGate: case R::ExpertsUp: case R::ExpertsDown:
    case R::SharedGate: case R::SharedUp: case R::SharedDown:
      return true;
    default:
      return false;
  }
}

class Planner {
 public:
  Planner(const Checkpoint& ck, const HfConfig& hf, WeightsMode mode) : ck_(ck), hf_(hf), c_(hf.config), mode_(mode) {}

  Result<ImportPlan> Run() {
    plan_.config = c_;
    const uint64_t D = c_.hidden_size, V = c_.vocab_size;
    // Main stack.
    MOERUN_ASSIGN_OR_RETURN(uint32_t embed, Single("embed", R::Table, "model.embed_tokens.weight", {V, D}));
    plan_.nodes.push_back(Node(fb::Op::Embedding, -1, {}, {0}, {{R::Table, embed}}));
    for (uint32_t l = 0; l < c_.num_layers; ++l)
      MOERUN_RETURN_IF_ERROR(AddLayer(l, "layers." + std::to_string(l) + ".", &plan_.nodes));
    MOERUN_ASSIGN_OR_RETURN(uint32_t norm, Single("norm", R::Norm, "model.norm.weight", {D}));
    plan_.nodes.push_back(Node(fb::Op::RMSNorm, -1, {0}, {1}, {{R::Norm, norm}}));
    MOERUN_ASSIGN_OR_RETURN(uint32_t head, Single("head", R::Head, "lm_head.weight", {V, D}));
    plan_.nodes.push_back(Node(fb::Op::LmHead, -1, {1}, {}, {{R::Head, head}}));

    // Multi-token prediction module, stored as layer L = num_hidden_layers (MODEL_SPEC §2.1).
    if (c_.num_nextn_predict_layers == 1) MOERUN_RETURN_IF_ERROR(AddMtp());
    MOERUN_RETURN_IF_ERROR(CheckAllConsumed());

    plan_.provenance.converter_version = kConverterVersion;
    plan_.provenance.source = "hf:" + hf_.architecture;
    plan_.provenance.weights_mode = WeightsModeName(mode_);
    plan_.provenance.source_dtype = DominantSourceDType();
    return std::move(plan_);
  }

 private:
  static NodeSpec Node(fb::Op op, int32_t layer, std::vector<uint8_t> in, std::vector<uint8_t> out,
                       std::vector<std::pair<R, uint32_t>> weights) {
    NodeSpec n;
    n.op = op;
    n.layer = layer;
    n.inputs = std::move(in);
    n.outputs = std::move(out);
    n.weights = std::move(weights);
    return n;
  }

  std::string Where(const SourceTensor& s) const { return "'" + s.file->path() + "'"; }

  // Looks up a checkpoint tensor (and its FP8 scale partner), checks dtype and shape, marks both
  // consumed.
  Result<SourceTensor> Source(const std::string& name, const std::vector<uint64_t>& expected) {
    const Checkpoint::Ref* ref = ck_.Find(name);
    if (!ref)
      return InvalidArgument("tensor '" + name + "' is missing: expected it in '" + ck_.weights_source() + "'" +
                             (ck_.sharded() ? " (the index does not list it)" : ""));
    SourceTensor s;
    s.name = name;
    s.file = ref->file;
    s.tensor = ref->tensor;
    if (!ToRuntimeDType(ref->tensor->dtype, &s.dtype))
      return Unsupported("tensor '" + name + "' in file " + Where(s) + " has dtype " +
                         StDTypeName(ref->tensor->dtype) + ", which is not supported (F32, BF16, F16, F8_E4M3)");
    if (ref->tensor->shape != expected)
      return InvalidArgument("tensor '" + name + "' in file " + Where(s) + " has shape " +
                             ShapeString(ref->tensor->shape) + ", expected " + ShapeString(expected));
    s.rows = expected.size() == 2 ? expected[0] : 1;
    s.cols = expected.back();
    const std::string scale_name = name + "_scale_inv";
    const Checkpoint::Ref* sref = ck_.Find(scale_name);
    if (s.dtype == DType::kF8E4M3) {
      if (expected.size() != 2)
        return Unsupported("tensor '" + name + "' in file " + Where(s) + " is F8_E4M3, which is only supported for "
                           "linear weights");
      if (!sref)
        return InvalidArgument("FP8 tensor '" + name + "' in file " + Where(s) + " has no block-scale tensor '" +
                               scale_name + "'");
      s.scale_name = scale_name;
      s.scale_file = sref->file;
      s.scale = sref->tensor;
      const std::string swhere = "'" + sref->file->path() + "'";
      if (!ToRuntimeDType(sref->tensor->dtype, &s.scale_dtype) || s.scale_dtype == DType::kF8E4M3)
        return Unsupported("block-scale tensor '" + scale_name + "' in file " + swhere + " has dtype " +
                           StDTypeName(sref->tensor->dtype) + " (expected F32)");
      const std::vector<uint64_t> want = ScaleShape(s.rows, s.cols);
      if (sref->tensor->shape != want)
        return InvalidArgument("block-scale tensor '" + scale_name + "' in file " + swhere + " has shape " +
                               ShapeString(sref->tensor->shape) + ", expected " + ShapeString(want) + " for '" +
                               name + "' " + ShapeString(expected) + " with 128x128 blocks");
      consumed_.insert(scale_name);
    } else if (sref) {
      return InvalidArgument("unexpected tensor '" + scale_name + "' in file '" + sref->file->path() + "': '" + name +
                             "' is " + StDTypeName(ref->tensor->dtype) + ", not F8_E4M3");
    }
    consumed_.insert(name);
    return s;
  }

  // Output dtype of a role built from sources of dtype `src` (see converter.h).
  Result<DType> OutDType(R role, DType src, const std::string& what) const {
    if (IsF32Role(role)) {
      if (src == DType::kF8E4M3) return Unsupported(what + " is F8_E4M3, but a " + RoleName(role) + " weight cannot be");
      return DType::kF32;
    }
    if ((role == R::Table || role == R::Head) && src == DType::kF8E4M3)
      return Unsupported(what + " is F8_E4M3: FP8 embedding tables / LM heads are not supported");
    switch (mode_) {
      case WeightsMode::kF32: return DType::kF32;
      case WeightsMode::kBF16: return DType::kBF16;
      case WeightsMode::kKeep:
        // The MLA split of an FP8 kv_b_proj is stored dequantised in f32: the 128x128 blocks of
        // kv_b do not survive the per-head transposition. Memory cost for V3: 61 layers x 32768 x 512
        // x 4 bytes ≈ 3.9 GiB instead of ≈ 1 GiB as FP8 (the absorbed path reads it once per token).
        if ((role == R::UkT || role == R::Uv) && src == DType::kF8E4M3) return DType::kF32;
        return src;
      case WeightsMode::kFp8:
        // FP8 sources of these roles are copied with their scales; others are block-quantised.
        return IsFp8Role(role) ? DType::kF8E4M3 : DType::kBF16;
      case WeightsMode::kInt8:
        return role == R::Table ? DType::kBF16 : DType::kQ8Panel;
    }
    return InternalError("unknown weights mode");
  }

  // Declares one output tensor (plus its block scale when it stays FP8) built from `sources`.
  Result<uint32_t> Declare(const std::string& out_name, R role, std::vector<SourceTensor> sources, Emit emit) {
    const DType src = sources.at(0).dtype;
    for (const SourceTensor& s : sources)
      if (s.dtype != src && mode_ == WeightsMode::kKeep)
        return Unsupported("tensors '" + sources[0].name + "' (" + DTypeName(src) + ") and '" + s.name + "' (" +
                           DTypeName(s.dtype) + ") are stacked into '" + out_name +
                           "' but have different dtypes; convert with --weights bf16 or f32");
    MOERUN_ASSIGN_OR_RETURN(DType out, OutDType(role, src, "tensor '" + sources[0].name + "' in file " +
                                                               Where(sources[0])));
    const std::vector<uint64_t> shape = ExpectedShape(role, c_);
    const uint32_t index = static_cast<uint32_t>(plan_.tensors.size());
    PlannedTensor t;
    t.spec.name = out_name;
    t.spec.dtype = out;
    t.spec.shape = shape;
    t.emit = emit;
    t.sources = sources;
    const bool q8 = out == DType::kQ8Panel;
    if (out == DType::kF8E4M3 || q8) {
      t.spec.scale = static_cast<int32_t>(index + 1);
      t.spec.block_rows = q8 ? 1 : kFp8BlockSize;
      t.spec.block_cols = q8 ? q8::kGroupCols : kFp8BlockSize;
    }
    plan_.tensors.push_back(std::move(t));
    if (out == DType::kF8E4M3 || q8) {
      PlannedTensor s;
      s.spec.name = out_name + ".scale";
      s.spec.dtype = DType::kF32;
      s.spec.shape.assign(shape.begin(), shape.end() - 2);
      if (q8) {
        s.spec.shape.push_back(CeilDiv(shape[shape.size() - 2], q8::kPanelRows));
        s.spec.shape.push_back(CeilDiv(shape.back(), q8::kGroupCols));
        s.spec.shape.push_back(q8::kPanelRows);
      } else {
        s.spec.shape.push_back(CeilDiv(shape[shape.size() - 2], kFp8BlockSize));
        s.spec.shape.push_back(CeilDiv(shape.back(), kFp8BlockSize));
      }
      s.emit = q8 ? Emit::kQ8Scale : Emit::kScale;
      s.sources = std::move(sources);
      plan_.tensors.push_back(std::move(s));
    }
    return index;
  }

  // One checkpoint tensor → one output tensor of `role`, shape from the contract.
  Result<uint32_t> Single(const std::string& out_name, R role, const std::string& hf_name,
                          const std::vector<uint64_t>& hf_shape) {
    MOERUN_ASSIGN_OR_RETURN(SourceTensor s, Source(hf_name, hf_shape));
    return Declare(out_name, role, {std::move(s)}, Emit::kRows);
  }

  Result<uint32_t> ByRole(const std::string& out_name, R role, const std::string& hf_name) {
    return Single(out_name, role, hf_name, ExpectedShape(role, c_));
  }

  // Routed experts e = 0..E-1 stacked into [E, out, in].
  Result<uint32_t> Experts(const std::string& out_name, R role, const std::string& prefix, const char* proj) {
    std::vector<uint64_t> shape = ExpectedShape(role, c_);
    shape.erase(shape.begin());
    std::vector<SourceTensor> sources;
    sources.reserve(c_.n_routed_experts);
    for (uint32_t e = 0; e < c_.n_routed_experts; ++e) {
      MOERUN_ASSIGN_OR_RETURN(SourceTensor s,
                              Source(prefix + "mlp.experts." + std::to_string(e) + "." + proj + ".weight", shape));
      sources.push_back(std::move(s));
    }
    return Declare(out_name, role, std::move(sources), Emit::kRows);
  }

  // One decoder layer: six nodes (graph_contract.h). `hf_layer` is the HF layer index (L for MTP).
  Status AddLayer(uint32_t hf_layer, const std::string& out, std::vector<NodeSpec>* nodes) {
    const std::string p = "model.layers." + std::to_string(hf_layer) + ".";
    const int32_t layer = static_cast<int32_t>(hf_layer);
    const uint64_t D = c_.hidden_size, H = c_.num_heads;
    const uint64_t per_head = static_cast<uint64_t>(c_.qk_nope_head_dim) + c_.v_head_dim;

    MOERUN_ASSIGN_OR_RETURN(uint32_t attn_norm, Single(out + "attn_norm", R::Norm, p + "input_layernorm.weight", {D}));
    nodes->push_back(Node(fb::Op::RMSNorm, layer, {0}, {1}, {{R::Norm, attn_norm}}));

    std::vector<std::pair<R, uint32_t>> attn;
    const std::string a = p + "self_attn.";
    if (c_.q_lora_rank == 0) {
      MOERUN_ASSIGN_OR_RETURN(uint32_t q, ByRole(out + "attn.q_proj", R::QProj, a + "q_proj.weight"));
      attn.push_back({R::QProj, q});
    } else {
      MOERUN_ASSIGN_OR_RETURN(uint32_t qa, ByRole(out + "attn.q_a_proj", R::QAProj, a + "q_a_proj.weight"));
      MOERUN_ASSIGN_OR_RETURN(uint32_t qn, ByRole(out + "attn.q_a_norm", R::QANorm, a + "q_a_layernorm.weight"));
      MOERUN_ASSIGN_OR_RETURN(uint32_t qb, ByRole(out + "attn.q_b_proj", R::QBProj, a + "q_b_proj.weight"));
      attn.insert(attn.end(), {{R::QAProj, qa}, {R::QANorm, qn}, {R::QBProj, qb}});
    }
    MOERUN_ASSIGN_OR_RETURN(uint32_t kva, ByRole(out + "attn.kv_a_proj", R::KvAProj, a + "kv_a_proj_with_mqa.weight"));
    MOERUN_ASSIGN_OR_RETURN(uint32_t kvn, ByRole(out + "attn.kv_a_norm", R::KvANorm, a + "kv_a_layernorm.weight"));
    MOERUN_ASSIGN_OR_RETURN(SourceTensor kv_b, Source(a + "kv_b_proj.weight", {H * per_head, c_.kv_lora_rank}));
    MOERUN_ASSIGN_OR_RETURN(uint32_t ukt, Declare(out + "attn.uk_t", R::UkT, {kv_b}, Emit::kUkT));
    MOERUN_ASSIGN_OR_RETURN(uint32_t uv, Declare(out + "attn.uv", R::Uv, {kv_b}, Emit::kUv));
    MOERUN_ASSIGN_OR_RETURN(uint32_t o, ByRole(out + "attn.o_proj", R::OProj, a + "o_proj.weight"));
    attn.insert(attn.end(), {{R::KvAProj, kva}, {R::KvANorm, kvn}, {R::UkT, ukt}, {R::Uv, uv}, {R::OProj, o}});
    nodes->push_back(Node(fb::Op::MlaAttention, layer, {1}, {2}, std::move(attn)));
    nodes->push_back(Node(fb::Op::ResidualAdd, layer, {2}, {0}, {}));

    MOERUN_ASSIGN_OR_RETURN(uint32_t ffn_norm,
                            Single(out + "ffn_norm", R::Norm, p + "post_attention_layernorm.weight", {D}));
    nodes->push_back(Node(fb::Op::RMSNorm, layer, {0}, {1}, {{R::Norm, ffn_norm}}));

    const std::string m = p + "mlp.";
    if (!c_.IsMoeLayer(hf_layer)) {
      MOERUN_ASSIGN_OR_RETURN(uint32_t g, ByRole(out + "mlp.gate_proj", R::Gate, m + "gate_proj.weight"));
      MOERUN_ASSIGN_OR_RETURN(uint32_t u, ByRole(out + "mlp.up_proj", R::Up, m + "up_proj.weight"));
      MOERUN_ASSIGN_OR_RETURN(uint32_t d, ByRole(out + "mlp.down_proj", R::Down, m + "down_proj.weight"));
      nodes->push_back(Node(fb::Op::DenseMlp, layer, {1}, {2}, {{R::Gate, g}, {R::Up, u}, {R::Down, d}}));
    } else {
      std::vector<std::pair<R, uint32_t>> moe;
      MOERUN_ASSIGN_OR_RETURN(uint32_t router, ByRole(out + "moe.router", R::Router, m + "gate.weight"));
      moe.push_back({R::Router, router});
      if (c_.topk_method == TopkMethod::kNoauxTc) {
        MOERUN_ASSIGN_OR_RETURN(uint32_t bias, ByRole(out + "moe.router_bias", R::RouterBias,
                                                      m + "gate.e_score_correction_bias"));
        moe.push_back({R::RouterBias, bias});
      }
      MOERUN_ASSIGN_OR_RETURN(uint32_t eg, Experts(out + "moe.experts_gate", R::ExpertsGate, p, "gate_proj"));
      MOERUN_ASSIGN_OR_RETURN(uint32_t eu, Experts(out + "moe.experts_up", R::ExpertsUp, p, "up_proj"));
      MOERUN_ASSIGN_OR_RETURN(uint32_t ed, Experts(out + "moe.experts_down", R::ExpertsDown, p, "down_proj"));
      moe.insert(moe.end(), {{R::ExpertsGate, eg}, {R::ExpertsUp, eu}, {R::ExpertsDown, ed}});
      const std::string s = m + "shared_experts.";
      if (c_.n_shared_experts > 0) {
        MOERUN_ASSIGN_OR_RETURN(uint32_t sg, ByRole(out + "moe.shared_gate", R::SharedGate, s + "gate_proj.weight"));
        MOERUN_ASSIGN_OR_RETURN(uint32_t su, ByRole(out + "moe.shared_up", R::SharedUp, s + "up_proj.weight"));
        MOERUN_ASSIGN_OR_RETURN(uint32_t sd, ByRole(out + "moe.shared_down", R::SharedDown, s + "down_proj.weight"));
        moe.insert(moe.end(), {{R::SharedGate, sg}, {R::SharedUp, su}, {R::SharedDown, sd}});
      } else {
        // transformers saves zero-width shared experts as empty tensors; they carry nothing.
        for (const char* proj : {"gate_proj.weight", "up_proj.weight", "down_proj.weight"}) {
          const Checkpoint::Ref* r = ck_.Find(s + proj);
          if (r && r->tensor->numel == 0) consumed_.insert(s + proj);
        }
      }
      nodes->push_back(Node(fb::Op::Moe, layer, {1}, {2}, std::move(moe)));
    }
    nodes->push_back(Node(fb::Op::ResidualAdd, layer, {2}, {0}, {}));
    return Status::Ok();
  }

  Status AddMtp() {
    const uint32_t L = c_.num_layers;
    const int32_t layer = static_cast<int32_t>(L);
    const std::string p = "model.layers." + std::to_string(L) + ".";
    const uint64_t D = c_.hidden_size, V = c_.vocab_size;
    auto& nodes = plan_.mtp_nodes;
    // The MTP embedding / head duplicate the main ones in released checkpoints; they are stored as
    // separate tensors so the file does not depend on that.
    MOERUN_ASSIGN_OR_RETURN(uint32_t embed, Single("mtp.embed", R::Table, p + "embed_tokens.weight", {V, D}));
    MOERUN_ASSIGN_OR_RETURN(uint32_t enorm, Single("mtp.enorm", R::ENorm, p + "enorm.weight", {D}));
    MOERUN_ASSIGN_OR_RETURN(uint32_t hnorm, Single("mtp.hnorm", R::HNorm, p + "hnorm.weight", {D}));
    MOERUN_ASSIGN_OR_RETURN(uint32_t eh, ByRole("mtp.eh_proj", R::EhProj, p + "eh_proj.weight"));
    // Reads the token embedding and the residual stream h (buffer 0), writes the fused state to 0.
    nodes.push_back(Node(fb::Op::MtpProject, layer, {0}, {0},
                         {{R::Table, embed}, {R::ENorm, enorm}, {R::HNorm, hnorm}, {R::EhProj, eh}}));
    MOERUN_RETURN_IF_ERROR(AddLayer(L, "mtp.", &nodes));
    MOERUN_ASSIGN_OR_RETURN(uint32_t norm, Single("mtp.norm", R::Norm, p + "shared_head.norm.weight", {D}));
    nodes.push_back(Node(fb::Op::RMSNorm, layer, {0}, {1}, {{R::Norm, norm}}));
    MOERUN_ASSIGN_OR_RETURN(uint32_t head, Single("mtp.head", R::Head, p + "shared_head.head.weight", {V, D}));
    nodes.push_back(Node(fb::Op::LmHead, layer, {1}, {}, {{R::Head, head}}));
    return Status::Ok();
  }

  Status CheckAllConsumed() const {
    std::vector<std::string> left;
    for (const std::string& name : ck_.Names())
      if (!consumed_.count(name)) left.push_back(name);
    if (left.empty()) return Status::Ok();
    std::string msg = "checkpoint '" + ck_.dir() + "' has " + std::to_string(left.size()) + " unexpected tensor" +
                      (left.size() == 1 ? "" : "s") + ": ";
    for (size_t i = 0; i < left.size() && i < kMaxListedNames; ++i)
      msg += (i ? ", '" : "'") + left[i] + "' (in '" + ck_.Find(left[i])->file->path() + "')";
    if (left.size() > kMaxListedNames) msg += ", ...";
    const std::string mtp = "model.layers." + std::to_string(c_.num_layers) + ".";
    if (c_.num_nextn_predict_layers == 0 &&
        std::any_of(left.begin(), left.end(), [&](const std::string& n) { return n.rfind(mtp, 0) == 0; }))
      msg += " (layer " + std::to_string(c_.num_layers) + " looks like an MTP module, but config.json sets "
             "num_nextn_predict_layers to 0)";
    return InvalidArgument(msg);
  }

  std::string DominantSourceDType() const {
    std::map<DType, uint64_t> bytes;
    for (const PlannedTensor& t : plan_.tensors) {
      if (t.emit == Emit::kScale || t.emit == Emit::kQ8Scale) continue;
      for (const SourceTensor& s : t.sources) bytes[s.dtype] += s.tensor->size();
    }
    DType best = DType::kF32;
    uint64_t most = 0;
    for (const auto& [d, n] : bytes)
      if (n > most) {
        most = n;
        best = d;
      }
    return DTypeName(best);
  }

  const Checkpoint& ck_;
  const HfConfig& hf_;
  const ModelConfig& c_;
  WeightsMode mode_;
  ImportPlan plan_;
  std::set<std::string> consumed_;
};

}  // namespace

Result<ImportPlan> PlanHfImport(const Checkpoint& checkpoint, const HfConfig& config, WeightsMode mode) {
  Planner planner(checkpoint, config, mode);
  return planner.Run();
}

Result<WeightsMode> ParseWeightsMode(const std::string& text) {
  if (text == "keep") return WeightsMode::kKeep;
  if (text == "bf16") return WeightsMode::kBF16;
  if (text == "f32") return WeightsMode::kF32;
  if (text == "fp8") return WeightsMode::kFp8;
  if (text == "int8") return WeightsMode::kInt8;
  return InvalidArgument("unknown weights mode '" + text + "' (expected keep, bf16, f32, fp8 or int8)");
}

const char* WeightsModeName(WeightsMode mode) {
  switch (mode) {
    case WeightsMode::kKeep: return "keep";
    case WeightsMode::kBF16: return "bf16";
    case WeightsMode::kF32: return "f32";
    case WeightsMode::kFp8: return "fp8";
    case WeightsMode::kInt8: return "int8";
  }
  return "unknown";
}

namespace {

Status ConvertImpl(const std::string& hf_dir, const std::string& out_path, const ConvertOptions& options) {
  MOERUN_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> ck, Checkpoint::Open(hf_dir));
  MOERUN_ASSIGN_OR_RETURN(HfConfig hf, ParseHfConfigFull(ck->config_text(), ck->config_path()));
  MOERUN_ASSIGN_OR_RETURN(ImportPlan plan, PlanHfImport(*ck, hf, options.weights));

  ModelWriter writer;  // removes its temporary file unless Finish() succeeds
  writer.SetConfig(plan.config);
  writer.SetProvenance(plan.provenance);
  for (const PlannedTensor& t : plan.tensors) writer.AddTensor(t.spec);
  for (const NodeSpec& n : plan.nodes) writer.AddNode(n);
  for (const NodeSpec& n : plan.mtp_nodes) writer.AddMtpNode(n);
  MOERUN_RETURN_IF_ERROR(writer.Open(out_path));
  TensorStreamer streamer(options.progress);
  MOERUN_RETURN_IF_ERROR(streamer.WriteAll(plan, &writer));
  return writer.Finish();
}

}  // namespace

Status ConvertHfCheckpoint(const std::string& hf_dir, const std::string& out_path, const ConvertOptions& options) {
  // Library code never lets an exception escape; the writer's destructor has removed the temporary
  // file by the time one arrives here.
  try {
    return ConvertImpl(hf_dir, out_path, options);
  } catch (const std::bad_alloc&) {
    return OutOfMemory("converting '" + hf_dir + "': out of memory");
  } catch (const std::exception& e) {
    return InternalError("converting '" + hf_dir + "': " + e.what());
  }
}

}  // namespace moerun::convert
