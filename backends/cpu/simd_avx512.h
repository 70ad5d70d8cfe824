// Shared AVX-512 helpers of the CPU backend. Include it before anything else that includes
// <immintrin.h>: GCC 12 reports its own _mm*_undefined_* helpers as uninitialised when the
// _mm512_reduce_* intrinsics are inlined (GCC bug 105593), and the pragmas must be active where the
// header is first parsed.
#pragma once

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

namespace moerun::cpu {

// e^r ≈ Σ r^k / k! for k = 7..0, highest first (Horner), for |r| <= ln2/2: the exp kernels' polynomial.
inline constexpr float kExpTaylor[8] = {1.0f / 5040.0f, 1.0f / 720.0f, 1.0f / 120.0f, 1.0f / 24.0f,
                                        1.0f / 6.0f,    0.5f,           1.0f,           1.0f};

// expf on 16 lanes for SiluMul and the attention softmax, within ~2 ulp of std::exp over the whole
// float range (overflow → inf, underflow → 0, NaN → NaN). Marked with its target so that generic
// translation units can call it from their AVX-512 functions.
__attribute__((target("avx512f,fma"), always_inline)) inline __m512 ExpAvx512(__m512 x) {
  // Clamp keeps n finite; scalef then saturates to inf / 0 like expf. max/min return the second
  // operand when the first is NaN, so NaN passes through.
  x = _mm512_min_ps(_mm512_set1_ps(100.0f), _mm512_max_ps(_mm512_set1_ps(-110.0f), x));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // r = x - n·ln2 in two steps (Cody-Waite), |r| <= ln2/2.
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  // Taylor to degree 7: truncation error < 6e-9 relative on |r| <= 0.347, below f32 resolution.
  __m512 p = _mm512_set1_ps(kExpTaylor[0]);
#pragma GCC unroll 8
  for (int i = 1; i < 8; ++i) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpTaylor[i]));
  return _mm512_scalef_ps(p, n);
}

// F32ToBf16 on 16 lanes (round to nearest even, NaN kept quiet), as the high half of each lane: the
// bits of x rounded to bf16 and back to f32.
__attribute__((target("avx512f"), always_inline)) inline __m512i RoundBf16Lanes(__m512 v) {
  const __m512i b = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
  const __m512i hi = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  const __m512i r = _mm512_and_si512(_mm512_add_epi32(b, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), hi);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  return _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(_mm512_and_si512(b, hi), _mm512_set1_epi32(0x00400000)));
}
__attribute__((target("avx512f"), always_inline)) inline __m512 RoundBf16x16(__m512 v) {
  return _mm512_castsi512_ps(RoundBf16Lanes(v));
}

}  // namespace moerun::cpu
