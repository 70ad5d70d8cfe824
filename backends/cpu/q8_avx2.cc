// AVX2 int8 Linear on Q8_PANEL weights: the int8 path of CPUs without AVX-512 (AMD Zen 1-3, most
// Intel client cores). Without it (and the AVX2 attention) such a CPU ran scalar code: a V2-Lite
// 8-layer int8 decode step took 1424 ms on a 2-core AMD EPYC host, ~31 ms with them.
//
// AVX2 has no unsigned × signed byte dot product that cannot saturate on these bytes (vpmaddubsw
// adds two products in 16 bits, and 2·255·127 does not fit). Both kernels therefore take the signed
// route: offset-binary bytes XOR 0x80 are the signed q, and vpmaddubsw(|q|, sign(x, q)) gives q·x
// pairs exactly (|q| <= 128 as an unsigned byte, |x| <= 127, so a pair is at most 2·128·127 < 2^15
// and cannot saturate, even for a q of -128 that the converter never writes); vpmaddwd with ones
// then sums each weight row's four columns of a quad. A panel quad (16 rows × 4 columns, 64 bytes)
// is two 32-byte vectors of 8 rows each, and an activation row's 4 int8 values of that quad,
// broadcast to every 32-bit lane, meet both: no horizontal sums. The integer sums are exact and the
// group step is the scalar kernel's, fma(float(isum), sw·xs, acc) in group order, so every output is
// bit-identical to LinearInt8Scalar.
//
// Decode (one activation row): one panel at a time, each quad prefetching the line kDecodePrefetch
// bytes ahead into L2 (T1; past a panel's end that is the next panel, which the same thread reads
// next in a claimed run; prefetches do not fault). On the AMD EPYC host (Zen 3, 2 cores), in-process
// A/Bs of whole decode steps (moerun_decode_ab, V2-Lite 8 layers int8, 150-300 interleaved steps,
// medians of the per-pair time ratios):
// - into L1 (T0), against no prefetch, while its memory ran in the slower mode (read probe ~35 GB/s):
//   2 KiB ahead took 0.85 of the time at 1 thread and 0.87-0.89 at 2; 512 B and 1 KiB 0.89-0.92 at 2,
//   4 KiB 0.96;
// - into L2 (T1) 4 KiB ahead, against T0 2 KiB ahead: 0.93-0.94 at 1 thread, 0.94-0.96 at 2 (and at
//   4096 tokens of context 0.95; batches of 4 and 8 tokens 0.97-0.98; 512-token prompts 1.00). 8 and
//   16 KiB ahead were then within noise of 4; T0 512 B ahead on top of it took 1.02-1.04 of its time,
//   and T0 2 KiB plus T1 6 KiB 1.06-1.10 of T0 alone; T1 on every other line only, ~1.8x. A prefetch
//   into L1 holds one of the core's few L1 miss buffers for a whole memory latency, which appears to
//   be what capped a thread's stream; one into L2 frees it.
// - T1 16 KiB ahead (now), against 4 KiB, in a session whose probe read 17-22 GB/s at 2 threads (200
//   steps at 1 thread, 400 at 2): 0.966, 0.974 and 0.975 at 1 thread, 0.988 and 0.992 at 2, 0.986 at
//   4096 tokens of context; 8 KiB sat between (0.973-0.975 at 1 thread, 0.990-0.996 at 2), and 32
//   KiB took 1.008-1.009 of 16's time. Prefetches that run past a claimed run's end are not wasted
//   enough to matter: stopping them 16 KiB before it took 1.001 of the time.
// An earlier microbenchmark (one stream over 512 MiB of panels, one thread) had found every T0
// distance slower, and in the faster memory mode (~55 GB/s) a 1-8 KiB T0 prefetch was no better. Two
// interleaved panels (an earlier tile) read at 19 GB/s against one panel's 28, and a kernel widening
// the bytes to 16 bits at 26.
//
// Several rows (prefill, batched decode): four rows × one panel share each quad's q and |q|, 8
// accumulators. The previous tile (bytes widened to 16 bits for vpmaddwd, two rows) ran at 54-87
// GOP/s where this one ran at 91-104 (M 48 and 512, N 1408, K 2048, one thread on the AMD EPYC host;
// medians of 9 runs interleaved with the other variants, in five runs). Two rows ran at 80-94, three
// at 87-101, six like four. Its ceiling here is ~120-125 GOP/s per core: vpsignb and vpabsb issue on
// the same two pipes as vpmaddubsw and vpmaddwd (2 per core cycle in all), 26 of them per quad of four
// rows (512 int8 operations), and moerun_pipe_rates measured vpmaddubsw at one every 0.39-0.40 cycles
// of the 2.45 GHz time stamp counter (the cores run faster than it). The tile's 91-104 GOP/s is
// 73-87% of that. An earlier ~109 here took the core clock to be slower than it is.
//
// Compiled for the baseline ISA, with the kernels marked target("avx2,fma"): any inline function
// from a shared header is then built generically, and only DetectSupport().avx2 lets them run.
#include <immintrin.h>

#include "backends/cpu/q8_kernels.h"
#include "runtime/core/parallel_for.h"

namespace moerun::cpu::q8::avx2 {
namespace {

constexpr int64_t kQuadsPerGroup = kGroupCols / 4;
// How far ahead of its quad the decode kernel prefetches (see the top), and the several-row tile
// for a panel's first rows (16 KiB there: 512-token prompts 1.025 [0.98, 1.06] of 4's time, batches
// of 4 tokens 0.99; kept at 4).
constexpr int64_t kDecodePrefetch = 16384;
constexpr int64_t kTilePrefetch = 4096;
// Rows below this many activation bytes are quantised on the calling thread.
constexpr int64_t kMinParallelBytes = int64_t{1} << 16;
using Args = Int8Args;

#define MOERUN_AVX2 __attribute__((target("avx2,fma")))

// The exact sums of one 128-column group: activation rows 0..MR (row stride xstride) against quads
// [j0, j1) of a panel, as sums[2m] = weight rows 0-7 and sums[2m + 1] = rows 8-15 of row m.
// Not inlined, so that its loop has the whole register file (8 accumulators, the quad's q and |q|, a
// broadcast): inlined into the tile, with the tile's f32 accumulators live across it, GCC spilled an
// accumulator to the stack on every iteration and the (previous) kernel ran 25-35% slower.
// kPrefetch: as the decode kernel (kTilePrefetch ahead), for the first rows of each panel, which read
// it from memory (the later rows find it in cache). Against the same build without it (moerun_decode_ab, 2 threads; T0
// 2 KiB ahead then): a batched decode step of 4 tokens took 0.95 of the time, of 8 tokens 0.93;
// 512-token prompts 0.94 at 1 thread, 0.98-1.04 at 2 (within that A/B's noise).
template <int MR, bool kPrefetch>
MOERUN_AVX2 __attribute__((noinline)) void GroupSums(const uint8_t* panel, const int8_t* xq, int64_t xstride,
                                                     int64_t j0, int64_t j1, __m256i* sums) {
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80)), ones = _mm256_set1_epi16(1);
  __m256i acc[MR][2];
#pragma GCC unroll 4
  for (int m = 0; m < MR; ++m) acc[m][0] = acc[m][1] = _mm256_setzero_si256();
  for (int64_t j = j0; j < j1; ++j) {
    const uint8_t* q = panel + j * kQuadBytes;
    if constexpr (kPrefetch) _mm_prefetch(reinterpret_cast<const char*>(q) + kTilePrefetch, _MM_HINT_T1);
    const __m256i w0 = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q)), flip);
    const __m256i w1 = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 32)), flip);
    const __m256i a0 = _mm256_abs_epi8(w0), a1 = _mm256_abs_epi8(w1);
#pragma GCC unroll 4
    for (int m = 0; m < MR; ++m) {
      int32_t x4;
      __builtin_memcpy(&x4, xq + m * xstride + 4 * j, 4);
      const __m256i xb = _mm256_set1_epi32(x4);
      acc[m][0] = _mm256_add_epi32(acc[m][0], _mm256_madd_epi16(_mm256_maddubs_epi16(a0, _mm256_sign_epi8(xb, w0)), ones));
      acc[m][1] = _mm256_add_epi32(acc[m][1], _mm256_madd_epi16(_mm256_maddubs_epi16(a1, _mm256_sign_epi8(xb, w1)), ones));
    }
  }
#pragma GCC unroll 4
  for (int m = 0; m < MR; ++m) {
    sums[2 * m] = acc[m][0];
    sums[2 * m + 1] = acc[m][1];
  }
}

// Activation rows m0..m0+MR against panel p: per group the exact sums (prefetching for the first
// rows), then the scalar kernel's fma(float(isum), sw·xs, y) into the outputs, kept in memory
// between groups.
template <int MR>
MOERUN_AVX2 void Tile(const Args& a, int64_t m0, int64_t p) {
  const uint8_t* panel = a.data + p * a.panel_bytes;
  const int64_t G = a.G;
  // Zeroed with vector stores: `= {}` compiled to a `rep stosq`, whose start-up took ~24% of this
  // function's own samples in a 512-token prompt (perf, 2 threads).
  alignas(32) float out[MR][kPanelRows];
  for (int m = 0; m < MR; ++m) {
    _mm256_store_ps(out[m], _mm256_setzero_ps());
    _mm256_store_ps(out[m] + 8, _mm256_setzero_ps());
  }
  for (int64_t g = 0; g < G; ++g) {
    const int64_t j0 = g * kQuadsPerGroup, j1 = j0 + kQuadsPerGroup < a.quads ? j0 + kQuadsPerGroup : a.quads;
    __m256i sums[2 * MR];
    (m0 == 0 ? GroupSums<MR, true> : GroupSums<MR, false>)(panel, a.xq + m0 * a.xstride, a.xstride, j0, j1, sums);
    const float* sw = a.scale + (p * G + g) * kPanelRows;
    const __m256 sw0 = _mm256_loadu_ps(sw), sw1 = _mm256_loadu_ps(sw + 8);
#pragma GCC unroll 4
    for (int m = 0; m < MR; ++m) {
      const __m256 s = _mm256_set1_ps(a.xs[(m0 + m) * G + g]);
      _mm256_store_ps(out[m],
                      _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums[2 * m]), _mm256_mul_ps(sw0, s), _mm256_load_ps(out[m])));
      _mm256_store_ps(out[m] + 8, _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums[2 * m + 1]), _mm256_mul_ps(sw1, s),
                                                  _mm256_load_ps(out[m] + 8)));
    }
  }
  // The last panel of an N that is not a multiple of 16: columns from N on stay untouched.
  const int64_t rows = a.N - p * kPanelRows < kPanelRows ? a.N - p * kPanelRows : kPanelRows;
  for (int m = 0; m < MR; ++m) __builtin_memcpy(a.y + (m0 + m) * a.ldy + p * kPanelRows, out[m], rows * sizeof(float));
}

// One activation row against panel p: the decode kernel described at the top.
MOERUN_AVX2 void DecodeTile(const Args& a, int64_t p) {
  const uint8_t* panel = a.data + p * a.panel_bytes;
  const int64_t G = a.G;
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80)), ones = _mm256_set1_epi16(1);
  __m256 facc0 = _mm256_setzero_ps(), facc1 = facc0;
  for (int64_t g = 0; g < G; ++g) {
    __m256i acc0 = _mm256_setzero_si256(), acc1 = acc0;  // rows 0-7 and 8-15 of the panel
    const int64_t j0 = g * kQuadsPerGroup, j1 = j0 + kQuadsPerGroup < a.quads ? j0 + kQuadsPerGroup : a.quads;
    for (int64_t j = j0; j < j1; ++j) {
      int32_t x4;
      __builtin_memcpy(&x4, a.xq + 4 * j, 4);
      const __m256i xb = _mm256_set1_epi32(x4);
      const uint8_t* q = panel + j * kQuadBytes;
      _mm_prefetch(reinterpret_cast<const char*>(q) + kDecodePrefetch, _MM_HINT_T1);
      const __m256i w0 = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q)), flip);
      const __m256i w1 = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 32)), flip);
      acc0 = _mm256_add_epi32(
          acc0, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(w0), _mm256_sign_epi8(xb, w0)), ones));
      acc1 = _mm256_add_epi32(
          acc1, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(w1), _mm256_sign_epi8(xb, w1)), ones));
    }
    const float* sw = a.scale + (p * G + g) * kPanelRows;
    const __m256 s = _mm256_set1_ps(a.xs[g]);
    facc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc0), _mm256_mul_ps(_mm256_loadu_ps(sw), s), facc0);
    facc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc1), _mm256_mul_ps(_mm256_loadu_ps(sw + 8), s), facc1);
  }
  float* y = a.y + p * kPanelRows;
  const int64_t rows = a.N - p * kPanelRows;
  if (rows >= kPanelRows) {
    _mm256_storeu_ps(y, facc0);
    _mm256_storeu_ps(y + 8, facc1);
  } else {  // the last panel of an N that is not a multiple of 16: columns from N on stay untouched
    alignas(32) float out[kPanelRows];
    _mm256_store_ps(out, facc0);
    _mm256_store_ps(out + 8, facc1);
    for (int64_t i = 0; i < rows; ++i) y[i] = out[i];
  }
}

// Panels [p0, p1) for all M rows: the decode kernel for one row, fours of rows against one panel
// otherwise (the last one to three rows together).
MOERUN_AVX2 void Range(const Args& a, int64_t M, int64_t p0, int64_t p1) {
  if (M == 1) {
    for (int64_t p = p0; p < p1; ++p) DecodeTile(a, p);
    return;
  }
  for (int64_t p = p0; p < p1; ++p) {
    int64_t m = 0;
    for (; m + 4 <= M; m += 4) Tile<4>(a, m, p);
    switch (M - m) {
      case 3: Tile<3>(a, m, p); break;
      case 2: Tile<2>(a, m, p); break;
      case 1: Tile<1>(a, m, p); break;
      default: break;
    }
  }
}

// ---- Quantisation (q8_panel.h's QuantizeRow, 32 columns at a time) ------------------------------

// q = clamp(round_half_even(v), ±127) with NaN → 0, as int32 lanes (cvtps rounds to nearest even in
// the default MXCSR mode, as nearbyint does; clamping before rounding gives the same integers).
MOERUN_AVX2 inline __m256i QuantizeLanes(__m256 v, __m256 inv) {
  const __m256 s = _mm256_mul_ps(v, inv);
  const __m256 ordered = _mm256_cmp_ps(s, s, _CMP_ORD_Q);
  const __m256 c = _mm256_min_ps(_mm256_max_ps(s, _mm256_set1_ps(-127.0f)), _mm256_set1_ps(127.0f));
  return _mm256_and_si256(_mm256_cvtps_epi32(c), _mm256_castps_si256(ordered));
}

MOERUN_AVX2 void QuantizeRow(const float* x, int64_t K, int64_t stride, int8_t* q, float* xs, int32_t* xsum) {
  const int64_t G = (K + kGroupCols - 1) / kGroupCols;
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  alignas(32) float tail[kGroupCols];
  for (int64_t g = 0; g < G; ++g) {
    const int64_t c0 = g * kGroupCols;
    const float* src = x + c0;
    if (K - c0 < kGroupCols) {  // the last, partial group: zeros leave the maximum and Σq unchanged
      for (int64_t c = 0; c < kGroupCols; ++c) tail[c] = c < K - c0 ? src[c] : 0.0f;
      src = tail;
    }
    // The running maximum is vmaxps's second operand, so a NaN never enters it (as in QuantizeRow).
    __m256 amax = _mm256_setzero_ps();
    for (int i = 0; i < 16; ++i) amax = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(src + 8 * i)), amax);
    amax = _mm256_max_ps(amax, _mm256_permute2f128_ps(amax, amax, 1));
    amax = _mm256_max_ps(amax, _mm256_shuffle_ps(amax, amax, 0x4E));
    amax = _mm256_max_ps(amax, _mm256_shuffle_ps(amax, amax, 0xB1));
    const float a = _mm256_cvtss_f32(amax);
    const __m256 inv = _mm256_set1_ps(a > 0.0f ? 127.0f / a : 0.0f);
    __m256i sum = _mm256_setzero_si256();
    for (int i = 0; i < 4; ++i) {  // 32 columns: four vectors packed to 32 bytes in column order
      const int64_t c = c0 + 32 * i;
      if (c >= stride) break;  // stride is a multiple of 64, so 32-byte chunks either fit or not
      const float* v = src + 32 * i;
      const __m256i q0 = QuantizeLanes(_mm256_loadu_ps(v), inv), q1 = QuantizeLanes(_mm256_loadu_ps(v + 8), inv);
      const __m256i q2 = QuantizeLanes(_mm256_loadu_ps(v + 16), inv);
      const __m256i q3 = QuantizeLanes(_mm256_loadu_ps(v + 24), inv);
      sum = _mm256_add_epi32(sum, _mm256_add_epi32(_mm256_add_epi32(q0, q1), _mm256_add_epi32(q2, q3)));
      const __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(q0, q1), _mm256_packs_epi32(q2, q3));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + c), _mm256_permutevar8x32_epi32(b, order));
    }
    const __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
    const __m128i s2 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
    xs[g] = a / 127.0f;
    xsum[g] = _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32(s2, 0xB1)));
  }
  for (int64_t c = G * kGroupCols; c < stride; c += 32)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + c), _mm256_setzero_si256());
}

#undef MOERUN_AVX2

}  // namespace

void LinearInt8(const WeightView& w, const int8_t* xq, const float* xs, const int32_t* xsum, int64_t M, float* y,
                int64_t ldy) {
  SplitPanels(MakeInt8Args(w, xq, xs, xsum, y, ldy), M, Range);
}

PanelRangeFn PanelRange() { return Range; }

void QuantizeActivations(const float* x, int64_t ldx, int64_t M, int64_t K, int8_t* xq, float* xs, int32_t* xsum) {
  const int64_t G = (K + kGroupCols - 1) / kGroupCols, stride = XqStride(K);
  ParallelFor(M, M * K >= kMinParallelBytes,
              [&](int64_t m) { QuantizeRow(x + m * ldx, K, stride, xq + m * stride, xs + m * G, xsum + m * G); });
}

}  // namespace moerun::cpu::q8::avx2
