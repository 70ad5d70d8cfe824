// AVX-512 Linear kernels: weights in their file dtype (f32, bf16, f16, e4m3 + block scales) are
// widened to f32 in registers, so a decode step reads each weight byte once and nothing is repacked
// ahead of time.
//
// This is the only file built with -mavx512*; it is called only after CpuFeatures::avx512 said yes.
// It deliberately uses no inline functions or templates from other headers (not even std::min):
// a COMDAT copy compiled here with AVX-512 could be the one the linker keeps for generic callers.
#include "backends/cpu/simd_avx512.h"  // first: see there

#include <omp.h>

#include <atomic>
#include <new>

#include "backends/cpu/cpu_backend_impl.h"

namespace moerun::cpu::avx512 {
namespace {

// Up to this many activation rows are dotted straight from the weight stream (decode, small expert
// batches); more go through the buffered path that converts each weight block once.
constexpr int64_t kDirectMaxM = 8;
constexpr int64_t kDirectTileM = 4;  // activation rows per direct register tile
constexpr int64_t kRunCols = 256;    // direct path: columns between prefetch bursts (non-e4m3)
constexpr auto kPrefetchHint = _MM_HINT_T0;
// Buffered path: 16 rows × 1024 columns of f32 = 64 KiB per thread, converted once and then reused
// by every activation row of the call; with a 6-row activation tile (24 KiB) it stays near L1
// (1024 measured best here: 4096 was ~25% slower, 512 pays too many horizontal sums).
constexpr int64_t kBlockRows = 16;
constexpr int64_t kBlockCols = 1024;
constexpr int kTileRows = 4;  // weight rows per register tile
constexpr int kTileM = 6;     // activation rows per register tile: 24 accumulators + 6 + 1 of 32 zmm
// Below this many weight elements, waking the OpenMP team costs more than it saves.
constexpr int64_t kMinParallelElems = int64_t{1} << 16;

inline int64_t Min(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t RoundUp16(int64_t n) { return (n + 15) & ~int64_t{15}; }
inline __mmask16 TailMask(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << n) - 1u);
}

template <DType D>
constexpr int64_t kElemSize = D == DType::kF32 ? 4 : (D == DType::kF8E4M3 ? 1 : 2);

// Two e4m3 → f32 decodings, both giving the value × 2^-8; callers multiply by 256 · scale, so
// float32(w) · scale is still one rounding of the exact product, as in the reference.
//
// Exact (any byte): shifting the magnitude left by 7 puts e4m3's exponent into f16's exponent field
// (bias 15 instead of 7) and its mantissa on top of f16's, and e4m3 subnormals land on f16
// subnormals, which vcvtph2ps converts exactly (it ignores MXCSR.DAZ). 0x7f / 0xff are NaN in
// e4m3fn but decode to ±480 that way, hence the fix-up.
__attribute__((always_inline)) inline __m512 F8ExactOver256(__m128i b) {
  const __m256i h = _mm256_and_si256(_mm256_slli_epi16(_mm256_cvtepi8_epi16(b), 7),
                                     _mm256_set1_epi16(static_cast<short>(0xbf80)));
  const __m512 f = _mm512_cvtph_ps(h);
  const __mmask16 nan = _mm_cmpeq_epi8_mask(_mm_or_si128(b, _mm_set1_epi8(static_cast<char>(0x80))),
                                            _mm_set1_epi8(static_cast<char>(0xff)));
  // (f & sign) | qnan on NaN lanes, as F8E4M3ToF32.
  return _mm512_castsi512_ps(_mm512_mask_ternarylogic_epi32(_mm512_castps_si512(f), nan,
                                                            _mm512_set1_epi32(0x7fc00000),
                                                            _mm512_set1_epi32(static_cast<int>(0x80000000u)), 0xEC));
}

// Normal numbers only (exponent field 1..15, not NaN), in three integer uops instead of the seven
// above (vcvtph2ps alone costs more than the FMA it feeds): the sign-extended byte shifted left by
// 20 has e4m3's exponent and mantissa right below f32's exponent field, whose bias 112 + e needs no
// carry, so one ternary-logic op masks the sign copies off and ORs the bias in. Used on the blocks
// that F8SpecialFlags found free of zeros, subnormals and NaN; the others take the exact path.
__attribute__((always_inline)) inline __m512 F8NormalOver256(__m128i b) {
  const __m512i t = _mm512_slli_epi32(_mm512_cvtepi8_epi32(b), 20);
  return _mm512_castsi512_ps(_mm512_ternarylogic_epi32(t, _mm512_set1_epi32(static_cast<int>(0x87f00000u)),
                                                       _mm512_set1_epi32(112 << 23), 0xEA));  // (t & m) | bias
}

// Whether all n bytes are normal e4m3 numbers: twice the byte (sign shifted out) lies in [16, 252].
inline bool SegmentAllNormal(const uint8_t* p, int64_t n) {
  __m512i lo = _mm512_set1_epi8(static_cast<char>(0xff)), hi = _mm512_setzero_si512();
  for (int64_t k = 0; k < n; k += 64) {
    const __mmask64 m = n - k >= 64 ? ~__mmask64{0} : (__mmask64{1} << (n - k)) - 1;
    const __m512i v = _mm512_maskz_loadu_epi8(m, p + k);
    const __m512i t = _mm512_add_epi8(v, v);
    lo = _mm512_mask_min_epu8(lo, m, lo, t);
    hi = _mm512_mask_max_epu8(hi, m, hi, t);
  }
  const __mmask64 bad = _mm512_cmplt_epu8_mask(lo, _mm512_set1_epi8(16)) |
                        _mm512_cmpgt_epu8_mask(hi, _mm512_set1_epi8(static_cast<char>(252)));
  return bad == 0;
}

// 16 weights from `row` at column c as f32 (e4m3: still to be multiplied by 256 · scale; kFast:
// the segment is known to hold only normal numbers).
template <DType D, bool kMasked, bool kFast = false>
__attribute__((always_inline)) inline __m512 LoadW(const void* row, int64_t c, __mmask16 m) {
  if constexpr (D == DType::kF32) {
    const float* p = static_cast<const float*>(row) + c;
    return kMasked ? _mm512_maskz_loadu_ps(m, p) : _mm512_loadu_ps(p);
  } else if constexpr (D == DType::kBF16 || D == DType::kF16) {
    const uint16_t* p = static_cast<const uint16_t*>(row) + c;
    const __m256i v = kMasked ? _mm256_maskz_loadu_epi16(m, p) : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    if constexpr (D == DType::kF16) return _mm512_cvtph_ps(v);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
  } else {
    const uint8_t* p = static_cast<const uint8_t*>(row) + c;
    const __m128i b = kMasked ? _mm_maskz_loadu_epi8(m, p) : _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    if constexpr (kFast) return F8NormalOver256(b);
    return F8ExactOver256(b);
  }
}

// e4m3 block scales without a division per block (64-bit divides would cost more than the dot
// products of a 128-column run): ScaleRow once per row, then ScaleAt(block) and BlockEnd(block).
template <DType D>
__attribute__((always_inline)) inline const float* ScaleRow(const WeightView& w, int64_t r) {
  if constexpr (D == DType::kF8E4M3) return w.scale + (r / w.block_rows) * w.scale_cols;
  return nullptr;
}

// 256 · scale (the 2^8 completes the e4m3 decodings above); 1 for other dtypes.
template <DType D>
__attribute__((always_inline)) inline __m512 ScaleAt(const float* scale_row, int64_t block) {
  if constexpr (D == DType::kF8E4M3) return _mm512_set1_ps(256.0f * scale_row[block]);
  return _mm512_set1_ps(1.0f);
}

// End of the run of columns of scale block `block` (the whole row unless e4m3), clipped to end.
template <DType D>
__attribute__((always_inline)) inline int64_t BlockEnd(const WeightView& w, int64_t block, int64_t end) {
  if constexpr (D == DType::kF8E4M3) return Min(end, (block + 1) * w.block_cols);
  return end;
}

template <DType D>
__attribute__((always_inline)) inline int64_t FirstBlock(const WeightView& w, int64_t c) {
  if constexpr (D == DType::kF8E4M3) return c / w.block_cols;
  return 0;
}

inline const void* RowPtr(const WeightView& w, int64_t r, int64_t elem_size) {
  return static_cast<const char*>(w.data) + r * w.cols * elem_size;
}

// A weight plus what PrepareWeights learned about it: for e4m3, one flag per (group of 4 rows, scale
// block) telling whether it holds any byte that is not a normal number. Without flags every block
// takes the exact decoding.
struct Source {
  const WeightView& w;
  const uint8_t* f8_special;
  int64_t blocks_per_row;
  bool FastF8(int64_t r0, int64_t r1, int64_t block) const {  // rows [r0, r1]
    return f8_special && !f8_special[(r0 / 4) * blocks_per_row + block] &&
           !f8_special[(r1 / 4) * blocks_per_row + block];
  }
};

// ---- direct path: R weight rows × C activation rows, weights converted in registers -------------

// How a direct step applies the e4m3 block scale: not at all (other dtypes), to every weight (needed
// when rounding to bf16, or when the tile's rows straddle two scale rows), or to the C activation
// vectors instead of the R weight vectors (fewer multiplies; the products differ only in rounding).
enum class Scale { kNone, kWeights, kActivations };

template <DType D, bool kRound, Scale kScale, bool kFast, bool kMasked, int R, int C>
__attribute__((always_inline)) inline void DirectStep(const void* const* rows, const float* x, int64_t ldx, int64_t c,
                                                      __mmask16 m, const __m512* sv, __m512 (&acc)[R][C]) {
  __m512 xv[C];
#pragma GCC unroll 8
  for (int j = 0; j < C; ++j) {
    xv[j] = kMasked ? _mm512_maskz_loadu_ps(m, x + j * ldx + c) : _mm512_loadu_ps(x + j * ldx + c);
    if constexpr (kScale == Scale::kActivations) xv[j] = _mm512_mul_ps(xv[j], sv[0]);
  }
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i) {
    __m512 wv = LoadW<D, kMasked, kFast>(rows[i], c, m);
    if constexpr (kScale == Scale::kWeights) wv = _mm512_mul_ps(wv, sv[i]);
    if constexpr (kRound) wv = RoundBf16x16(wv);
#pragma GCC unroll 8
    for (int j = 0; j < C; ++j) acc[i][j] = _mm512_fmadd_ps(wv, xv[j], acc[i][j]);
  }
}

template <DType D, bool kRound, Scale kScale, bool kFast, int R, int C>
__attribute__((always_inline)) inline void DirectSegment(const void* const* rows, const float* x, int64_t ldx,
                                                         int64_t c0, int64_t c1, const __m512* sv,
                                                         __m512 (&acc)[R][C]) {
  int64_t c = c0;
  for (; c + 16 <= c1; c += 16)
    DirectStep<D, kRound, kScale, kFast, false, R, C>(rows, x, ldx, c, 0xffff, sv, acc);
  if (c < c1) DirectStep<D, kRound, kScale, kFast, true, R, C>(rows, x, ldx, c, TailMask(c1 - c), sv, acc);
}

template <DType D, bool kRound, int R, int C>
void DirectTile(const Source& src, int64_t r0, const float* x, int64_t ldx, float* y, int64_t ldy) {
  const WeightView& w = src.w;
  const int64_t K = w.cols;
  const void* rows[R];
  const float* scale_rows[R];
  __m512 acc[R][C];
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i) {
    rows[i] = RowPtr(w, r0 + i, kElemSize<D>);
    scale_rows[i] = ScaleRow<D>(w, r0 + i);
#pragma GCC unroll 8
    for (int j = 0; j < C; ++j) acc[i][j] = _mm512_setzero_ps();
  }
  const bool one_scale_row = scale_rows[0] == scale_rows[R - 1];
  // Runs of one scale block (e4m3) or kRunCols columns; each run prefetches the same columns of the
  // next tile, which starts right after this one in memory. The hardware prefetcher alone loses
  // ground on rows this short (2 KiB of e4m3 at K=2048): it restarts at every row.
  const int64_t run = D == DType::kF8E4M3 ? w.block_cols : kRunCols;
  const int64_t tile_bytes = R * K * kElemSize<D>;
  for (int64_t c0 = 0, block = 0; c0 < K; ++block) {
    const int64_t c1 = Min(K, c0 + run);
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i)
      for (int64_t b = c0 * kElemSize<D>; b < c1 * kElemSize<D>; b += 64)
        _mm_prefetch(static_cast<const char*>(rows[i]) + tile_bytes + b, kPrefetchHint);
    __m512 sv[R];
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) sv[i] = ScaleAt<D>(scale_rows[i], block);
    if constexpr (D == DType::kF8E4M3) {
      if (!src.FastF8(r0, r0 + R - 1, block)) {
        DirectSegment<D, kRound, Scale::kWeights, false, R, C>(rows, x, ldx, c0, c1, sv, acc);
      } else if (!kRound && one_scale_row) {
        DirectSegment<D, kRound, Scale::kActivations, true, R, C>(rows, x, ldx, c0, c1, sv, acc);
      } else {
        DirectSegment<D, kRound, Scale::kWeights, true, R, C>(rows, x, ldx, c0, c1, sv, acc);
      }
    } else {
      DirectSegment<D, kRound, Scale::kNone, false, R, C>(rows, x, ldx, c0, c1, sv, acc);
    }
    c0 = c1;
  }
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < C; ++j) y[j * ldy + r0 + i] = _mm512_reduce_add_ps(acc[i][j]);
}

template <DType D, bool kRound, int C>
void DirectRowsC(const Source& src, int64_t r0, int64_t nr, const float* x, int64_t ldx, float* y, int64_t ldy) {
  int64_t i = 0;
  for (; i + kTileRows <= nr; i += kTileRows) DirectTile<D, kRound, kTileRows, C>(src, r0 + i, x, ldx, y, ldy);
  for (; i < nr; ++i) DirectTile<D, kRound, 1, C>(src, r0 + i, x, ldx, y, ldy);
}

// Rows [r0, r0 + nr) for all M activation rows, kDirectTileM at a time.
template <DType D, bool kRound>
void DirectRows(const Source& src, int64_t r0, int64_t nr, const float* x, int64_t ldx, int64_t M, float* y,
                int64_t ldy) {
  for (int64_t m0 = 0; m0 < M; m0 += kDirectTileM) {
    const float* xm = x + m0 * ldx;
    float* ym = y + m0 * ldy;
    switch (Min(kDirectTileM, M - m0)) {
      case 1: DirectRowsC<D, kRound, 1>(src, r0, nr, xm, ldx, ym, ldy); break;
      case 2: DirectRowsC<D, kRound, 2>(src, r0, nr, xm, ldx, ym, ldy); break;
      case 3: DirectRowsC<D, kRound, 3>(src, r0, nr, xm, ldx, ym, ldy); break;
      default: DirectRowsC<D, kRound, 4>(src, r0, nr, xm, ldx, ym, ldy); break;
    }
  }
}

// ---- buffered path: a weight block converted once to f32, then register-tiled against x ----------

// Columns [c0, c1) of one row (one scale run), dequantised (and rounded) to out[0, c1 - c0).
template <DType D, bool kRound, bool kFast>
__attribute__((always_inline)) inline void ConvertRun(const void* row, int64_t c0, int64_t c1, __m512 s, float* out) {
  int64_t c = c0;
  for (; c + 16 <= c1; c += 16) {
    __m512 v = LoadW<D, false, kFast>(row, c, 0xffff);
    if constexpr (D == DType::kF8E4M3) v = _mm512_mul_ps(v, s);
    if constexpr (kRound) v = RoundBf16x16(v);
    _mm512_storeu_ps(out + (c - c0), v);
  }
  if (c < c1) {
    const __mmask16 m = TailMask(c1 - c);
    __m512 v = LoadW<D, true, kFast>(row, c, m);
    if constexpr (D == DType::kF8E4M3) v = _mm512_mul_ps(v, s);
    if constexpr (kRound) v = RoundBf16x16(v);
    _mm512_mask_storeu_ps(out + (c - c0), m, v);
  }
}

// Rows [r0, r0 + nr), columns [k0, k0 + kc) → buf[nr][ldb], zero-padded to ldb columns.
template <DType D, bool kRound>
void ConvertBlock(const Source& src, int64_t r0, int64_t nr, int64_t k0, int64_t kc, float* buf, int64_t ldb) {
  const WeightView& w = src.w;
  const int64_t kend = k0 + kc;
  for (int64_t i = 0; i < nr; ++i) {
    const int64_t r = r0 + i;
    const void* row = RowPtr(w, r, kElemSize<D>);
    float* out = buf + i * ldb;
    const float* scale_row = ScaleRow<D>(w, r);
    for (int64_t c0 = k0, block = FirstBlock<D>(w, k0); c0 < kend; ++block) {
      const int64_t c1 = BlockEnd<D>(w, block, kend);
      const __m512 s = ScaleAt<D>(scale_row, block);
      if (D == DType::kF8E4M3 && src.FastF8(r, r, block)) {
        ConvertRun<D, kRound, true>(row, c0, c1, s, out + (c0 - k0));
      } else {
        ConvertRun<D, kRound, false>(row, c0, c1, s, out + (c0 - k0));
      }
      c0 = c1;
    }
    for (int64_t c = kc; c < ldb; ++c) buf[i * ldb + c] = 0.0f;
  }
}

// y[j, i] (+)= buf[i, 0:kc] · x[j, 0:kc] for an R × C tile.
template <int R, int C>
void MicroTile(const float* buf, int64_t ldb, int64_t kc, const float* x, int64_t ldx, float* y, int64_t ldy,
               bool accumulate) {
  __m512 acc[R][C];
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < C; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kc; k += 16) {
    const __mmask16 m = TailMask(kc - k);
    __m512 xv[C];
#pragma GCC unroll 8
    for (int j = 0; j < C; ++j) xv[j] = _mm512_maskz_loadu_ps(m, x + j * ldx + k);
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
      const __m512 wv = _mm512_loadu_ps(buf + i * ldb + k);  // zero-padded past kc
#pragma GCC unroll 8
      for (int j = 0; j < C; ++j) acc[i][j] = _mm512_fmadd_ps(wv, xv[j], acc[i][j]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < C; ++j) {
      const float s = _mm512_reduce_add_ps(acc[i][j]);
      y[j * ldy + i] = accumulate ? y[j * ldy + i] + s : s;
    }
}

template <int R>
void MicroTileC(int64_t C, const float* buf, int64_t ldb, int64_t kc, const float* x, int64_t ldx, float* y,
                int64_t ldy, bool accumulate) {
  switch (C) {
    case 1: MicroTile<R, 1>(buf, ldb, kc, x, ldx, y, ldy, accumulate); break;
    case 2: MicroTile<R, 2>(buf, ldb, kc, x, ldx, y, ldy, accumulate); break;
    case 3: MicroTile<R, 3>(buf, ldb, kc, x, ldx, y, ldy, accumulate); break;
    case 4: MicroTile<R, 4>(buf, ldb, kc, x, ldx, y, ldy, accumulate); break;
    case 5: MicroTile<R, 5>(buf, ldb, kc, x, ldx, y, ldy, accumulate); break;
    default: MicroTile<R, kTileM>(buf, ldb, kc, x, ldx, y, ldy, accumulate); break;
  }
}

// Per-thread conversion buffer; null when the allocation failed.
float* ThreadBlockBuffer() {
  struct Buffer {
    float* p = nullptr;
    ~Buffer() { delete[] p; }
  };
  thread_local Buffer buffer;
  if (!buffer.p) buffer.p = new (std::nothrow) float[kBlockRows * (kBlockCols + 16)];
  return buffer.p;
}

template <DType D, bool kRound>
void BufferedRows(const Source& src, int64_t r0, int64_t nr, const float* x, int64_t ldx, int64_t M, float* y,
                  int64_t ldy, float* buf) {
  const WeightView& w = src.w;
  const int64_t K = w.cols;
  for (int64_t k0 = 0; k0 < K; k0 += kBlockCols) {
    const int64_t kc = Min(kBlockCols, K - k0);
    const int64_t ldb = RoundUp16(kc) + 16;  // rows 4 KiB apart would share L1 sets
    ConvertBlock<D, kRound>(src, r0, nr, k0, kc, buf, ldb);
    for (int64_t m0 = 0; m0 < M; m0 += kTileM) {
      const int64_t C = Min(kTileM, M - m0);
      const float* xm = x + m0 * ldx + k0;
      float* ym = y + m0 * ldy + r0;
      int64_t i = 0;
      for (; i + kTileRows <= nr; i += kTileRows)
        MicroTileC<kTileRows>(C, buf + i * ldb, ldb, kc, xm, ldx, ym + i, ldy, k0 > 0);
      for (; i < nr; ++i) MicroTileC<1>(C, buf + i * ldb, ldb, kc, xm, ldx, ym + i, ldy, k0 > 0);
    }
  }
}

template <DType D, bool kRound>
void LinearTyped(const Source& src, const float* x, int64_t ldx, int64_t M, float* y, int64_t ldy) {
  const WeightView& w = src.w;
  const int64_t N = w.rows;
  const bool parallel = N * w.cols * (M < 8 ? 1 : 4) >= kMinParallelElems;
  if (M <= kDirectMaxM) {
    // Row tiles in static chunks: each thread streams its own contiguous share of the weight rows.
    const int64_t tiles = (N + kTileRows - 1) / kTileRows;
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t r0 = t * kTileRows;
      DirectRows<D, kRound>(src, r0, Min(kTileRows, N - r0), x, ldx, M, y, ldy);
    }
    return;
  }
  const int64_t blocks = (N + kBlockRows - 1) / kBlockRows;
  // Without its buffer a thread could go direct, but that sums in another order: the numbers would
  // depend on memory pressure. Out of memory is reported instead (Linear's callers retry).
  std::atomic<bool> no_buffer{false};
#pragma omp parallel if (parallel)
  {
    float* buf = ThreadBlockBuffer();
    if (!buf) no_buffer.store(true, std::memory_order_relaxed);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      if (!buf) continue;
      const int64_t r0 = b * kBlockRows, nr = Min(kBlockRows, N - r0);
      BufferedRows<D, kRound>(src, r0, nr, x, ldx, M, y, ldy, buf);
    }
  }
  if (no_buffer.load(std::memory_order_relaxed)) throw std::bad_alloc();
}

template <bool kRound>
void LinearRound(const Source& src, const float* x, int64_t ldx, int64_t M, float* y, int64_t ldy) {
  const WeightView& w = src.w;
  switch (w.dtype) {
    case DType::kF32: LinearTyped<DType::kF32, kRound>(src, x, ldx, M, y, ldy); break;
    case DType::kBF16: LinearTyped<DType::kBF16, kRound>(src, x, ldx, M, y, ldy); break;
    case DType::kF16: LinearTyped<DType::kF16, kRound>(src, x, ldx, M, y, ldy); break;
    case DType::kF8E4M3: LinearTyped<DType::kF8E4M3, kRound>(src, x, ldx, M, y, ldy); break;
    case DType::kQ8Panel: break;  // never routed here: q8_kernels.h runs it
  }
}

template <DType D>
void RowsToBf16Typed(const WeightView& w, int64_t r0, int64_t r1, uint16_t* out) {
  const int64_t K = w.cols;
  for (int64_t r = r0; r < r1; ++r) {
    const void* row = RowPtr(w, r, kElemSize<D>);
    uint16_t* o = out + (r - r0) * K;
    const float* scale_row = ScaleRow<D>(w, r);
    for (int64_t c0 = 0, block = 0; c0 < K; ++block) {
      const int64_t c1 = BlockEnd<D>(w, block, K);
      const __m512 s = ScaleAt<D>(scale_row, block);
      for (int64_t c = c0; c < c1; c += 16) {
        const __mmask16 m = TailMask(c1 - c);
        __m512 v = LoadW<D, true>(row, c, m);
        if constexpr (D == DType::kF8E4M3) v = _mm512_mul_ps(v, s);
        const __m256i h = _mm512_cvtepi32_epi16(_mm512_srli_epi32(RoundBf16Lanes(v), 16));
        _mm256_mask_storeu_epi16(o + c, m, h);
      }
      c0 = c1;
    }
  }
}

}  // namespace

void Linear(const WeightView& w, const uint8_t* f8_special, const float* x, int64_t ldx, int64_t M, float* y,
            int64_t ldy, bool round_bf16) {
  const Source src{w, w.dtype == DType::kF8E4M3 ? f8_special : nullptr, F8BlocksPerRow(w)};
  if (round_bf16) {
    LinearRound<true>(src, x, ldx, M, y, ldy);
  } else {
    LinearRound<false>(src, x, ldx, M, y, ldy);
  }
}

void DequantizeRows(const WeightView& w, const uint8_t* f8_special, int64_t r0, int64_t r1, float* out) {
  const Source src{w, w.dtype == DType::kF8E4M3 ? f8_special : nullptr, F8BlocksPerRow(w)};
  switch (w.dtype) {
    case DType::kF32: ConvertBlock<DType::kF32, false>(src, r0, r1 - r0, 0, w.cols, out, w.cols); break;
    case DType::kBF16: ConvertBlock<DType::kBF16, false>(src, r0, r1 - r0, 0, w.cols, out, w.cols); break;
    case DType::kF16: ConvertBlock<DType::kF16, false>(src, r0, r1 - r0, 0, w.cols, out, w.cols); break;
    case DType::kF8E4M3: ConvertBlock<DType::kF8E4M3, false>(src, r0, r1 - r0, 0, w.cols, out, w.cols); break;
    case DType::kQ8Panel: break;  // never routed here
  }
}

int64_t F8BlocksPerRow(const WeightView& w) {
  return w.dtype == DType::kF8E4M3 && w.block_cols > 0 ? (w.cols + w.block_cols - 1) / w.block_cols : 0;
}

void F8SpecialFlags(const WeightView& w, int64_t g0, int64_t g1, uint8_t* flags) {
  const int64_t blocks = F8BlocksPerRow(w);
  for (int64_t g = g0; g < g1; ++g)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t c0 = b * w.block_cols, n = Min(w.cols, c0 + w.block_cols) - c0;
      bool normal = true;
      for (int64_t r = 4 * g; r < Min(w.rows, 4 * g + 4) && normal; ++r)
        normal = SegmentAllNormal(static_cast<const uint8_t*>(RowPtr(w, r, 1)) + c0, n);
      flags[(g - g0) * blocks + b] = normal ? 0 : 1;
    }
}

void WeightRowsToBf16(const WeightView& w, int64_t r0, int64_t r1, uint16_t* out) {
  switch (w.dtype) {
    case DType::kF32: RowsToBf16Typed<DType::kF32>(w, r0, r1, out); break;
    case DType::kBF16: RowsToBf16Typed<DType::kBF16>(w, r0, r1, out); break;
    case DType::kF16: RowsToBf16Typed<DType::kF16>(w, r0, r1, out); break;
    case DType::kF8E4M3: RowsToBf16Typed<DType::kF8E4M3>(w, r0, r1, out); break;
    case DType::kQ8Panel: break;  // never routed here: q8_panel weights get no bf16 copy
  }
}

void RoundToBf16Bits(const float* x, int64_t n, uint16_t* out) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = TailMask(n - i);
    const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
    _mm256_mask_storeu_epi16(out + i, m, _mm512_cvtepi32_epi16(_mm512_srli_epi32(RoundBf16Lanes(v), 16)));
  }
}

void RoundToBf16Floats(const float* x, int64_t n, float* out) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = TailMask(n - i);
    _mm512_mask_storeu_ps(out + i, m, RoundBf16x16(_mm512_maskz_loadu_ps(m, x + i)));
  }
}

void F8E4M3ToF32(const uint8_t* in, int64_t n, float* out, bool normal_only) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = TailMask(n - i);
    const __m512 v = normal_only ? LoadW<DType::kF8E4M3, true, true>(in, i, m) : LoadW<DType::kF8E4M3, true>(in, i, m);
    _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(v, _mm512_set1_ps(256.0f)));
  }
}

}  // namespace moerun::cpu::avx512
