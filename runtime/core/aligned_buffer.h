// Aligned raw buffers. They go through the global operator new family rather than aligned_alloc, so
// that a program which replaces operator new (an allocator hook, the fault-injection tests in
// tests/fault/) sees every allocation moerun makes. Release with AlignedFree and the same alignment.
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>

namespace moerun {

// Null on failure (never throws). alignment must be a power of two.
inline void* AlignedAlloc(size_t alignment, size_t bytes) noexcept {
  return ::operator new(bytes, std::align_val_t(alignment), std::nothrow);
}

inline void AlignedFree(void* p, size_t alignment) noexcept {
  if (p) ::operator delete(p, std::align_val_t(alignment));
}

// Blocks of kHugeBytes or more are aligned to it, and their whole huge pages are advised as
// transparent huge pages (which the kernel gives only on request under Debian's default `madvise`
// setting): their first touch then costs one page fault per 2 MiB instead of one per 4 KiB. Smaller
// blocks are 64-byte aligned. Sizes are rounded up to 64 bytes only. Not zero-filled. Null on
// failure; *alignment receives the alignment to pass to AlignedFree.
constexpr size_t kHugeBytes = size_t{2} << 20;
void* AllocateLarge(size_t bytes, size_t* alignment) noexcept;

// A float buffer for per-batch scratch that grows and is never zero-filled (AllocateLarge).
// std::vector zero-fills what it grows by: for the ~130 MB of scratch a 512-token V2-Lite prefill
// uses, that was a serial memset on the calling thread through ~33k page faults while the other
// threads waited.
class ScratchFloats {
 public:
  ScratchFloats() = default;
  ScratchFloats(const ScratchFloats&) = delete;
  ScratchFloats& operator=(const ScratchFloats&) = delete;
  ~ScratchFloats() { AlignedFree(data_, align_); }

  float* data() const { return data_; }
  size_t size() const { return size_; }

  // Makes at least n floats available (at least twice the old size when it grows), keeping the first
  // size() of them. Throws std::bad_alloc (and leaves the buffer as it was) when the memory is not
  // there.
  void Grow(size_t n);

 private:
  float* data_ = nullptr;
  size_t size_ = 0;
  size_t align_ = 64;
};

}  // namespace moerun
