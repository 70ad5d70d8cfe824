// Model: a verified ModelFile resolved into per-node weight views, plus the backend that runs them.
// Immutable after Create(); shared by any number of sessions and threads.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "backends/backend.h"
#include "runtime/core/aligned_buffer.h"
#include "runtime/format/model_file.h"
#include "runtime/model/config.h"

namespace moerun {

// A stack of equally shaped linear weights, e.g. routed experts [E, out, in] or per-head [H, out, in].
struct StackedWeight {
  WeightView first;
  int64_t count = 0;
  uint64_t stride_bytes = 0;   // between consecutive matrices
  int64_t scale_stride = 0;    // floats between consecutive scale grids (F8 only)
  WeightView At(int64_t i) const {
    WeightView w = first;
    w.data = static_cast<const uint8_t*>(first.data) + static_cast<uint64_t>(i) * stride_bytes;
    if (w.scale) w.scale = first.scale + i * scale_stride;
    return w;
  }
};

struct EmbeddingTable {
  DType dtype = DType::kF32;
  const void* data = nullptr;
  int64_t rows = 0;  // vocab
  int64_t cols = 0;  // hidden
};

struct MlaWeights {
  bool q_lora = false;
  WeightView q_proj;            // [H*d_qk, D]            (no q_lora)
  WeightView q_a;               // [r_q, D]
  const float* q_a_norm = nullptr;  // [r_q]
  WeightView q_b;               // [H*d_qk, r_q]
  WeightView kv_a;              // [r_kv + d_r, D]
  const float* kv_a_norm = nullptr; // [r_kv]
  StackedWeight uk_t;           // H × [r_kv, d_n]
  StackedWeight uv;             // H × [d_v, r_kv]
  WeightView o;                 // [D, H*d_v]
};

struct MlpWeights {
  WeightView gate, up;  // [I, D]
  WeightView down;      // [D, I]
};

struct MoeWeights {
  const float* router = nullptr;  // [E, D]
  WeightView router_view;         // the same as a linear weight
  const float* bias = nullptr;    // [E] (noaux_tc)
  StackedWeight gate, up;         // E × [I_e, D]
  StackedWeight down;             // E × [D, I_e]
  bool has_shared = false;
  MlpWeights shared;
};

struct GraphNode {
  fb::Op op = fb::Op::Embedding;
  int32_t layer = -1;
  uint8_t in = 0;
  uint8_t out = 0;
  const float* norm = nullptr;  // RMSNorm
  EmbeddingTable table;         // Embedding
  WeightView head;              // LmHead
  const MlaWeights* mla = nullptr;
  const MlpWeights* mlp = nullptr;
  const MoeWeights* moe = nullptr;
};

class Model {
 public:
  // Resolves and checks every node of the file's main graph (and the MTP nodes) against the config.
  static Result<std::shared_ptr<Model>> Create(std::shared_ptr<ModelFile> file, const std::string& backend,
                                               Precision precision, int n_threads);

  const ModelConfig& config() const { return file_->config(); }
  const ModelFile& file() const { return *file_; }
  const std::vector<GraphNode>& nodes() const { return nodes_; }
  const Backend& backend() const { return *backend_; }
  const std::vector<float>& rope_inv_freq() const { return rope_inv_freq_; }
  float softmax_scale() const { return softmax_scale_; }
  float rope_attention_factor() const { return rope_attention_factor_; }
  int n_threads() const { return n_threads_; }
  bool has_mtp() const { return has_mtp_; }
  // Latent KV cache bytes per token over all layers, as float32 (what the session stores).
  uint64_t kv_bytes_per_token() const;
  // Called after each successful forward pass: the first call logs how the file's pages are mapped
  // when that slows decode (NoteFilePages in page_sizes.h), once per model, for mapped files of at
  // least kNotedFileBytes (smaller ones fit in caches). Thread-safe.
  static constexpr uint64_t kNotedFileBytes = uint64_t{64} << 20;
  void NotePageSizes() const;
  // Where a destroyed session leaves its scratch for the next session on this model.
  ScratchPool& scratch_pool() const { return scratch_pool_; }

 private:
  Model() = default;
  Status Build(bool mtp);

  std::shared_ptr<ModelFile> file_;
  mutable std::atomic<bool> pages_noted_{false};
  mutable ScratchPool scratch_pool_;
  std::unique_ptr<Backend> backend_;
  std::vector<GraphNode> nodes_;
  std::vector<GraphNode> mtp_nodes_;
  std::deque<MlaWeights> mla_;
  std::deque<MlpWeights> mlp_;
  std::deque<MoeWeights> moe_;
  std::vector<WeightView> linear_weights_;
  std::vector<float> rope_inv_freq_;
  float softmax_scale_ = 1.0f;
  float rope_attention_factor_ = 1.0f;
  int n_threads_ = 0;
  bool has_mtp_ = false;
};

}  // namespace moerun
