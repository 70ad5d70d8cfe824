// Shared AVX2 helpers of the CPU backend (CPUs without AVX-512), marked with their target so that
// generic translation units can call them from their AVX2 functions.
#pragma once

#include <immintrin.h>

#include "backends/cpu/simd_avx512.h"  // kExpTaylor

namespace moerun::cpu {

// The shared steps of the AVX2 exponentials, ExpAvx512's: for x already clamped to a finite range,
// n = round(x / ln 2) and e^(x - n·ln 2) as a polynomial p; e^x is p times 2^n. On N vectors at once,
// step by step across them (each gets the same operations, so the same bits as one at a time): one
// exponential is a chain of ~10 dependent operations (7 FMAs in the polynomial), and a Zen 1 core's
// out-of-order window held about one such chain, which left its FMA pipes mostly idle.
template <int N>
__attribute__((target("avx2,fma"), always_inline)) inline void ExpReducedN(const __m256* x, __m256* n, __m256* p) {
  __m256 r[N];
#pragma GCC unroll 8
  for (int k = 0; k < N; ++k) {
    n[k] = _mm256_round_ps(_mm256_mul_ps(x[k], _mm256_set1_ps(1.44269504088896341f)),
                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    r[k] = _mm256_fnmadd_ps(n[k], _mm256_set1_ps(0.693359375f), x[k]);  // x - n·ln2 in two steps
    r[k] = _mm256_fnmadd_ps(n[k], _mm256_set1_ps(-2.12194440e-4f), r[k]);
    p[k] = _mm256_set1_ps(kExpTaylor[0]);
  }
#pragma GCC unroll 8
  for (int i = 1; i < 8; ++i)
#pragma GCC unroll 8
    for (int k = 0; k < N; ++k) p[k] = _mm256_fmadd_ps(p[k], r[k], _mm256_set1_ps(kExpTaylor[i]));
}
__attribute__((target("avx2,fma"), always_inline)) inline __m256 ExpReduced(__m256 x, __m256* n) {
  __m256 p;
  ExpReducedN<1>(&x, n, &p);
  return p;
}

// expf on 8 lanes for SiluMul, within ~2 ulp of std::exp over the whole float range (overflow → inf,
// underflow → 0 through the subnormals, NaN → NaN): ExpReduced, with 2^n applied as two
// exponent-field factors 2^(n/2) and 2^(n - n/2) (AVX2 has no scalef), each within [-126, 127].
__attribute__((target("avx2,fma"), always_inline)) inline __m256 ExpAvx2(__m256 x) {
  // max/min return the second operand when the first is NaN, so NaN passes through.
  x = _mm256_min_ps(_mm256_set1_ps(100.0f), _mm256_max_ps(_mm256_set1_ps(-110.0f), x));
  __m256 n;
  const __m256 p = ExpReduced(x, &n);
  // n in [-159, 145] (NaN lanes: cvtps gives INT_MIN, its factors are garbage times a NaN p).
  const __m256i ni = _mm256_cvtps_epi32(n), n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
  const __m256i bias = _mm256_set1_epi32(127);
  const __m256 f1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
  const __m256 f2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
  return _mm256_mul_ps(_mm256_mul_ps(p, f1), f2);
}

// x rounded to bf16 (nearest even) on 8 lanes, RoundBf16's bits: NaN stays NaN (quieted).
__attribute__((target("avx2,fma"), always_inline)) inline __m256 RoundBf16x8(__m256 x) {
  const __m256i b = _mm256_castps_si256(x), top = _mm256_set1_epi32(static_cast<int>(0xffff0000u));
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
  const __m256i rounded = _mm256_and_si256(_mm256_add_epi32(b, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), top);
  const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(b, _mm256_set1_epi32(0x7fffffff)),
                                         _mm256_set1_epi32(0x7f800000));
  const __m256i quiet = _mm256_and_si256(_mm256_or_si256(b, _mm256_set1_epi32(0x00400000)), top);
  return _mm256_castsi256_ps(_mm256_blendv_epi8(rounded, quiet, nan));
}

}  // namespace moerun::cpu
