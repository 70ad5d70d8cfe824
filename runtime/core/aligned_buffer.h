// Aligned raw buffers. They go through the global operator new family rather than aligned_alloc, so
// that a program which replaces operator new (an allocator hook, the fault-injection tests in
// tests/fault/) sees every allocation moerun makes. Release with AlignedFree and the same alignment.
#pragma once

#include <cstddef>
#include <new>

namespace moerun {

// Null on failure (never throws). alignment must be a power of two.
inline void* AlignedAlloc(size_t alignment, size_t bytes) noexcept {
  return ::operator new(bytes, std::align_val_t(alignment), std::nothrow);
}

inline void AlignedFree(void* p, size_t alignment) noexcept {
  if (p) ::operator delete(p, std::align_val_t(alignment));
}

}  // namespace moerun
