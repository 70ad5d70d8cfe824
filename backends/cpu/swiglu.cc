// SiluMul: out = silu(gate) · up, element-wise over the MLP intermediate.
#include "backends/cpu/simd_avx512.h"  // first: see there

#include <algorithm>
#include <cmath>

#include "backends/cpu/cpu_backend_impl.h"
#include "backends/cpu/simd_avx2.h"
#include "runtime/core/parallel_for.h"

namespace moerun::cpu {

namespace {

// Enough elements per thread to pay for waking the OpenMP team.
constexpr int64_t kMinParallel = int64_t{1} << 15;
constexpr int64_t kChunk = 4096;  // elements per OpenMP work item (multiple of 16)

__attribute__((target("avx512f,fma"))) void SiluMulAvx512(const float* gate, const float* up, float* out,
                                                          int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << (n - i)) - 1u);
    const __m512 g = _mm512_maskz_loadu_ps(m, gate + i);
    const __m512 e = ExpAvx512(_mm512_sub_ps(_mm512_setzero_ps(), g));
    // Same operation order as the reference: g / (1 + exp(-g)) · up.
    const __m512 s = _mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
    _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(s, _mm512_maskz_loadu_ps(m, up + i)));
  }
}

__attribute__((target("avx2,fma"))) void SiluMulAvx2(const float* gate, const float* up, float* out, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 e = ExpAvx2(_mm256_sub_ps(_mm256_setzero_ps(), g));
    const __m256 s = _mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(s, _mm256_loadu_ps(up + i)));
  }
  if (i < n) {  // the tail through a padded copy (masked stores are microcoded on AMD)
    alignas(32) float g8[8] = {}, u8[8] = {}, o8[8];
    std::copy(gate + i, gate + n, g8);
    std::copy(up + i, up + n, u8);
    SiluMulAvx2(g8, u8, o8, 8);
    std::copy(o8, o8 + (n - i), out + i);
  }
}

void SiluMulScalar(const float* gate, const float* up, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

}  // namespace

void CpuBackend::SiluMul(const float* gate, const float* up, float* out, int64_t n) const {
  if (n <= 0 || !gate || !up || !out) return;
  const bool avx = features_.avx512, avx2 = features_.avx2;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  ParallelFor(chunks, n >= kMinParallel, [&](int64_t c) {
    const int64_t i0 = c * kChunk, len = std::min(kChunk, n - i0);
    if (avx) {
      SiluMulAvx512(gate + i0, up + i0, out + i0, len);
    } else if (avx2) {
      SiluMulAvx2(gate + i0, up + i0, out + i0, len);
    } else {
      SiluMulScalar(gate + i0, up + i0, out + i0, len);
    }
  });
}

}  // namespace moerun::cpu
