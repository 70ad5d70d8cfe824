#include "runtime/exec/kv_cache.h"

#include <cstring>
#include <new>

#include "runtime/core/aligned_buffer.h"
#include "runtime/core/dtype.h"

namespace moerun {

LatentKvCache::~LatentKvCache() { AlignedFree(pool_, kPoolAlignment); }

Status LatentKvCache::Init(int64_t n_layers, int64_t kv_rank, int64_t rope_dim, int64_t capacity_tokens,
                           int64_t max_sequences, bool bf16) {
  if (capacity_tokens <= 0) return InvalidArgument("kv_capacity must be positive");
  if (max_sequences <= 0) return InvalidArgument("max_sequences must be positive");
  n_layers_ = n_layers;
  kv_rank_ = kv_rank;
  rope_dim_ = rope_dim;
  bf16_ = bf16;
  capacity_ = capacity_tokens;
  n_pages_ = static_cast<int64_t>(CeilDiv(static_cast<uint64_t>(capacity_tokens), kPageSize)) + max_sequences - 1;
  uint64_t values = 0, bytes = 0;
  if (!CheckedMul(static_cast<uint64_t>(n_layers), static_cast<uint64_t>(n_pages_) * kPageSize, &values) ||
      !CheckedMul(values, static_cast<uint64_t>(kv_rank + rope_dim), &values) ||
      !CheckedMul(values, bf16 ? 2 : 4, &bytes) || n_pages_ > INT32_MAX)
    return InvalidArgument("kv_capacity is too large");
  pool_ = AlignedAlloc(kPoolAlignment, AlignUp(bytes, kPoolAlignment));
  if (!pool_)
    return OutOfMemory("allocating the KV cache (" + std::to_string(bytes >> 20) + " MiB for " +
                       std::to_string(capacity_tokens) + " tokens)");
  try {
    free_list_.reserve(static_cast<size_t>(n_pages_));
    for (int64_t p = n_pages_ - 1; p >= 0; --p) free_list_.push_back(static_cast<int32_t>(p));
    seqs_.resize(static_cast<size_t>(max_sequences));
    for (Sequence& s : seqs_) s.pages.reserve(static_cast<size_t>(n_pages_));
  } catch (const std::bad_alloc&) {
    return OutOfMemory("allocating KV cache page tables");
  }
  return Status::Ok();
}

int64_t LatentKvCache::used_tokens() const {
  int64_t n = 0;
  for (const Sequence& s : seqs_) n += s.length;
  return n;
}

int64_t LatentKvCache::PagesNeeded(int64_t seq, int64_t n) const {
  const Sequence& s = seqs_[seq];
  const int64_t need = static_cast<int64_t>(CeilDiv(s.length + static_cast<uint64_t>(n), kPageSize));
  return std::max<int64_t>(0, need - static_cast<int64_t>(s.pages.size()));
}

void LatentKvCache::Reserve(int64_t seq, int64_t new_length) {
  Sequence& s = seqs_[seq];
  while (static_cast<int64_t>(s.pages.size()) * kPageSize < new_length) {
    s.pages.push_back(free_list_.back());  // capacity reserved in Init: no allocation
    free_list_.pop_back();
  }
}

void LatentKvCache::Shrink(int64_t seq) {
  Sequence& s = seqs_[seq];
  while (!s.pages.empty() && static_cast<int64_t>(s.pages.size() - 1) * kPageSize >= s.length) {
    free_list_.push_back(s.pages.back());
    s.pages.pop_back();
  }
}

void LatentKvCache::Remove(int64_t seq) {
  seqs_[seq].length = 0;
  Shrink(seq);
}

void LatentKvCache::WriteRow(int64_t layer, int64_t seq, int64_t position, const float* src) {
  const Sequence& s = seqs_[seq];
  const int64_t page = s.pages[position / kPageSize];
  const int64_t width = kv_rank_ + rope_dim_;
  const int64_t at = ((layer * n_pages_ + page) * kPageSize + position % kPageSize) * width;
  if (!bf16_) {
    std::memcpy(static_cast<float*>(pool_) + at, src, static_cast<size_t>(width) * sizeof(float));
    return;
  }
  // Nearest even with subnormals flushed to (signed) zero: the rounding of the AMX-BF16 conversion
  // that the attention kernels apply to f32 rows, so that either cache gives them the same rows.
  uint16_t* dst = static_cast<uint16_t*>(pool_) + at;
  for (int64_t i = 0; i < width; ++i) {
    uint32_t bits;
    std::memcpy(&bits, src + i, sizeof(bits));
    dst[i] = (bits & 0x7f800000u) == 0 ? static_cast<uint16_t>(bits >> 16 & 0x8000u) : F32ToBf16(src[i]);
  }
}

LatentCacheView LatentKvCache::View(int64_t layer) const {
  LatentCacheView v;
  const int64_t first = layer * n_pages_ * kPageSize * (kv_rank_ + rope_dim_);
  if (bf16_) {
    v.pool_bf16 = static_cast<const uint16_t*>(pool_) + first;
  } else {
    v.pool = static_cast<const float*>(pool_) + first;
  }
  v.page_size = kPageSize;
  v.kv_rank = kv_rank_;
  v.rope_dim = rope_dim_;
  return v;
}

}  // namespace moerun
