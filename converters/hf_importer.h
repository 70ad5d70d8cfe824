// HF DeepSeek importer internals: the import plan (which .moerun tensor is built from which
// checkpoint tensors, in which dtype, and the graph nodes that use them) and the streaming writer
// that executes it. converter.h is the public entry; this header exists for the tests and the CLI.
//
// Tensor names in the .moerun file (scale tensors add ".scale"):
//   embed, norm, head
//   layers.{l}.attn_norm, layers.{l}.ffn_norm
//   layers.{l}.attn.{q_proj | q_a_proj, q_a_norm, q_b_proj}, .kv_a_proj, .kv_a_norm, .uk_t, .uv, .o_proj
//   layers.{l}.mlp.{gate_proj, up_proj, down_proj}                       (dense layers)
//   layers.{l}.moe.{router, router_bias, experts_gate, experts_up, experts_down,
//                   shared_gate, shared_up, shared_down}                 (MoE layers)
//   mtp.{embed, enorm, hnorm, eh_proj, norm, head} and the MTP decoder layer as mtp.attn_norm,
//   mtp.attn.*, mtp.ffn_norm, mtp.moe.* / mtp.mlp.*
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "converters/converter.h"
#include "converters/hf_config.h"
#include "converters/safetensors.h"
#include "runtime/format/model_writer.h"

namespace moerun::convert {

// One checkpoint tensor seen as a matrix [rows, cols] (1-D tensors: one row), plus its FP8 block
// scale [ceil(rows/128), ceil(cols/128)] when it is F8_E4M3.
struct SourceTensor {
  std::string name;
  const SafetensorsFile* file = nullptr;
  const StTensor* tensor = nullptr;
  DType dtype = DType::kF32;
  uint64_t rows = 1;
  uint64_t cols = 1;
  std::string scale_name;
  const SafetensorsFile* scale_file = nullptr;
  const StTensor* scale = nullptr;
  DType scale_dtype = DType::kF32;
};

// How a planned tensor's bytes are produced from its sources.
enum class Emit : uint8_t {
  kRows,   // the sources' rows, concatenated (one source, or E stacked experts), in spec.dtype
  kScale,  // the sources' FP8 block scales, concatenated, as f32 (for a source quantised by
           // --weights fp8: the scales computed while its weight tensor was written)
  kUkT,    // W_UK of each head of kv_b_proj, transposed: [H, r_kv, d_n]
  kUv,     // W_UV of each head of kv_b_proj: [H, d_v, r_kv]
  kQ8Scale,  // the panel scales computed while the q8_panel weight tensor before it was written
};

struct PlannedTensor {
  TensorSpec spec;
  Emit emit = Emit::kRows;
  std::vector<SourceTensor> sources;
};

struct ImportPlan {
  ModelConfig config;
  Provenance provenance;
  std::vector<PlannedTensor> tensors;  // declaration order = write order
  std::vector<NodeSpec> nodes;
  std::vector<NodeSpec> mtp_nodes;
};

// Maps every checkpoint tensor to its role, checks names, dtypes and shapes against the config, and
// fails if any checkpoint tensor is left over.
Result<ImportPlan> PlanHfImport(const Checkpoint& checkpoint, const HfConfig& config, WeightsMode mode);

// Streams the plan's tensors into `writer` (already Open) in order. Reads each source in chunks
// with pread, converts, appends.
class TensorStreamer {
 public:
  explicit TensorStreamer(bool progress) : progress_(progress) {}
  Status WriteAll(const ImportPlan& plan, ModelWriter* writer);

 private:
  Status WriteTensor(const PlannedTensor& t, uint32_t index, ModelWriter* writer);
  Status WriteRows(const SourceTensor& s, uint64_t r0, uint64_t r1, DType out, uint32_t index, ModelWriter* w);
  // Reads rows [r0, r1) of `s` converted to `out` into `dst`.
  Status ReadRows(const SourceTensor& s, uint64_t r0, uint64_t r1, DType out, std::vector<uint8_t>* dst);
  Status ReadScaleRows(const SourceTensor& s, uint64_t b0, uint64_t b1, std::vector<float>* dst);
  // Block-quantises a non-FP8 source to F8_E4M3, one row of 128x128 blocks at a time, appending the
  // codes and keeping the scales in pending_scales_ for the scale tensor that follows.
  Status WriteQuantized(const SourceTensor& s, uint32_t index, ModelWriter* w);
  // Packs rows of an f32 matrix (starting at a panel boundary) into q8_panel panels, appending the
  // panels and keeping the scales in pending_scales_; `what` names the source for errors.
  Status AppendQ8(const float* rows, uint64_t n_rows, uint64_t cols, const std::string& what, uint32_t index,
                  ModelWriter* w);
  Status WriteQ8(const SourceTensor& s, uint32_t index, ModelWriter* w);
  void Advance(uint64_t bytes);
  void Draw(bool final);

  bool progress_ = false;
  bool tty_ = false;
  uint64_t total_bytes_ = 0;
  uint64_t done_bytes_ = 0;
  size_t total_tensors_ = 0;
  size_t done_tensors_ = 0;
  int64_t last_draw_ms_ = 0;
  std::vector<uint8_t> raw_;
  std::vector<uint8_t> out_;
  std::vector<uint8_t> head_;
  std::vector<float> f32_;
  std::vector<float> scales_;
  std::vector<uint8_t> q_;
  // Block scales computed by WriteQuantized for weight tensor pending_for_, consumed by its scale
  // tensor (written next): ceil(rows/128) * ceil(cols/128) floats per quantised source, i.e. 1/16384
  // of the weight's element count.
  std::vector<float> pending_scales_;
  uint32_t pending_for_ = UINT32_MAX;
};

}  // namespace moerun::convert
