// ModelWriter: writes a .moerun file in one streaming pass. Declare every tensor and node first,
// then Open() lays out the file, and tensor bytes are appended in declaration order; Finish() writes
// the graph with checksums and renames the temporary file onto the output path. Until Finish()
// succeeds, nothing exists under the output name; the destructor removes an unfinished temporary.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "moerun_generated.h"
#include "runtime/core/dtype.h"
#include "runtime/core/status.h"
#include "runtime/model/config.h"

namespace moerun {

struct TensorSpec {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<uint64_t> shape;
  int32_t scale = -1;  // F8_E4M3 / Q8_PANEL: index of its F32 scale tensor
  uint32_t block_rows = 0;
  uint32_t block_cols = 0;
};

struct NodeSpec {
  fb::Op op = fb::Op::Embedding;
  int32_t layer = -1;
  std::vector<uint8_t> inputs;
  std::vector<uint8_t> outputs;
  std::vector<std::pair<fb::Role, uint32_t>> weights;
};

struct Provenance {
  std::string converter_version;
  std::string source;
  std::string source_dtype;
  std::string weights_mode;
};

class ModelWriter {
 public:
  ModelWriter() = default;
  ~ModelWriter();
  ModelWriter(const ModelWriter&) = delete;
  ModelWriter& operator=(const ModelWriter&) = delete;

  void SetConfig(const ModelConfig& config) { config_ = config; }
  void SetProvenance(const Provenance& p) { provenance_ = p; }
  uint32_t AddTensor(TensorSpec spec);
  void AddNode(NodeSpec node) { nodes_.push_back(std::move(node)); }
  void AddMtpNode(NodeSpec node) { mtp_nodes_.push_back(std::move(node)); }
  const TensorSpec& tensor(uint32_t i) const { return specs_[i]; }
  size_t num_tensors() const { return specs_.size(); }
  uint64_t TensorBytes(uint32_t i) const { return layout_[i].size; }
  uint64_t total_weight_bytes() const { return weights_size_; }

  // Lays out the file and writes the header area to `path` + ".tmp.<pid>".
  Status Open(const std::string& path);
  // Appends bytes of tensor `index`; tensors must be completed in declaration order.
  Status Append(uint32_t index, const void* data, size_t bytes);
  // Verifies every tensor was written completely, writes graph and header, fsyncs, renames.
  Status Finish();
  // Removes the temporary file (also done by the destructor if Finish() did not succeed).
  void Abort();

 private:
  struct Layout {
    uint64_t offset = 0;
    uint64_t size = 0;
    uint64_t written = 0;
    uint32_t crc = 0;
  };
  std::vector<uint8_t> BuildGraph() const;
  Status WriteAll(uint64_t file_offset, const void* data, size_t bytes);

  ModelConfig config_;
  Provenance provenance_;
  std::vector<TensorSpec> specs_;
  std::vector<Layout> layout_;
  std::vector<NodeSpec> nodes_;
  std::vector<NodeSpec> mtp_nodes_;
  std::string path_;
  std::string tmp_path_;
  int fd_ = -1;
  uint64_t graph_offset_ = 0;
  uint64_t graph_size_ = 0;
  uint64_t weights_offset_ = 0;
  uint64_t weights_size_ = 0;
  uint32_t current_ = 0;
  bool finished_ = false;
};

}  // namespace moerun
