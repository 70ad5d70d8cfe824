// LatentKvCache: the absorbed-MLA cache. Per token and layer it holds only the normalised latent ĉ
// (kv_lora_rank values) and the rotated rope key k^R (qk_rope_head_dim values), in fixed-size pages
// shared by all sequences of a session. A sequence owns a page table that is valid for every layer.
// Rows are f32, or bf16 (nearest even) when the backend reads them so (Backend::Bf16LatentCache).
#pragma once

#include <cstdint>
#include <vector>

#include "backends/backend.h"
#include "runtime/core/status.h"

namespace moerun {

class LatentKvCache {
 public:
  static constexpr int64_t kPageSize = 64;

  LatentKvCache() = default;
  ~LatentKvCache();
  LatentKvCache(const LatentKvCache&) = delete;
  LatentKvCache& operator=(const LatentKvCache&) = delete;

  Status Init(int64_t n_layers, int64_t kv_rank, int64_t rope_dim, int64_t capacity_tokens, int64_t max_sequences,
              bool bf16 = false);
  bool bf16() const { return bf16_; }

  // Token budget over all sequences. Pages are provisioned so the budget is always reachable, even
  // with every sequence's last page partly filled.
  int64_t capacity_tokens() const { return capacity_; }
  int64_t used_tokens() const;
  int64_t free_tokens() const { return capacity_ - used_tokens(); }
  int64_t max_sequences() const { return static_cast<int64_t>(seqs_.size()); }
  uint32_t length(int64_t seq) const { return seqs_[seq].length; }
  const int32_t* pages(int64_t seq) const { return seqs_[seq].pages.data(); }

  // Pages needed to grow sequence seq by n tokens.
  int64_t PagesNeeded(int64_t seq, int64_t n) const;
  int64_t free_pages() const { return static_cast<int64_t>(free_list_.size()); }
  // Reserves pages so seq can hold `new_length` tokens (caller checked PagesNeeded fits).
  void Reserve(int64_t seq, int64_t new_length);
  void SetLength(int64_t seq, uint32_t length) { seqs_[seq].length = length; }
  // Returns pages beyond `length` tokens to the free list.
  void Shrink(int64_t seq);
  void Remove(int64_t seq);

  // Stores row_width() values of src as the row of (layer, seq, position), rounded in a bf16 cache.
  void WriteRow(int64_t layer, int64_t seq, int64_t position, const float* src);
  LatentCacheView View(int64_t layer) const;

 private:
  struct Sequence {
    uint32_t length = 0;
    std::vector<int32_t> pages;
  };
  static constexpr size_t kPoolAlignment = 64;
  // f32 or bf16 rows. Not advised as huge pages (unlike session scratch, aligned_buffer.h): a short
  // sequence touches one page per layer, and a 2 MiB page per layer per session would multiply the
  // memory of many small sessions.
  void* pool_ = nullptr;
  bool bf16_ = false;
  int64_t n_layers_ = 0, kv_rank_ = 0, rope_dim_ = 0, n_pages_ = 0, capacity_ = 0;
  std::vector<int32_t> free_list_;
  std::vector<Sequence> seqs_;
};

}  // namespace moerun
