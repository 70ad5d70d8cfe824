// AVX-512 VNNI int8 Linear on Q8_PANEL weights: the decode path (and the large-M path without AMX).
//
// Vertical layout: a panel quad (16 rows × 4 columns, offset-binary bytes) is one zmm, the unsigned
// operand of vpdpbusd; the 4 int8 activations of that quad are broadcast from xq. So one int32
// accumulator holds 16 output rows of one activation row, and each weight byte is loaded once per
// register tile of MR activation rows × PT panels. Per 128-column group the accumulators are
// corrected for the +128 (−128·Σq), converted and scaled once.
//
// Built with -mavx512* -mavx512vnni; called only after DetectSupport().vnni. Uses no inline
// functions or templates from other headers (see q8_avx512.cc).
#include "backends/cpu/simd_avx512.h"  // first: see there

#include <omp.h>

#include "backends/cpu/q8_kernels.h"

namespace moerun::cpu::q8::vnni {
namespace {

constexpr int64_t kQuadsPerGroup = kGroupCols / 4;
// Software prefetch along each panel stream into L2 only (T1), 32 KiB ahead, in tiles of more than
// kFourStreamRows activation rows (prefill) only. The first form of this kernel also prefetched 2 KiB
// ahead into L1 (T0), measured best then; on the AMD EPYC Zen 4 host (2 vCPUs, family 25 model 17)
// that T0 prefetch cost ~10% of a decode step: without it, interleaved A/B (moerun_decode_ab, 100
// steps) took 0.885 of the time at 1 thread, 0.903 at 2, 0.909 at 4096 tokens of context, 0.941 at
// batch 4, and 1.004 for a 512-token prompt. The T1 prefetch itself was neutral there (none: 1.000
// and 0.994); 16 KiB ahead took 1.07-1.08 of its time, 64 KiB 1.02-1.03. On the Zen 5 host (family 26
// model 2) decode without it took 0.920 of the time at 2 threads and 0.919 at 1 (150 and 100 steps),
// 0.953 at batch 4 and 0.955 at 4096 tokens of context, and a 512-token prompt 1.036: so decode's
// tiles (up to kFourStreamRows rows) leave it to the hardware.
constexpr int64_t kPrefetchL2Bytes = 32768;
// Up to this many activation rows (decode, and the experts of batched decode) run four panels at a time
// without the software prefetch (see Range and above).
constexpr int64_t kFourStreamRows = 4;

inline int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline __mmask16 TailMask16(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << n) - 1u);
}

using Args = Int8Args;

// acc += Σ of four u8 (w) × s8 (x) products per lane: vpdpbusd in inline assembly, so that the
// accumulator stays in its register. With the intrinsic GCC 12 copied every accumulator to another
// register and back around each vpdpbusd of the unrolled loops (two moves per product).
inline __m512i Dpbusd(__m512i acc, __m512i w, __m512i x) {
  __asm__("vpdpbusd %[x], %[w], %[acc]" : [acc] "+v"(acc) : [w] "v"(w), [x] "v"(x));
  return acc;
}

// Activation rows m0..m0+MR against panels p..p+PT. The f32 sums of tiles with more than 8
// accumulators are kept in y between the 128-column groups instead of in registers: 16 int32 and 16
// f32 accumulators (8 rows × 2 panels) left no room for the weights and broadcasts, and GCC spilled
// and shuffled them inside the inner loop (a 512-token prompt's Tile<8, 2> on the Zen 5 host: half
// its instructions were register moves and stack stores). The same operations in the same order.
template <int MR, int PT>
void Tile(const Args& a, int64_t m0, int64_t p) {
  constexpr bool kPrefetch = MR > kFourStreamRows;
  constexpr bool kSumsInY = MR * PT > 8;
  const uint8_t* panel[PT];
  for (int t = 0; t < PT; ++t) panel[t] = a.data + (p + t) * a.panel_bytes;
  // The arguments in locals: y's stores could alias `a`, which GCC would then read again after each.
  const int64_t xstride = a.xstride, G = a.G, ldy = a.ldy, quads = a.quads;
  const int8_t* xq = a.xq + m0 * xstride;
  const float* xs = a.xs + m0 * G;
  const int32_t* xsum = a.xsum + m0 * G;
  float* y = a.y + m0 * ldy + p * kPanelRows;
  __mmask16 mask[PT];
  for (int t = 0; t < PT; ++t) mask[t] = TailMask16(a.N - (p + t) * kPanelRows);
  __m512 facc[kSumsInY ? 1 : MR][kSumsInY ? 1 : PT];
  // Every loop over the tile's rows and panels fully unrolled, the first and last too: with any of
  // them left as a loop GCC kept the accumulators in memory around it (stored after each group's
  // products, reloaded before the next); unrolled, an 8 x 2 tile on hot weights ran ~500-580 GOP/s
  // -> ~680-730 (one thread, Zen 5 host).
  if constexpr (kSumsInY) {
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
      for (int t = 0; t < PT; ++t) _mm512_mask_storeu_ps(y + m * ldy + t * kPanelRows, mask[t], _mm512_setzero_ps());
  } else {
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
      for (int t = 0; t < PT; ++t) facc[m][t] = _mm512_setzero_ps();
  }
  for (int64_t g = 0; g < G; ++g) {
    __m512i acc[MR][PT];  // from −128·Σq: the weights' +128 offset taken out before the products go in
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      const __m512i bias = _mm512_set1_epi32(-128 * xsum[m * G + g]);
#pragma GCC unroll 4
      for (int t = 0; t < PT; ++t) acc[m][t] = bias;
    }
    const int64_t j0 = g * kQuadsPerGroup, j1 = j0 + kQuadsPerGroup < quads ? j0 + kQuadsPerGroup : quads;
    for (int64_t j = j0; j < j1; ++j) {
      __m512i w[PT];
#pragma GCC unroll 4
      for (int t = 0; t < PT; ++t) {
        const uint8_t* q = panel[t] + j * kQuadBytes;
        if constexpr (kPrefetch) _mm_prefetch(reinterpret_cast<const char*>(q + kPrefetchL2Bytes), _MM_HINT_T1);
        w[t] = _mm512_loadu_si512(q);
      }
#pragma GCC unroll 8
      for (int m = 0; m < MR; ++m) {
        int32_t x4;
        __builtin_memcpy(&x4, xq + m * xstride + 4 * j, 4);
        const __m512i xb = _mm512_set1_epi32(x4);
#pragma GCC unroll 4
        for (int t = 0; t < PT; ++t) acc[m][t] = Dpbusd(acc[m][t], w[t], xb);
      }
    }
#pragma GCC unroll 4
    for (int t = 0; t < PT; ++t) {
      const __m512 sw = _mm512_loadu_ps(a.scale + ((p + t) * G + g) * kPanelRows);
#pragma GCC unroll 8
      for (int m = 0; m < MR; ++m) {
        const __m512 f = _mm512_cvtepi32_ps(acc[m][t]), s = _mm512_mul_ps(sw, _mm512_set1_ps(xs[m * G + g]));
        if constexpr (kSumsInY) {
          float* ym = y + m * ldy + t * kPanelRows;
          _mm512_mask_storeu_ps(ym, mask[t], _mm512_fmadd_ps(f, s, _mm512_maskz_loadu_ps(mask[t], ym)));
        } else {
          facc[m][t] = _mm512_fmadd_ps(f, s, facc[m][t]);
        }
      }
    }
  }
  if constexpr (!kSumsInY) {
#pragma GCC unroll 4
    for (int t = 0; t < PT; ++t)
#pragma GCC unroll 8
      for (int m = 0; m < MR; ++m) _mm512_mask_storeu_ps(y + m * ldy + t * kPanelRows, mask[t], facc[m][t]);
  }
}

template <int PT>
void RowTile(const Args& a, int64_t rows, int64_t m, int64_t p) {
  switch (rows) {
    case 8: if constexpr (PT < 4) Tile<8, PT>(a, m, p); break;
    case 7: if constexpr (PT < 4) Tile<7, PT>(a, m, p); break;
    case 6: if constexpr (PT < 4) Tile<6, PT>(a, m, p); break;
    case 5: if constexpr (PT < 4) Tile<5, PT>(a, m, p); break;
    case 4: Tile<4, PT>(a, m, p); break;
    case 3: Tile<3, PT>(a, m, p); break;
    case 2: Tile<2, PT>(a, m, p); break;
    case 1: Tile<1, PT>(a, m, p); break;
    default: break;
  }
}

// All M rows against panels p..p+PT while the panels stay in cache, in as few tiles of at most kRows
// rows as hold them, of sizes that differ by one at most: each tile streams the panels from L2 once,
// and a tile of 1-3 rows does that for few products (M = 41 ran as 8, 8, 8, 8, 8, 1 and runs as 7, 7,
// 7, 7, 7, 6). Every row's arithmetic is the same whatever tile holds it.
template <int PT>
void Panels(const Args& a, int64_t M, int64_t p) {
  constexpr int kRows = PT >= 4 ? 4 : 8;
  const int64_t tiles = CeilDiv(M, kRows), rows = M / tiles, longer = M % tiles;
  int64_t m = 0;
  for (int64_t i = 0; i < tiles; ++i) {
    const int64_t r = rows + (i < longer ? 1 : 0);
    RowTile<PT>(a, r, m, p);
    m += r;
  }
}

// Panels [p0, p1) four at a time for up to kFourStreamRows activation rows (decode, and the experts
// of batched decode), else two at a time: several weight streams per thread read DRAM fastest. On the
// Zen 4 host without the T0 prefetch (interleaved A/B against two streams, 100 steps): four took 0.965
// of the time at 1 thread and 0.963 at 2, 0.958 at batch 4 and 0.973 at batch 8; one took 1.107 and
// 1.046, eight 1.080 and 1.038, and four with the T1 prefetch aimed at the next run of four panels
// 1.036 and 1.026. More rows would need more accumulators than the 32 registers hold (MR × PT).
void Range(const Args& a, int64_t M, int64_t p0, int64_t p1) {
  int64_t p = p0;
  if (M <= kFourStreamRows)
    for (; p + 4 <= p1; p += 4) Panels<4>(a, M, p);
  for (; p + 2 <= p1; p += 2) Panels<2>(a, M, p);
  if (p < p1) Panels<1>(a, M, p);
}

}  // namespace

void LinearInt8(const WeightView& w, const int8_t* xq, const float* xs, const int32_t* xsum, int64_t M, float* y,
                int64_t ldy) {
  SplitPanels(MakeInt8Args(w, xq, xs, xsum, y, ldy), M, Range);
}

PanelRangeFn PanelRange() { return Range; }

}  // namespace moerun::cpu::q8::vnni
