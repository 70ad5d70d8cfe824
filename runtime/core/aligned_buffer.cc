#include "runtime/core/aligned_buffer.h"

#include <cstring>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace moerun {

void* AllocateLarge(size_t bytes, size_t* alignment) noexcept {
  const size_t align = bytes >= kHugeBytes ? kHugeBytes : 64;
  if (bytes > SIZE_MAX - align) return nullptr;
  bytes = (bytes + align - 1) / align * align;
  void* p = AlignedAlloc(align, bytes);
#if defined(MADV_HUGEPAGE)
  // Advice only: where huge pages are off or run out, the block is backed by small pages.
  if (p && align == kHugeBytes) (void)madvise(p, bytes, MADV_HUGEPAGE);
#endif
  *alignment = align;
  return p;
}

void ScratchFloats::Grow(size_t n) {
  if (n <= size_) return;
  if (n > SIZE_MAX / sizeof(float)) throw std::bad_alloc();
  size_t align = 0;
  void* p = AllocateLarge(n * sizeof(float), &align);
  if (!p) throw std::bad_alloc();
  if (size_ > 0) std::memcpy(p, data_, size_ * sizeof(float));
  AlignedFree(data_, align_);
  data_ = static_cast<float*>(p);
  size_ = n;
  align_ = align;
}

}  // namespace moerun
