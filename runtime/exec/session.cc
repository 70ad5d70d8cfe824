#include "runtime/exec/session.h"

#include <omp.h>

#include <algorithm>
#include <new>

namespace moerun {

Result<std::unique_ptr<Session>> Session::Create(std::shared_ptr<const Model> model, const SessionOptions& options) {
  if (!model) return InvalidArgument("model is NULL");
  if (options.max_batch_tokens == 0) return InvalidArgument("max_batch_tokens must be positive");
  if (options.max_sequences == 0) return InvalidArgument("max_sequences must be positive");
  if (options.kv_capacity == 0) return InvalidArgument("kv_capacity must be positive");
  if (options.n_threads < 0) return InvalidArgument("n_threads must be >= 0");
  if (options.values_scratch_bytes < 0) return InvalidArgument("values_scratch_bytes must be >= 0");
  std::unique_ptr<Session> s(new (std::nothrow) Session(std::move(model)));
  if (!s) return OutOfMemory("allocating a session");
  s->options_ = options;
  s->mem_ = s->model_->scratch_pool().Take();
  if (!s->mem_) s->mem_.reset(new (std::nothrow) ScratchSet);
  if (!s->mem_) return OutOfMemory("allocating a session");
  const ModelConfig& c = s->model_->config();
  MOERUN_RETURN_IF_ERROR(s->cache_.Init(c.num_layers, c.kv_lora_rank, c.qk_rope_head_dim, options.kv_capacity,
                                        options.max_sequences, s->model_->backend().Bf16LatentCache()));
  try {
    s->head_views_.resize(c.num_heads);
    s->key_views_.resize(c.num_heads);
    s->expert_offset_.resize(c.n_routed_experts + 1);
    s->expert_next_.resize(c.n_routed_experts);
    s->active_experts_.reserve(c.n_routed_experts);
    s->batch_expert_counts_.resize(static_cast<size_t>(c.num_layers) * c.n_routed_experts);
    s->expert_counts_.resize(static_cast<size_t>(c.num_layers) * c.n_routed_experts);
    s->active_begin_.resize(c.n_routed_experts);
    s->active_count_.resize(c.n_routed_experts);
    s->active_gate_.resize(c.n_routed_experts);
    s->active_up_.resize(c.n_routed_experts);
    s->active_down_.resize(c.n_routed_experts);
    s->seq_first_key_.resize(static_cast<size_t>(s->cache_.max_sequences()) + 1);
  } catch (const std::bad_alloc&) {
    return OutOfMemory("allocating session buffers");
  }
  return s;
}

Session::~Session() {
  if (mem_) model_->scratch_pool().Give(std::move(mem_));
}

Status Session::Decode(const Batch& b) {
  const ModelConfig& c = model_->config();
  const int64_t T = b.n_tokens;
  if (T <= 0) return InvalidArgument("batch has no tokens");
  if (!b.tokens) return InvalidArgument("batch tokens is NULL");
  if (T > options_.max_batch_tokens)
    return InvalidArgument("batch of " + std::to_string(T) + " tokens exceeds max_batch_tokens (" +
                           std::to_string(options_.max_batch_tokens) + ")");
  const int64_t n_seq = cache_.max_sequences();
  std::vector<int64_t> added;
  try {
    added.assign(static_cast<size_t>(n_seq), 0);
    tokens_.assign(b.tokens, b.tokens + T);
    seq_of_.assign(static_cast<size_t>(T), 0);
    positions_.resize(static_cast<size_t>(T));
    n_keys_.resize(static_cast<size_t>(T));
    token_pages_.resize(static_cast<size_t>(T));
    pending_out_row_.assign(static_cast<size_t>(T), -1);
  } catch (const std::bad_alloc&) {
    return OutOfMemory("allocating batch bookkeeping");
  }
  int64_t n_out = 0;
  for (int64_t t = 0; t < T; ++t) {
    if (tokens_[t] < 0 || tokens_[t] >= static_cast<int64_t>(c.vocab_size))
      return InvalidArgument("batch token " + std::to_string(t) + " has id " + std::to_string(tokens_[t]) +
                             ", outside the vocabulary [0, " + std::to_string(c.vocab_size) + ")");
    const int64_t seq = b.seq_ids ? b.seq_ids[t] : 0;
    if (seq < 0 || seq >= n_seq)
      return InvalidArgument("batch token " + std::to_string(t) + " has sequence id " + std::to_string(seq) +
                             ", outside [0, " + std::to_string(n_seq) + ")");
    seq_of_[t] = static_cast<int32_t>(seq);
    const int64_t pos = cache_.length(seq) + added[seq]++;
    if (b.positions && b.positions[t] != pos)
      return InvalidArgument("batch token " + std::to_string(t) + " has position " + std::to_string(b.positions[t]) +
                             " but sequence " + std::to_string(seq) + " continues at " + std::to_string(pos));
    if (pos >= INT32_MAX) return InvalidArgument("sequence position overflows");
    positions_[t] = static_cast<int32_t>(pos);
    n_keys_[t] = static_cast<int32_t>(pos + 1);
    const bool want = b.logits ? b.logits[t] != 0 : t == T - 1;
    if (want) pending_out_row_[t] = n_out++;
  }
  int64_t pages = 0;
  for (int64_t s = 0; s < n_seq; ++s)
    if (added[s]) pages += cache_.PagesNeeded(s, added[s]);
  if (T > cache_.free_tokens() || pages > cache_.free_pages())
    return Status(StatusCode::kKvCacheFull, "KV cache full: the batch needs " + std::to_string(T) + " tokens, " +
                                                std::to_string(cache_.free_tokens()) + " of " +
                                                std::to_string(cache_.capacity_tokens()) + " are free");
  std::vector<uint32_t> old_length;
  try {
    old_length.resize(static_cast<size_t>(n_seq));
    for (size_t i = 0; i < kActivationBuffers; ++i) buffer(i).Grow(static_cast<size_t>(T) * c.hidden_size);
    // Last: if it fails, resize has left the previous decode's logits as they were.
    logits_.resize(static_cast<size_t>(n_out) * c.vocab_size);
  } catch (const std::bad_alloc&) {
    return OutOfMemory("allocating activations for a batch of " + std::to_string(T) + " tokens");
  }
  // Committed: from here on the previous decode's logits are gone.
  out_row_.swap(pending_out_row_);
  for (int64_t s = 0; s < n_seq; ++s) {
    old_length[s] = cache_.length(s);
    if (added[s]) cache_.Reserve(s, old_length[s] + added[s]);
  }
  for (int64_t t = 0; t < T; ++t) token_pages_[t] = cache_.pages(seq_of_[t]);

  const int threads = options_.n_threads > 0 ? options_.n_threads : model_->n_threads();
  if (threads > 0) omp_set_num_threads(threads);
  // A failed forward pass leaves the sequences as they were and no logits to read.
  auto roll_back = [&] {
    for (int64_t s = 0; s < n_seq; ++s) {
      cache_.SetLength(s, old_length[s]);
      cache_.Shrink(s);
    }
    out_row_.clear();
  };
  std::fill(batch_expert_counts_.begin(), batch_expert_counts_.end(), 0u);
  try {
    Forward(T);
  } catch (const std::bad_alloc&) {
    roll_back();
    return OutOfMemory("allocating scratch memory during decode");
  } catch (...) {
    roll_back();
    throw;
  }
  for (int64_t s = 0; s < n_seq; ++s) cache_.SetLength(s, old_length[s] + static_cast<uint32_t>(added[s]));
  for (size_t i = 0; i < expert_counts_.size(); ++i) expert_counts_[i] += batch_expert_counts_[i];
  model_->NotePageSizes();  // the weights this pass read are resident now
  return Status::Ok();
}

Result<const float*> Session::Logits(int64_t i) const {
  if (i < 0 || i >= static_cast<int64_t>(out_row_.size()))
    return InvalidArgument("logits index " + std::to_string(i) + " is outside the last batch (" +
                           std::to_string(out_row_.size()) + " tokens)");
  if (out_row_[i] < 0) return InvalidArgument("batch token " + std::to_string(i) + " did not request logits");
  return logits_.data() + out_row_[i] * model_->config().vocab_size;
}

Result<uint32_t> Session::SeqLength(int64_t seq) const {
  if (seq < 0 || seq >= cache_.max_sequences()) return InvalidArgument("sequence id " + std::to_string(seq) + " out of range");
  return cache_.length(seq);
}

Status Session::SeqRemove(int64_t seq) {
  if (seq < 0 || seq >= cache_.max_sequences()) return InvalidArgument("sequence id " + std::to_string(seq) + " out of range");
  cache_.Remove(seq);
  out_row_.clear();
  return Status::Ok();
}

void Session::Clear() {
  for (int64_t s = 0; s < cache_.max_sequences(); ++s) cache_.Remove(s);
  out_row_.clear();
}

}  // namespace moerun
