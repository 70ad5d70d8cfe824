#include "runtime/core/aligned_buffer.h"

#include <cstring>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace moerun {

void* AllocateLarge(size_t bytes, size_t* alignment) noexcept {
  const size_t align = bytes >= kHugeBytes ? kHugeBytes : 64;
  if (bytes > SIZE_MAX - 64) return nullptr;
  bytes = (bytes + 63) / 64 * 64;
  void* p = AlignedAlloc(align, bytes);
#if defined(MADV_HUGEPAGE)
  // Advice only, and only for the whole huge pages of the block (its size is not rounded up to
  // them), so a partial last one stays in small pages. Where huge pages are off or run out, all of it
  // does.
  if (p && align == kHugeBytes) (void)madvise(p, bytes / kHugeBytes * kHugeBytes, MADV_HUGEPAGE);
#endif
  *alignment = align;
  return p;
}

void ScratchFloats::Grow(size_t n) {
  if (n <= size_) return;
  if (n > SIZE_MAX / sizeof(float) / 2) throw std::bad_alloc();
  // At least doubling, as std::vector grows: a context fed in chunks grows some buffers a little per
  // chunk, and one reallocation (and copy, and freed block) per chunk raised the peak RSS of a full
  // bench run (8-layer V2-Lite int8, 4096-token context) to 5024 MiB, against 5007 with std::vector
  // and 5004 with doubling. The part past what was asked for is never touched unless a later batch
  // needs it.
  const size_t floats = n > 2 * size_ ? n : 2 * size_;
  size_t align = 0;
  void* p = AllocateLarge(floats * sizeof(float), &align);
  if (!p) throw std::bad_alloc();
  if (size_ > 0) std::memcpy(p, data_, size_ * sizeof(float));
  AlignedFree(data_, align_);
  data_ = static_cast<float*>(p);
  size_ = floats;
  align_ = align;
}

size_t ScratchSet::floats() const {
  size_t n = 0;
  for (const ScratchFloats& b : buffers) n += b.size();
  return n;
}

std::unique_ptr<ScratchSet> ScratchPool::Take() {
  std::lock_guard<std::mutex> lock(mu_);
  return std::move(kept_);
}

void ScratchPool::Give(std::unique_ptr<ScratchSet> set) {
  if (!set) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!kept_ || kept_->floats() < set->floats()) kept_.swap(set);
  }
  set.reset();  // the smaller set, freed outside the lock
}

size_t ScratchPool::kept_floats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return kept_ ? kept_->floats() : 0;
}

}  // namespace moerun
