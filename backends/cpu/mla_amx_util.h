// Helpers shared by the two AMX-BF16 files of MLA attention (mla_values_amx.cc, mla_latent_amx.cc),
// both built with -mavx512f -mavx512bw -mavx512vl -mavx512bf16 -mamx-tile -mamx-bf16, and through
// mla_latent_blocks.h by mla_latent_bf16.cc (the same flags without AMX). Everything here has
// internal linkage (an unnamed namespace), so each file keeps its own copy and no code built with
// these flags can be picked by the linker for a file built without them. Include it only from such
// files, after mla_attention_impl.h.
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <new>

namespace moerun::cpu::mla::amx {
namespace {

inline int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline __mmask16 Mask16(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xffff) : n <= 0 ? static_cast<__mmask16>(0) : static_cast<__mmask16>((1u << n) - 1u);
}

// dst[0, n) = bf16(src[0, n)), nearest even.
inline void ConvertRow(const float* src, int64_t n, uint16_t* dst) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = Mask16(n - i);
    const __m256bh b = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, src + i));
    _mm256_mask_storeu_epi16(dst + i, m, reinterpret_cast<const __m256i&>(b));
  }
}

// Grown on demand, 64-byte aligned, never shrunk. Plain memory, not a container: no container
// templates are instantiated in these files (their out-of-line copies would carry the -m flags into
// code that other files share).
class Scratch {
 public:
  Scratch() = default;
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() { Free(); }
  // False when the memory could not be had (the old contents are then kept).
  bool Reserve(size_t bytes) {
    bytes = (bytes + 63) & ~size_t{63};
    if (bytes <= bytes_) return true;
    void* p = ::operator new(bytes, std::align_val_t{64}, std::nothrow);
    if (!p) return false;
    Free();
    p_ = static_cast<char*>(p);
    bytes_ = bytes;
    return true;
  }
  char* data() const { return p_; }

 private:
  void Free() {
    if (p_) ::operator delete(p_, std::align_val_t{64});
    p_ = nullptr;
    bytes_ = 0;
  }
  char* p_ = nullptr;
  size_t bytes_ = 0;
};

// Carves 64-byte aligned pieces out of one buffer (or, with base null, only counts their bytes).
class Carver {
 public:
  explicit Carver(char* base) : base_(base) {}
  template <typename T>
  T* Take(int64_t n) {
    T* p = base_ ? reinterpret_cast<T*>(base_ + used_) : nullptr;
    used_ += (static_cast<size_t>(n) * sizeof(T) + 63) & ~size_t{63};
    return p;
  }
  size_t used() const { return used_; }

 private:
  char* base_;
  size_t used_ = 0;
};

}  // namespace
}  // namespace moerun::cpu::mla::amx
