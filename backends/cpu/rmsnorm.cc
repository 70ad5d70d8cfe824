// RmsNorm: y[m] = w ⊙ x[m] / sqrt(mean(x[m]²) + eps).
#include "backends/cpu/simd_avx512.h"  // first: see there

#include <cmath>

#include "backends/cpu/cpu_backend_impl.h"
#include "runtime/core/parallel_for.h"

namespace moerun::cpu {

namespace {

constexpr int64_t kMinParallel = int64_t{1} << 15;  // elements

inline __mmask16 TailMask(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << n) - 1u);
}

// Squares summed in double like the reference (float products are exact in double), so the scale
// factor, and with it every output, matches it bit for bit almost always.
__attribute__((target("avx512f,fma"))) void RmsNormRowAvx512(const float* x, const float* w, int64_t n, float eps,
                                                             float* y) {
  __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
  for (int64_t i = 0; i < n; i += 16) {
    const __m512 v = _mm512_maskz_loadu_ps(TailMask(n - i), x + i);
    const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
    const __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    a0 = _mm512_fmadd_pd(lo, lo, a0);
    a1 = _mm512_fmadd_pd(hi, hi, a1);
  }
  const double ss = _mm512_reduce_add_pd(_mm512_add_pd(a0, a1));
  const __m512 inv = _mm512_set1_ps(static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(n) + eps)));
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = TailMask(n - i);
    const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
    _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, w + i), _mm512_mul_ps(v, inv)));
  }
}

// The same on AVX2 (CPUs without AVX-512), which ran the scalar row, its squares one dependent double
// add after another (0.5% of a decode step's samples on a 2-core Zen 1 host; a decode step's time
// did not change measurably). The last n % 8 columns are summed and scaled scalar (masked stores are
// microcoded on AMD).
__attribute__((target("avx2,fma"))) void RmsNormRowAvx2(const float* x, const float* w, int64_t n, float eps,
                                                        float* y) {
  __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v)), hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
    a0 = _mm256_fmadd_pd(lo, lo, a0);
    a1 = _mm256_fmadd_pd(hi, hi, a1);
  }
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, _mm256_add_pd(a0, a1));
  double ss = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
  for (int64_t t = i; t < n; ++t) ss += static_cast<double>(x[t]) * x[t];
  const float inv_s = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(n) + eps));
  const __m256 inv = _mm256_set1_ps(inv_s);
  for (int64_t k = 0; k + 8 <= n; k += 8)
    _mm256_storeu_ps(y + k, _mm256_mul_ps(_mm256_loadu_ps(w + k), _mm256_mul_ps(_mm256_loadu_ps(x + k), inv)));
  for (int64_t t = i; t < n; ++t) y[t] = w[t] * (x[t] * inv_s);
}

void RmsNormRowScalar(const float* x, const float* w, int64_t n, float eps, float* y) {
  double ss = 0.0;
  for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float inv = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(n) + eps));
  for (int64_t i = 0; i < n; ++i) y[i] = w[i] * (x[i] * inv);
}

}  // namespace

void CpuBackend::RmsNorm(const float* x, int64_t ldx, const float* w, int64_t n, int64_t M, float eps, float* y,
                         int64_t ldy) const {
  if (M <= 0 || n <= 0 || !x || !w || !y) return;
  const bool avx = features_.avx512, avx2 = features_.avx2;
  ParallelFor(M, M * n >= kMinParallel, [&](int64_t m) {
    if (avx) {
      RmsNormRowAvx512(x + m * ldx, w, n, eps, y + m * ldy);
    } else if (avx2) {
      RmsNormRowAvx2(x + m * ldx, w, n, eps, y + m * ldy);
    } else {
      RmsNormRowScalar(x + m * ldx, w, n, eps, y + m * ldy);
    }
  });
}

}  // namespace moerun::cpu
