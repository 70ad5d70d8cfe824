// AVX-512 (F/BW/VL/DQ + FMA) Q8_PANEL kernels: activation quantisation and the exact f32 Linear.
//
// Built with -mavx512*; called only after DetectSupport().avx512. Like matmul_avx512.cc it uses no
// inline functions or templates from other headers (a COMDAT copy compiled here could be the one the
// linker keeps for generic callers): q8_panel.h contributes constants only.
#include "backends/cpu/simd_avx512.h"  // first: see there

#include <omp.h>

#include "backends/cpu/q8_kernels.h"
#include "runtime/core/parallel_for.h"

namespace moerun::cpu::q8::avx512 {
namespace {

constexpr int64_t kQuadsPerGroup = kGroupCols / 4;
// Below this many weight bytes (or activation values), waking the OpenMP team costs more than it saves.
constexpr int64_t kMinParallelBytes = int64_t{1} << 16;

inline int64_t Min(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline __mmask16 TailMask16(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << n) - 1u);
}

// ---- Quantisation ------------------------------------------------------------------------------

// One row: groups of 128 columns as 8 vectors, masked past K (zeros leave max and Σq unchanged).
void QuantizeRow(const float* x, int64_t K, int64_t stride, int8_t* q, float* xs, int32_t* xsum) {
  const __m512 lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
  const int64_t G = CeilDiv(K, kGroupCols);
  for (int64_t g = 0; g < G; ++g) {
    const int64_t c0 = g * kGroupCols;
    __m512 v[8];
    // The running maximum is the second operand of vmaxps, so a NaN input never enters it (as in
    // the scalar version); then the reduction is exact in any order.
    __m512 amax = _mm512_setzero_ps();
    for (int i = 0; i < 8; ++i) {
      v[i] = _mm512_maskz_loadu_ps(TailMask16(K - c0 - 16 * i < 0 ? 0 : K - c0 - 16 * i), x + c0 + 16 * i);
      amax = _mm512_max_ps(_mm512_abs_ps(v[i]), amax);
    }
    const float a = _mm512_reduce_max_ps(amax);
    const __m512 inv = _mm512_set1_ps(a == 0.0f ? 0.0f : 127.0f / a);
    __m512i sum = _mm512_setzero_si512();
    for (int i = 0; i < 8; ++i) {
      const int64_t c = c0 + 16 * i;
      if (c >= stride) break;
      const __m512 s = _mm512_mul_ps(v[i], inv);
      const __mmask16 ordered = _mm512_cmp_ps_mask(s, s, _CMP_ORD_Q);  // NaN → 0, as the scalar version
      const __m512i qi = _mm512_maskz_cvt_roundps_epi32(ordered, _mm512_min_ps(_mm512_max_ps(s, lo), hi),
                                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      sum = _mm512_add_epi32(sum, qi);
      // Whole 16-byte stores: the columns past K quantise to 0, which is the padding xq needs.
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q + c), _mm512_cvtepi32_epi8(qi));
    }
    xs[g] = a / 127.0f;
    xsum[g] = _mm512_reduce_add_epi32(sum);
  }
  for (int64_t c = G * kGroupCols; c < stride; c += 16) _mm_storeu_si128(reinterpret_cast<__m128i*>(q + c), _mm_setzero_si128());
}

// ---- Exact f32 Linear ---------------------------------------------------------------------------

// One quad (16 rows × 4 columns of offset-binary bytes) as four 16-row f32 columns of q.
struct QuadColumns {
  __m512 c[4];
};
__attribute__((always_inline)) inline QuadColumns LoadColumns(const uint8_t* quad) {
  // Per 128-bit lane (rows 4t..4t+3), bytes → [col0 rows | col1 rows | col2 | col3]; then dword 4t+b
  // → lane b, so lane b holds column b's 16 rows in order.
  const __m512i byte_idx = _mm512_set4_epi32(0x0f0b0703, 0x0e0a0602, 0x0d090501, 0x0c080400);
  const __m512i dword_idx = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
  const __m512i q = _mm512_xor_si512(_mm512_loadu_si512(quad), _mm512_set1_epi8(static_cast<char>(0x80)));
  const __m512i t = _mm512_permutexvar_epi32(dword_idx, _mm512_shuffle_epi8(q, byte_idx));
  QuadColumns r;
  r.c[0] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_castsi512_si128(t)));
  r.c[1] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(t, 1)));
  r.c[2] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(t, 2)));
  r.c[3] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(t, 3)));
  return r;
}

// Rows m0..m0+MR of y for panels p..p+PT. Per group: Σ q·x in f32 (NB partial sums per output
// vector so that a single activation row still has independent FMA chains), then times the scale.
template <int MR, int PT>
void F32Tile(const uint8_t* data, const float* scale, int64_t N, int64_t K, int64_t p, const float* x,
             int64_t ldx, float* y, int64_t ldy) {
  constexpr int NB = MR == 1 ? 4 : (MR == 2 ? 2 : 1);
  const int64_t G = CeilDiv(K, kGroupCols), panel_bytes = CeilDiv(K, 4) * kQuadBytes, full_quads = K / 4;
  const uint8_t* panel[PT];
  for (int t = 0; t < PT; ++t) panel[t] = data + (p + t) * panel_bytes;
  __m512 facc[MR][PT];
  for (int m = 0; m < MR; ++m)
    for (int t = 0; t < PT; ++t) facc[m][t] = _mm512_setzero_ps();
  for (int64_t g = 0; g < G; ++g) {
    __m512 acc[MR][PT][NB];
    for (int m = 0; m < MR; ++m)
      for (int t = 0; t < PT; ++t)
        for (int b = 0; b < NB; ++b) acc[m][t][b] = _mm512_setzero_ps();
    const int64_t j0 = g * kQuadsPerGroup, j1 = Min(j0 + kQuadsPerGroup, full_quads);
    for (int64_t j = j0; j < j1; ++j) {
      QuadColumns w[PT];
      for (int t = 0; t < PT; ++t) w[t] = LoadColumns(panel[t] + j * kQuadBytes);
      for (int m = 0; m < MR; ++m)
        for (int b = 0; b < 4; ++b) {
          const __m512 xb = _mm512_set1_ps(x[m * ldx + 4 * j + b]);
          for (int t = 0; t < PT; ++t) acc[m][t][b % NB] = _mm512_fmadd_ps(w[t].c[b], xb, acc[m][t][b % NB]);
        }
    }
    // A last quad short of 4 columns: x has no values past K, so only the real columns are read.
    if (j1 == full_quads && K % 4 != 0 && j1 < j0 + kQuadsPerGroup) {
      QuadColumns w[PT];
      for (int t = 0; t < PT; ++t) w[t] = LoadColumns(panel[t] + j1 * kQuadBytes);
      for (int m = 0; m < MR; ++m)
        for (int b = 0; b < K % 4; ++b) {
          const __m512 xb = _mm512_set1_ps(x[m * ldx + 4 * j1 + b]);
          for (int t = 0; t < PT; ++t) acc[m][t][0] = _mm512_fmadd_ps(w[t].c[b], xb, acc[m][t][0]);
        }
    }
    for (int t = 0; t < PT; ++t) {
      const __m512 s = _mm512_loadu_ps(scale + ((p + t) * G + g) * kPanelRows);
      for (int m = 0; m < MR; ++m) {
        __m512 sum = acc[m][t][0];
        for (int b = 1; b < NB; ++b) sum = _mm512_add_ps(sum, acc[m][t][b]);
        facc[m][t] = _mm512_fmadd_ps(sum, s, facc[m][t]);
      }
    }
  }
  for (int t = 0; t < PT; ++t) {
    const __mmask16 mask = TailMask16(N - (p + t) * kPanelRows);
    for (int m = 0; m < MR; ++m) _mm512_mask_storeu_ps(y + m * ldy + (p + t) * kPanelRows, mask, facc[m][t]);
  }
}

template <int PT>
void F32Panels(const uint8_t* data, const float* scale, int64_t N, int64_t K, int64_t p, const float* x,
               int64_t ldx, int64_t M, float* y, int64_t ldy) {
  int64_t m = 0;
  for (; m + 4 <= M; m += 4) F32Tile<4, PT>(data, scale, N, K, p, x + m * ldx, ldx, y + m * ldy, ldy);
  switch (M - m) {
    case 3: F32Tile<3, PT>(data, scale, N, K, p, x + m * ldx, ldx, y + m * ldy, ldy); break;
    case 2: F32Tile<2, PT>(data, scale, N, K, p, x + m * ldx, ldx, y + m * ldy, ldy); break;
    case 1: F32Tile<1, PT>(data, scale, N, K, p, x + m * ldx, ldx, y + m * ldy, ldy); break;
    default: break;
  }
}

}  // namespace

void QuantizeActivations(const float* x, int64_t ldx, int64_t M, int64_t K, int8_t* xq, float* xs, int32_t* xsum) {
  const int64_t G = CeilDiv(K, kGroupCols), stride = XqStride(K);
  ParallelFor(M, M * K >= kMinParallelBytes,
              [&](int64_t m) { QuantizeRow(x + m * ldx, K, stride, xq + m * stride, xs + m * G, xsum + m * G); });
}

void LinearF32(const WeightView& w, const float* x, int64_t ldx, int64_t M, float* y, int64_t ldy) {
  const int64_t N = w.rows, K = w.cols, P = CeilDiv(N, kPanelRows);
  const auto* data = static_cast<const uint8_t*>(w.data);
  const bool parallel = P * kPanelRows * K >= kMinParallelBytes;
#pragma omp parallel if (parallel)
  {
    // Contiguous panel ranges: each thread streams its own part of the weights; the panel pair stays
    // in cache while the activation rows go by.
    const int64_t T = omp_get_num_threads(), id = omp_get_thread_num();
    const int64_t p0 = P * id / T, p1 = P * (id + 1) / T;
    int64_t p = p0;
    for (; p + 2 <= p1; p += 2) F32Panels<2>(data, w.scale, N, K, p, x, ldx, M, y, ldy);
    if (p < p1) F32Panels<1>(data, w.scale, N, K, p, x, ldx, M, y, ldy);
  }
}

}  // namespace moerun::cpu::q8::avx512
