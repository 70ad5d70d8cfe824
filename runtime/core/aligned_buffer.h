// Aligned raw buffers. They go through the global operator new family rather than aligned_alloc, so
// that a program which replaces operator new (an allocator hook, the fault-injection tests in
// tests/fault/) sees every allocation moerun makes. Release with AlignedFree and the same alignment.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
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

// A session's per-batch scratch: its ScratchFloats, in the roles the session gives them.
struct ScratchSet {
  static constexpr size_t kBuffers = 16;
  std::array<ScratchFloats, kBuffers> buffers;
  size_t floats() const;  // held by all of them
};

// Scratch that outlives the session that grew it: a destroyed session gives its set back (Give) and
// the next session created on the same model takes it (Take), already grown and its pages already
// mapped. A new session's first batch otherwise first-touches all of it: ~110 MiB for a 512-token
// prompt of the 8-layer V2-Lite file, 38 ms of a ~790 ms prompt (median of 12 fresh sessions, 2
// threads, Zen 5 host). Holds one set at most, the larger one, until the model is destroyed.
// Thread-safe.
class ScratchPool {
 public:
  // The kept set, or null when there is none.
  std::unique_ptr<ScratchSet> Take();
  // Keeps `set` unless the set already kept holds more; the other one is freed.
  void Give(std::unique_ptr<ScratchSet> set);
  size_t kept_floats() const;

 private:
  mutable std::mutex mu_;
  std::unique_ptr<ScratchSet> kept_;
};

}  // namespace moerun
