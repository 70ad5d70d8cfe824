// Session: a latent KV cache with its sequences, and the executor that runs the model's graph over a
// batch of tokens from those sequences. Used by one thread at a time; many sessions share a Model.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <vector>

#include "runtime/core/aligned_buffer.h"
#include "runtime/exec/kv_cache.h"
#include "runtime/model/model.h"

namespace moerun {

struct SessionOptions {
  uint32_t kv_capacity = 4096;
  uint32_t max_sequences = 1;
  uint32_t max_batch_tokens = 512;
  int32_t n_threads = 0;  // 0 = the model's default
  // Prefill attention's values-path scratch (MlaAttentionArgs::ValuesHeadsPerPass) stays under this.
  int64_t values_scratch_bytes = MlaAttentionArgs::kMaxValuesBytes;
};

struct Batch {
  int64_t n_tokens = 0;
  const int32_t* tokens = nullptr;
  const int32_t* seq_ids = nullptr;    // null: all sequence 0
  const int32_t* positions = nullptr;  // null: append
  const uint8_t* logits = nullptr;     // null: last token only
};

class Session {
 public:
  static Result<std::unique_ptr<Session>> Create(std::shared_ptr<const Model> model, const SessionOptions& options);
  static constexpr size_t kScratchSlots = 11;  // executor.cc's scratch buffers (kBufferOf)
  ~Session();

  // Appends the batch to its sequences and computes the requested logits. On failure the sequences
  // are as before the call; a batch rejected before the forward pass (invalid, KV cache full, no
  // memory for its buffers) also leaves the previous decode's logits readable, a failed forward pass
  // leaves none.
  Status Decode(const Batch& batch);
  // Logits of batch token i of the last Decode.
  Result<const float*> Logits(int64_t i) const;

  Result<uint32_t> SeqLength(int64_t seq) const;
  Status SeqRemove(int64_t seq);
  void Clear();
  int64_t kv_free_tokens() const { return cache_.free_tokens(); }
  // Routed-expert usage over the successful Decode calls since creation: [num_layers ×
  // n_routed_experts], the tokens each layer's router sent to each expert (zero for dense layers).
  const std::vector<uint64_t>& expert_counts() const { return expert_counts_; }
  const Model& model() const { return *model_; }
  const SessionOptions& options() const { return options_; }

 private:
  explicit Session(std::shared_ptr<const Model> model) : model_(std::move(model)) {}

  // executor.cc: the forward pass over the prepared batch.
  void Forward(int64_t T);
  void RunMla(const GraphNode& n, const float* x, float* y, int64_t T);
  void RunMlp(const MlpWeights& w, const float* x, float* y, int64_t T);
  void RunMoe(const MoeWeights& w, int32_t layer, const float* x, float* y, int64_t T);
  void RunLmHead(const GraphNode& n, const float* x, int64_t T);
  float* Scratch(size_t slot, size_t floats);

  std::shared_ptr<const Model> model_;
  SessionOptions options_;
  LatentKvCache cache_;

  // Per-batch state prepared by Decode.
  std::vector<int32_t> tokens_, seq_of_, positions_, n_keys_;
  std::vector<const int32_t*> token_pages_;
  std::vector<int64_t> out_row_;  // batch index -> logits row or -1
  std::vector<int64_t> pending_out_row_;  // out_row_ of the batch being validated
  std::vector<float> logits_;     // [n_out, vocab]
  // Activation buffers 0..2 ([T, D]), then the executor's scratch slots: taken from the model's
  // ScratchPool when it holds a set, given back to it by the destructor.
  static constexpr size_t kActivationBuffers = 3;
  static_assert(kActivationBuffers + kScratchSlots <= ScratchSet::kBuffers, "ScratchSet is too small");
  ScratchFloats& buffer(size_t i) { return mem_->buffers[i]; }
  ScratchFloats& scratch(size_t i) { return mem_->buffers[kActivationBuffers + i]; }
  std::unique_ptr<ScratchSet> mem_;
  std::vector<int32_t> route_experts_;
  std::vector<float> route_weights_;
  std::vector<int64_t> expert_offset_;   // [E + 1]: first slot of each expert
  std::vector<int64_t> expert_next_;     // [E]: fill cursor while assigning slots
  std::vector<int32_t> active_experts_;  // experts with at least one slot, largest first
  std::vector<uint32_t> batch_expert_counts_;  // this batch's share of expert_counts_, added on success
  std::vector<uint64_t> expert_counts_;
  std::vector<int32_t> slot_of_;         // [T * K]: slot of (token, k)
  std::vector<int32_t> slot_token_;      // [T * K]: token of a slot
  std::vector<WeightView> head_views_;  // one per attention head, for LinearBatch
  std::vector<WeightView> key_views_;   // one per attention head: W_UKᵀ for the keys form's expansion
  // Per active expert (at most E): its first slot, slot count and gate, up, down weights.
  std::vector<int64_t> active_begin_, active_count_;
  std::vector<WeightView> active_gate_, active_up_, active_down_;
  // MLA values path: [max_sequences + 1] first key of each sequence in the expanded keys, and [T]
  // each token's values (and, in the keys form, its expanded keys).
  std::vector<int64_t> seq_first_key_;
  std::vector<const float*> token_values_, token_keys_;
};

}  // namespace moerun
