// AVX2 int8 Linear on Q8_PANEL weights: the int8 path of CPUs without AVX-512 (AMD Zen 1-3, most
// Intel client cores). Without it (and the AVX2 attention) such a CPU ran scalar code: a V2-Lite
// 8-layer int8 decode step took 1424 ms on a 2-core AMD EPYC host, ~31 ms with them.
//
// AVX2 has no unsigned × signed byte dot product that cannot saturate (vpmaddubsw adds two products
// in 16 bits, and 2·255·127 does not fit), so the bytes are widened to 16 bits: a panel quad (16 rows
// × 4 columns, 64 bytes) is four vpmovzxbw loads of 4 rows × 4 columns each, and an activation row's
// 4 int8 values of that quad, widened and repeated, meet each of them in a vpmaddwd: two int32 partial
// sums per weight row (columns 0-1 and 2-3), added pairwise once per 128-column group. The sums are
// exact, and the group step is the scalar kernel's: isum = Σ (q+128)·x − 128·Σx, then
// fma(float(isum), sw·xs, acc) in group order, so every output is bit-identical to LinearInt8Scalar.
//
// Register tile: one activation row × two panels (decode: two weight streams per thread, as on VNNI)
// or two rows × one panel (the panel then stays in L1 for the next pair of rows): 8 accumulators.
//
// Compiled for the baseline ISA, with the kernels marked target("avx2,fma"): any inline function
// from a shared header is then built generically, and only DetectSupport().avx2 lets them run.
#include <immintrin.h>

#include "backends/cpu/q8_kernels.h"

namespace moerun::cpu::q8::avx2 {
namespace {

constexpr int64_t kQuadsPerGroup = kGroupCols / 4;
// Software prefetch along each panel stream, to L1 a little ahead of the loads.
constexpr int64_t kPrefetchBytes = 2048;


using Args = Int8Args;

#define MOERUN_AVX2 __attribute__((target("avx2,fma")))

// Rows 0-7 (a = rows 0-3, b = rows 4-7, two partial sums per row) as 8 int32 sums in row order:
// vphaddd gives [r0 r1 r4 r5 | r2 r3 r6 r7], vpermq puts the 64-bit pairs in order.
MOERUN_AVX2 inline __m256i RowSums(__m256i a, __m256i b) {
  return _mm256_permute4x64_epi64(_mm256_hadd_epi32(a, b), 0xD8);
}

// Activation rows m0..m0+MR against panels p..p+PT.
template <int MR, int PT>
MOERUN_AVX2 void Tile(const Args& a, int64_t m0, int64_t p) {
  const uint8_t* panel[PT];
  for (int t = 0; t < PT; ++t) panel[t] = a.data + (p + t) * a.panel_bytes;
  const int64_t xstride = a.xstride, G = a.G;
  const int8_t* xq = a.xq + m0 * xstride;
  const float* xs = a.xs + m0 * G;
  const int32_t* xsum = a.xsum + m0 * G;
  __m256 facc[MR][PT][2];
#pragma GCC unroll 4
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (int t = 0; t < PT; ++t) facc[m][t][0] = facc[m][t][1] = _mm256_setzero_ps();
  for (int64_t g = 0; g < G; ++g) {
    __m256i acc[MR][PT][4];
#pragma GCC unroll 4
    for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
      for (int t = 0; t < PT; ++t)
#pragma GCC unroll 4
        for (int k = 0; k < 4; ++k) acc[m][t][k] = _mm256_setzero_si256();
    const int64_t j0 = g * kQuadsPerGroup, j1 = j0 + kQuadsPerGroup < a.quads ? j0 + kQuadsPerGroup : a.quads;
    for (int64_t j = j0; j < j1; ++j) {
      __m256i xb[MR];
#pragma GCC unroll 4
      for (int m = 0; m < MR; ++m) {
        int32_t x4;
        __builtin_memcpy(&x4, xq + m * xstride + 4 * j, 4);
        xb[m] = _mm256_cvtepi8_epi16(_mm_set1_epi32(x4));  // x0 x1 x2 x3, four times
      }
#pragma GCC unroll 4
      for (int t = 0; t < PT; ++t) {
        const uint8_t* q = panel[t] + j * kQuadBytes;
        _mm_prefetch(reinterpret_cast<const char*>(q + kPrefetchBytes), _MM_HINT_T0);
#pragma GCC unroll 4
        for (int k = 0; k < 4; ++k) {
          const __m256i w = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + 16 * k)));
#pragma GCC unroll 4
          for (int m = 0; m < MR; ++m) acc[m][t][k] = _mm256_add_epi32(acc[m][t][k], _mm256_madd_epi16(w, xb[m]));
        }
      }
    }
#pragma GCC unroll 4
    for (int t = 0; t < PT; ++t) {
      const float* sw = a.scale + ((p + t) * G + g) * kPanelRows;
      const __m256 sw0 = _mm256_loadu_ps(sw), sw1 = _mm256_loadu_ps(sw + 8);
#pragma GCC unroll 4
      for (int m = 0; m < MR; ++m) {
        const __m256i corr = _mm256_set1_epi32(128 * xsum[m * G + g]);
        const __m256 s = _mm256_set1_ps(xs[m * G + g]);
        const __m256i lo = _mm256_sub_epi32(RowSums(acc[m][t][0], acc[m][t][1]), corr);
        const __m256i hi = _mm256_sub_epi32(RowSums(acc[m][t][2], acc[m][t][3]), corr);
        facc[m][t][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lo), _mm256_mul_ps(sw0, s), facc[m][t][0]);
        facc[m][t][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(hi), _mm256_mul_ps(sw1, s), facc[m][t][1]);
      }
    }
  }
#pragma GCC unroll 4
  for (int t = 0; t < PT; ++t) {
    const int64_t rows = a.N - (p + t) * kPanelRows;
#pragma GCC unroll 4
    for (int m = 0; m < MR; ++m) {
      float* y = a.y + (m0 + m) * a.ldy + (p + t) * kPanelRows;
      if (rows >= kPanelRows) {
        _mm256_storeu_ps(y, facc[m][t][0]);
        _mm256_storeu_ps(y + 8, facc[m][t][1]);
      } else {  // the last panel of an N that is not a multiple of 16: columns from N on stay untouched
        alignas(32) float out[kPanelRows];
        _mm256_store_ps(out, facc[m][t][0]);
        _mm256_store_ps(out + 8, facc[m][t][1]);
        for (int64_t i = 0; i < rows; ++i) y[i] = out[i];
      }
    }
  }
}

// Panels [p0, p1) for all M rows: one row against two panels at a time for decode, pairs of rows
// against one panel otherwise.
MOERUN_AVX2 void Range(const Args& a, int64_t M, int64_t p0, int64_t p1) {
  if (M == 1) {
    int64_t p = p0;
    for (; p + 2 <= p1; p += 2) Tile<1, 2>(a, 0, p);
    if (p < p1) Tile<1, 1>(a, 0, p);
    return;
  }
  for (int64_t p = p0; p < p1; ++p) {
    int64_t m = 0;
    for (; m + 2 <= M; m += 2) Tile<2, 1>(a, m, p);
    if (m < M) Tile<1, 1>(a, m, p);
  }
}

#undef MOERUN_AVX2

}  // namespace

void LinearInt8(const WeightView& w, const int8_t* xq, const float* xs, const int32_t* xsum, int64_t M, float* y,
                int64_t ldy) {
  SplitPanels(MakeInt8Args(w, xq, xs, xsum, y, ldy), M, Range);
}

}  // namespace moerun::cpu::q8::avx2
