// MLA attention on AVX2 + FMA, for CPUs without AVX-512: the latent path (decode and short chunks:
// keys [j0, j1) of one token, all heads, into a Partial, not yet normalised) and the values path
// (prefill: up to kValuesTileTokens tokens of one sequence, all heads, against per-head value rows,
// normalised).
//
// Same plan as the AVX-512 kernel of mla_attention.cc with 8 lanes: keys in blocks of 128 rows, read
// in one of three forms (KeyForm): a bf16 cache's rows in place at bf16 precision (Bf16Keys: widened
// in registers), an f32 cache's rows in place on the exact f32 path (RowKeys), else packed into
// scratch in slices of 16 columns (PackedKeys; 295 KiB at kv_rank 512, see kSlice); meanwhile the
// next block's rows are prefetched. The AMX latent kernel's blocks, so both round the probabilities
// relative to the same running max. Scores with the queries stored transposed per group of 8 heads,
// so each key element is broadcast into one FMA for 8 heads and no horizontal sums are needed; an
// online softmax per block; then the probability-weighted rows for 6 heads × 16 latents per register
// tile (the values path: one head's value rows for up to 6 tokens × 16 values, several such register
// tiles of a tile's tokens against each slice of the rows while it is in L1). At bf16 precision
// (round) the inputs are rounded to bf16 as the AMX kernels and the reference backend round them:
// queries, the block's rows (a bf16 cache's rows are those values already), value rows and each
// probability, relative to the running max of its block
// (the AMX kernels' blocks: 128 keys on the latent path, 64 on the values path).
//
// Compiled for the baseline ISA with the kernels marked target("avx2,fma") (see q8_avx2.cc); call
// only when q8::DetectSupport().avx2.
#include "backends/cpu/mla_attention_impl.h"  // first: it includes simd_avx512.h
#include "backends/cpu/simd_avx2.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <exception>
#include <type_traits>
#include <vector>

namespace moerun::cpu::mla::avx2 {
namespace {

constexpr int64_t kBlock = amx::kLatentKeyBlock;        // keys per block, latent path
constexpr int64_t kValuesBlock = amx::kKeyBlock;         // and values path
static_assert(kValuesBlock <= kBlock, "scratch is sized for kBlock keys");
constexpr int kTileHeads = 6;  // heads per register tile of the latent path's weighted sum

#define MOERUN_AVX2 __attribute__((target("avx2,fma")))

// Lanes [0, n) set, for masked loads and stores of a row's tail.
MOERUN_AVX2 inline __m256i TailMask8(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n < 8 ? n : 8)),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// n (or 8 when n >= 8) floats: plain loads and stores where the whole vector is inside, masked ones
// only for a tail (vmaskmovps stores are microcoded on AMD: with them everywhere, the bf16 row copy
// was the hottest code of a decode step at 4096 tokens of context).
MOERUN_AVX2 inline __m256 Load8(const float* p, int64_t n) {
  return n >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, TailMask8(n));
}
MOERUN_AVX2 inline void Store8(float* p, int64_t n, __m256 v) {
  if (n >= 8) {
    _mm256_storeu_ps(p, v);
  } else {
    _mm256_maskstore_ps(p, TailMask8(n), v);
  }
}

// e^x on 8 lanes for x <= 0 (a score less a running max; -inf gives 0), within ~2 ulp of std::exp
// down to -87.3; below that (under f32's normal range, 1e-38 of the max) it gives 0. NaN stays NaN.
// Exp8N: on N vectors in place, interleaved (see ExpReducedN), each with Exp8's bits.
template <int N>
MOERUN_AVX2 inline void Exp8N(__m256* x) {
  __m256 below[N], n[N], p[N];
#pragma GCC unroll 8
  for (int k = 0; k < N; ++k) {
    below[k] = _mm256_cmp_ps(x[k], _mm256_set1_ps(-87.3f), _CMP_LT_OQ);
    x[k] = _mm256_min_ps(_mm256_set1_ps(88.0f), _mm256_max_ps(_mm256_set1_ps(-87.3f), x[k]));
  }
  ExpReducedN<N>(x, n, p);
#pragma GCC unroll 8
  for (int k = 0; k < N; ++k) {
    // 2^n for n in [-126, 127]: the exponent field directly.
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n[k]), _mm256_set1_epi32(127)), 23);
    x[k] = _mm256_andnot_ps(below[k], _mm256_mul_ps(p[k], _mm256_castsi256_ps(e)));
  }
}
MOERUN_AVX2 inline __m256 Exp8(__m256 x) {
  Exp8N<1>(&x);
  return x;
}

// Per token of a values tile (one on the latent path): queries, scores, max and sum.
struct Scratch {
  std::vector<float> qt;                // [tokens][groups, W, 8]: queries transposed per group of 8 heads
  std::vector<float> block;             // the block's rows, packed (KeyForm::kPacked)
  std::vector<float> st;                // [kBlock, tokens, groups * 8]: scores, then probabilities
  std::vector<float> max, sum;          // [tokens, groups * 8]
  std::vector<float> ph;                // [kValuesBlock, tokens]: one head's probabilities (values path)
  std::vector<const float*> rows;       // [kBlock]: the block's f32 rows (KeyForm::kRows)
  std::vector<const uint16_t*> rows16;  // [kBlock]: its bf16 rows (KeyForm::kBf16Rows)
  std::vector<float> qk, kr, sh;        // the keys form: TransposeKeyQueries, ScoreKeysBlock's scratch
};

// The block's rows packed in slices of 16 columns: column c of key j at
// pk[(c / 16) * kSliceStride + j * 16 + c % 16], so that a slice of consecutive keys is contiguous
// (the weighted sum reads one 64-byte line per key and slice, not a line of a row 2304 bytes from the
// next key's; the scores' NK keys are NK adjacent lines). Slices are a line more than kBlock keys
// apart: a multiple of 4 KiB would put a row's 36 slices in one set of L1 (the packing then ran 2x
// slower).
constexpr int64_t kSlice = 16;
constexpr int64_t kSliceStride = kBlock * kSlice + 16;

// Where a block's keys are read: the packed block, or f32 cache rows in place. The exact f32 path
// (no rounding, an f32 cache) reads its rows where they are, without the prefetch: packing and
// prefetching them too made that path 14-18% slower at 4096 keys (8 layers, one thread, interleaved
// with the unpacked kernel).
// The kernels take either as a template argument; At(j, s0) is key j's columns [s0, s0 + kSlice), s0
// a multiple of kSlice, contiguous in both forms.
struct PackedKeys {
  const float* pk;
  const float* At(int64_t j, int64_t s0) const { return pk + (s0 / kSlice) * kSliceStride + j * kSlice; }
};
struct RowKeys {
  const float* const* rows;
  const float* At(int64_t j, int64_t s0) const { return rows[j] + s0; }
};
// A bf16 cache's rows read in place at bf16 precision (Bf16InPlace): the kernels widen the bf16
// values in registers, two columns per 32-bit word (column c in the low half: shifted up; c + 1 in
// the high half: masked), so there is no packing. The same values in the same order as the packed
// block, so the same bits. The packing was 16-20% of a decode step's attention (8 layers, 600 and
// 4096 keys, one thread).
struct Bf16Keys {
  const uint16_t* const* rows;
};
template <typename Keys>
inline constexpr bool kBf16Keys = std::is_same_v<Keys, Bf16Keys>;

// Rows that Bf16Keys can read: whole slices of latents and whole words of columns (DeepSeek's 512 +
// 64). Other shapes pack their blocks.
inline bool Bf16InPlace(const LatentCacheView& cache) {
  return cache.bf16() && cache.kv_rank % kSlice == 0 && cache.row_width() % 2 == 0;
}

// Columns c (low half) and c + 1 (high half) of a bf16 row as f32, in every lane.
MOERUN_AVX2 inline __m256 WordLow(__m256i w) { return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)); }
MOERUN_AVX2 inline __m256 WordHigh(__m256i w) {
  return _mm256_castsi256_ps(_mm256_and_si256(w, _mm256_set1_epi32(static_cast<int>(0xffff0000u))));
}
MOERUN_AVX2 inline __m256i BroadcastWord(const uint16_t* p) {
  int32_t w;
  std::memcpy(&w, p, sizeof(w));
  return _mm256_set1_epi32(w);
}

// st[j][g..g+NG) for NK keys: NG groups of 8 heads against the block's keys [j, j + NK), all W
// columns.
template <int NG, int NK, typename Keys>
MOERUN_AVX2 void Scores(const float* qt, int64_t W, const Keys& keys, int64_t j, float scale, float* st,
                        int64_t ldst) {
  __m256 acc[NG][NK];
#pragma GCC unroll 2
  for (int g = 0; g < NG; ++g)
#pragma GCC unroll 6
    for (int k = 0; k < NK; ++k) acc[g][k] = _mm256_setzero_ps();
  if constexpr (kBf16Keys<Keys>) {
    const uint16_t* key_at[NK];
#pragma GCC unroll 6
    for (int k = 0; k < NK; ++k) key_at[k] = keys.rows[j + k];
    for (int64_t c = 0; c < W; c += 2) {  // W is even (Bf16InPlace)
      __m256 q0[NG], q1[NG];
#pragma GCC unroll 2
      for (int g = 0; g < NG; ++g) {
        q0[g] = _mm256_loadu_ps(qt + (g * W + c) * 8);
        q1[g] = _mm256_loadu_ps(qt + (g * W + c + 1) * 8);
      }
#pragma GCC unroll 6
      for (int k = 0; k < NK; ++k) {
        const __m256i w = BroadcastWord(key_at[k] + c);
        const __m256 lo = WordLow(w), hi = WordHigh(w);
#pragma GCC unroll 2
        for (int g = 0; g < NG; ++g) acc[g][k] = _mm256_fmadd_ps(q1[g], hi, _mm256_fmadd_ps(q0[g], lo, acc[g][k]));
      }
      // The queries held to here, so that the last key's FMAs accumulate in place: GCC 12 had them
      // write into the queries' registers and moved two sums back on every column pair. Without those
      // moves the whole latent path took 0.96 of the time (4096 keys, 16 heads, one thread, Zen 1).
#pragma GCC unroll 2
      for (int g = 0; g < NG; ++g) asm volatile("" : : "x"(q0[g]), "x"(q1[g]));
    }
  } else {
    for (int64_t s0 = 0; s0 < W; s0 += kSlice) {
      const float* key_at[NK];
#pragma GCC unroll 6
      for (int k = 0; k < NK; ++k) key_at[k] = keys.At(j + k, s0);
      const int64_t cn = std::min(kSlice, W - s0);
      for (int64_t i = 0; i < cn; ++i) {
        __m256 q[NG];
#pragma GCC unroll 2
        for (int g = 0; g < NG; ++g) q[g] = _mm256_loadu_ps(qt + (g * W + s0 + i) * 8);
#pragma GCC unroll 6
        for (int k = 0; k < NK; ++k) {
          const __m256 key = _mm256_broadcast_ss(key_at[k] + i);
#pragma GCC unroll 2
          for (int g = 0; g < NG; ++g) acc[g][k] = _mm256_fmadd_ps(q[g], key, acc[g][k]);
        }
      }
    }
  }
  const __m256 s = _mm256_set1_ps(scale);
#pragma GCC unroll 2
  for (int g = 0; g < NG; ++g)
#pragma GCC unroll 6
    for (int k = 0; k < NK; ++k) _mm256_storeu_ps(st + (j + k) * ldst + g * 8, _mm256_mul_ps(s, acc[g][k]));
}

// The scores of the block's nb keys for NG groups of heads: six keys per register tile (12
// accumulators at two groups), then fours and ones (six measured ~2% faster than four alone).
template <int NG, typename Keys>
MOERUN_AVX2 void ScoreBlock(const float* qt, int64_t W, const Keys& keys, int64_t nb, float scale, float* st,
                            int64_t ldst) {
  // On bf16 rows, fours: six keys' accumulators and two columns' queries did not fit the registers.
  constexpr int kWide = kBf16Keys<Keys> ? 4 : 6;
  int64_t j = 0;
  for (; j + kWide <= nb; j += kWide) Scores<NG, kWide>(qt, W, keys, j, scale, st, ldst);
  for (; j + 4 <= nb; j += 4) Scores<NG, 4>(qt, W, keys, j, scale, st, ldst);
  for (; j < nb; ++j) Scores<NG, 1>(qt, W, keys, j, scale, st, ldst);
}

// acc[h] += p[h] · (r0, r1) for NH heads: one key of the weighted sum.
template <int NH>
MOERUN_AVX2 __attribute__((always_inline)) inline void WeighKey(const float* p, __m256 r0, __m256 r1,
                                                                __m256 (*acc)[2]) {
#pragma GCC unroll 6
  for (int h = 0; h < NH; ++h) {
    const __m256 e = _mm256_broadcast_ss(p + h);
    acc[h][0] = _mm256_fmadd_ps(e, r0, acc[h][0]);
    acc[h][1] = _mm256_fmadd_ps(e, r1, acc[h][1]);
  }
}

// out[h][i0, i0 + 16) += Σ_j p[j][h] row_j[i0, i0 + 16) for NH heads (NH <= kTileHeads); kFull: all
// 16 lanes inside R (no masks), else lanes past R masked. Six heads keep 12 accumulators in flight
// (two FMA pipes of 4 cycles' latency need 8) and load 8 vectors per 12 FMAs (4 heads: 6 per 8).
template <int NH, bool kFull, typename Keys>
MOERUN_AVX2 void Accumulate(const float* st, int64_t ldst, const Keys& keys, int64_t nb, int64_t i0, int64_t R,
                            float* out) {
  const __m256i m0 = TailMask8(R - i0), m1 = TailMask8(R - i0 - 8);
  auto load = [&](const float* x, int k) MOERUN_AVX2 {
    return kFull ? _mm256_loadu_ps(x + 8 * k) : _mm256_maskload_ps(x + 8 * k, k == 0 ? m0 : m1);
  };
  __m256 acc[NH][2];
#pragma GCC unroll 6
  for (int h = 0; h < NH; ++h) {
    acc[h][0] = load(out + h * R + i0, 0);
    acc[h][1] = load(out + h * R + i0, 1);
  }
  for (int64_t j = 0; j < nb; ++j) {
    const float* row = keys.At(j, i0);
    const __m256 r0 = load(row, 0), r1 = load(row, 1);
    WeighKey<NH>(st + j * ldst, r0, r1, acc);
  }
#pragma GCC unroll 6
  for (int h = 0; h < NH; ++h) {
    Store8(out + h * R + i0, R - i0, acc[h][0]);
    Store8(out + h * R + i0 + 8, R - i0 - 8, acc[h][1]);
  }
}

// Accumulate on a bf16 cache's rows in place (Bf16Keys; whole slices): a key's 16 columns are one
// 32-byte load, widened as the even columns (low halves) and the odd ones (high halves), so the
// accumulators hold out's slice deinterleaved for the block.
template <int NH>
MOERUN_AVX2 void AccumulateBf16(const float* st, int64_t ldst, const Bf16Keys& keys, int64_t nb, int64_t i0,
                                int64_t R, float* out) {
  __m256 acc[NH][2];  // even columns, odd columns
#pragma GCC unroll 6
  for (int h = 0; h < NH; ++h) {
    const __m256 a = _mm256_loadu_ps(out + h * R + i0), b = _mm256_loadu_ps(out + h * R + i0 + 8);
    // (a0 a2 b0 b2 | a4 a6 b4 b6) → (a0 a2 a4 a6 b0 b2 b4 b6); odd columns likewise.
    acc[h][0] = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0x88)), 0xd8));
    acc[h][1] = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0xdd)), 0xd8));
  }
  for (int64_t j = 0; j < nb; ++j) {
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(keys.rows[j] + i0));
    WeighKey<NH>(st + j * ldst, WordLow(w), WordHigh(w), acc);
  }
#pragma GCC unroll 6
  for (int h = 0; h < NH; ++h) {
    // (e0 o0 e1 o1 | e4 o4 e5 o5) and (e2 o2 e3 o3 | e6 o6 e7 o7) → columns 0-7 and 8-15.
    const __m256 lo = _mm256_unpacklo_ps(acc[h][0], acc[h][1]), hi = _mm256_unpackhi_ps(acc[h][0], acc[h][1]);
    _mm256_storeu_ps(out + h * R + i0, _mm256_permute2f128_ps(lo, hi, 0x20));
    _mm256_storeu_ps(out + h * R + i0 + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
  }
}

template <int NH, typename Keys>
MOERUN_AVX2 void AccumulateHeads(const float* st, int64_t ldst, const Keys& keys, int64_t nb, int64_t i0, int64_t R,
                                 float* out) {
  if constexpr (kBf16Keys<Keys>) {
    AccumulateBf16<NH>(st, ldst, keys, nb, i0, R, out);
  } else {
    (i0 + 16 <= R ? Accumulate<NH, true, Keys> : Accumulate<NH, false, Keys>)(st, ldst, keys, nb, i0, R, out);
  }
}

// o[i0, i0 + 64) += Σ_j p[j] v_j[i0, i0 + 64) for one head (v_j = v + j·dv), lanes past dv masked;
// the value rows rounded to bf16 with kRound.
// kFull: all 64 lanes inside dv (no masks).
template <bool kRound, bool kFull>
MOERUN_AVX2 void AccumulateValues(const float* st, int64_t ldst, const float* v, int64_t dv, int64_t nb, int64_t i0,
                                  float* o) {
  auto load = [&](const float* x, int k) MOERUN_AVX2 {
    return kFull ? _mm256_loadu_ps(x + 8 * k) : _mm256_maskload_ps(x + 8 * k, TailMask8(dv - i0 - 8 * k));
  };
  __m256 acc[8];
#pragma GCC unroll 8
  for (int k = 0; k < 8; ++k) acc[k] = load(o + i0, k);
  for (int64_t j = 0; j < nb; ++j) {
    const __m256 e = _mm256_broadcast_ss(st + j * ldst);
    const float* vj = v + j * dv + i0;
#pragma GCC unroll 8
    for (int k = 0; k < 8; ++k) {
      __m256 x = load(vj, k);
      if (kRound) x = RoundBf16x8(x);
      acc[k] = _mm256_fmadd_ps(e, x, acc[k]);
    }
  }
#pragma GCC unroll 8
  for (int k = 0; k < 8; ++k) Store8(o + i0 + 8 * k, kFull ? 8 : dv - i0 - 8 * k, acc[k]);
}

// The first byte of key j's cache row (pages: the token's page table), f32 or bf16.
const char* RowBytes(const LatentCacheView& cache, const int32_t* pages, int64_t j) {
  return cache.bf16() ? reinterpret_cast<const char*>(cache.RowBf16(pages, j))
                      : reinterpret_cast<const char*>(cache.Row(pages, j));
}

// Keys [j, j + nb) of the cache into the packed block pk (see kSlice): bf16 rows widened exactly
// (they are already the rounded values), f32 rows rounded to bf16. Slice by slice, so that the stores
// run through each slice's keys in order (row by row, 36 slices a row, it took ~14% longer in one
// profile).
MOERUN_AVX2 void PackBlock(const LatentCacheView& cache, const int32_t* pages, int64_t j, int64_t nb, float* pk) {
  const int64_t W = cache.row_width();
  const char* rows[kBlock];
  for (int64_t k = 0; k < nb; ++k) rows[k] = RowBytes(cache, pages, j + k);
  for (int64_t c0 = 0; c0 < W; c0 += 8) {
    float* dst = pk + (c0 / kSlice) * kSliceStride + c0 % kSlice;
    const bool whole = c0 + 8 <= W;
    for (int64_t k = 0; k < nb; ++k, dst += kSlice) {
      if (cache.bf16()) {
        const uint16_t* row = reinterpret_cast<const uint16_t*>(rows[k]) + c0;
        if (whole) {
          const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row));
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
        } else {
          for (int64_t c = 0; c < W - c0; ++c) dst[c] = Bf16ToF32(row[c]);
        }
        continue;
      }
      const float* row = reinterpret_cast<const float*>(rows[k]) + c0;
      if (whole) {
        _mm256_storeu_ps(dst, RoundBf16x8(_mm256_loadu_ps(row)));
      } else {
        for (int64_t c = 0; c < W - c0; ++c) dst[c] = RoundBf16(row[c]);
      }
    }
  }
}

// Prefetches the cache rows of keys [j, j + nb) into the cache in `calls` shares (Some), so that the
// next block's reads from memory overlap the current block's arithmetic. Into L2 (T1): the shares'
// prefetches stalled the issue (a profile's hottest instruction in Attend at 4096 keys), and T1 took
// 0.98 of T0's time there (no prefetch at all: 1.12; 8 layers, one thread, bf16 rows in place).
class Prefetcher {
 public:
  Prefetcher(const LatentCacheView& cache, const int32_t* pages, int64_t j, int64_t nb, int64_t calls)
      : cache_(cache), pages_(pages), j_(j), end_(j + std::max<int64_t>(nb, 0)),
        row_lines_((cache.row_width() * (cache.bf16() ? 2 : 4) + 63) / 64),
        per_call_((std::max<int64_t>(nb, 0) * row_lines_ + calls - 1) / std::max<int64_t>(calls, 1)) {
    if (j_ < end_) row_ = RowBytes(cache_, pages_, j_);
  }
  void Some() {
    for (int64_t i = 0; i < per_call_ && j_ < end_; ++i) {
      _mm_prefetch(row_ + line_ * 64, _MM_HINT_T1);
      if (++line_ == row_lines_) {
        line_ = 0;
        if (++j_ < end_) row_ = RowBytes(cache_, pages_, j_);
      }
    }
  }

 private:
  const LatentCacheView& cache_;
  const int32_t* pages_;
  int64_t j_, end_, row_lines_, per_call_, line_ = 0;
  const char* row_ = nullptr;
};

// Columns [c, c + 8) of 8 rows (rows[k] + c) as 8 vectors of the 8 rows' values: dst + 8·i holds
// column c + i; rounded to bf16 with kRound.
template <bool kRound>
MOERUN_AVX2 void Transpose8(const float* const* rows, int64_t c, float* dst) {
  __m256 r[8], u[8];
#pragma GCC unroll 8
  for (int k = 0; k < 8; ++k) r[k] = _mm256_loadu_ps(rows[k] + c);
#pragma GCC unroll 2
  for (int h = 0; h < 8; h += 4) {  // rows h..h+3: (r0[i] r1[i] r2[i] r3[i] | the same at i + 4)
    const __m256 lo01 = _mm256_unpacklo_ps(r[h], r[h + 1]), hi01 = _mm256_unpackhi_ps(r[h], r[h + 1]);
    const __m256 lo23 = _mm256_unpacklo_ps(r[h + 2], r[h + 3]), hi23 = _mm256_unpackhi_ps(r[h + 2], r[h + 3]);
    u[h] = _mm256_shuffle_ps(lo01, lo23, 0x44);      // columns 0 and 4
    u[h + 1] = _mm256_shuffle_ps(lo01, lo23, 0xee);  // 1 and 5
    u[h + 2] = _mm256_shuffle_ps(hi01, hi23, 0x44);  // 2 and 6
    u[h + 3] = _mm256_shuffle_ps(hi01, hi23, 0xee);  // 3 and 7
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    const __m256 lo = _mm256_permute2f128_ps(u[i], u[4 + i], 0x20), hi = _mm256_permute2f128_ps(u[i], u[4 + i], 0x31);
    _mm256_storeu_ps(dst + 8 * i, kRound ? RoundBf16x8(lo) : lo);
    _mm256_storeu_ps(dst + 8 * (i + 4), kRound ? RoundBf16x8(hi) : hi);
  }
}

// Token t's queries transposed per group of 8 heads into qt ([groups, W, 8]), zero past the last
// head; rounded to bf16 with kRound.
template <bool kRound>
MOERUN_AVX2 void TransposeQueries(const MlaAttentionArgs& a, int64_t t, float* qt) {
  const int64_t R = a.cache.kv_rank, P = a.cache.rope_dim, W = R + P, H = a.n_heads, groups = (H + 7) / 8;
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t n = std::min<int64_t>(8, H - g * 8);
    float* const dst = qt + g * W * 8;
    // Columns [c0, c0 + len) of qt from rows[k][0, len): whole groups of 8 heads 8 columns at a time.
    auto part = [&](const float* base, int64_t len, int64_t c0) MOERUN_AVX2 {
      const float* rows[8];
      for (int64_t k = 0; k < n; ++k) rows[k] = base + (t * H + g * 8 + k) * len;
      int64_t c = 0;
      if (n == 8)
        for (; c + 8 <= len; c += 8) Transpose8<kRound>(rows, c, dst + (c0 + c) * 8);
      for (; c < len; ++c) {
        alignas(32) float col[8] = {};
        for (int64_t k = 0; k < n; ++k) col[k] = rows[k][c];
        const __m256 v = _mm256_load_ps(col);
        _mm256_storeu_ps(dst + (c0 + c) * 8, kRound ? RoundBf16x8(v) : v);
      }
    };
    part(a.q_latent, R, 0);
    if (P > 0) part(a.q_rope, P, R);
  }
}

// How the kernels read a block's keys: f32 rows in place (exact f32 on an f32 cache), bf16 rows in
// place (bf16 precision on a bf16 cache of whole slices), else packed (see the Keys types).
enum class KeyForm { kPacked, kRows, kBf16Rows };
KeyForm FormOf(const LatentCacheView& cache, bool round) {
  if (!round && !cache.bf16()) return KeyForm::kRows;
  return round && Bf16InPlace(cache) ? KeyForm::kBf16Rows : KeyForm::kPacked;
}

// Keys [j, j + nb) of the page table `pages` made ready in sc for `form`; then fn(keys).
template <typename Fn>
MOERUN_AVX2 void WithBlock(Scratch& sc, KeyForm form, const LatentCacheView& cache, const int32_t* pages, int64_t j,
                           int64_t nb, Fn&& fn) {
  switch (form) {
    case KeyForm::kRows:
      for (int64_t k = 0; k < nb; ++k) sc.rows[k] = cache.Row(pages, j + k);
      fn(RowKeys{sc.rows.data()});
      break;
    case KeyForm::kBf16Rows:
      for (int64_t k = 0; k < nb; ++k) sc.rows16[k] = cache.RowBf16(pages, j + k);
      fn(Bf16Keys{sc.rows16.data()});
      break;
    case KeyForm::kPacked:
      PackBlock(cache, pages, j, nb, sc.block.data());
      fn(PackedKeys{sc.block.data()});
      break;
  }
}

// The scaled scores of the block's first nb keys for all head groups: st[j·ldst + h].
template <typename Keys>
MOERUN_AVX2 void ScoreAll(const float* qt, int64_t W, int64_t groups, const Keys& keys, int64_t nb, float scale,
                          float* st, int64_t ldst) {
  int64_t g = 0;
  for (; g + 2 <= groups; g += 2) ScoreBlock<2>(qt + g * W * 8, W, keys, nb, scale, st + g * 8, ldst);
  if (g < groups) ScoreBlock<1>(qt + g * W * 8, W, keys, nb, scale, st + g * 8, ldst);
}

// Online softmax over a block's nb scores (st[j·ldst + h]) per group of 8 heads: the running max,
// rescaling what out ([H, dout]) accumulated when it grows (rescale: not the first block), then the
// probabilities in place (rounded relative to the new max at bf16 precision) and the running sum.
template <bool kRound>
MOERUN_AVX2 void Softmax(float* st, int64_t ldst, int64_t nb, int64_t H, bool rescale, float* max, float* sum,
                         float* out, int64_t dout) {
  for (int64_t g = 0; g < (H + 7) / 8; ++g) {
    __m256 bmax = _mm256_set1_ps(-INFINITY);
    for (int64_t j = 0; j < nb; ++j) bmax = _mm256_max_ps(bmax, _mm256_loadu_ps(st + j * ldst + g * 8));
    const __m256 old_max = _mm256_loadu_ps(max + g * 8), new_max = _mm256_max_ps(old_max, bmax);
    __m256 s = _mm256_loadu_ps(sum + g * 8);
    const int grew = _mm256_movemask_ps(_mm256_cmp_ps(new_max, old_max, _CMP_GT_OQ));
    if (rescale && grew) {
      alignas(32) float alpha[8];
      const __m256 al = Exp8(_mm256_sub_ps(old_max, new_max));
      _mm256_store_ps(alpha, al);
      s = _mm256_mul_ps(s, al);
      for (int64_t h = g * 8; h < std::min(H, g * 8 + 8); ++h) {
        if (!((grew >> (h - g * 8)) & 1)) continue;
        const __m256 f = _mm256_set1_ps(alpha[h - g * 8]);
        float* o = out + h * dout;
        for (int64_t i = 0; i < dout; i += 8) Store8(o + i, dout - i, _mm256_mul_ps(f, Load8(o + i, dout - i)));
      }
    }
    // Four keys' exponentials at a time (Exp8N); the sum still adds them in key order.
    constexpr int kKeys = 4;
    int64_t j = 0;
    for (; j + kKeys <= nb; j += kKeys) {
      __m256 e[kKeys];
#pragma GCC unroll 4
      for (int k = 0; k < kKeys; ++k) e[k] = _mm256_sub_ps(_mm256_loadu_ps(st + (j + k) * ldst + g * 8), new_max);
      Exp8N<kKeys>(e);
#pragma GCC unroll 4
      for (int k = 0; k < kKeys; ++k) {
        if (kRound) e[k] = RoundBf16x8(e[k]);
        _mm256_storeu_ps(st + (j + k) * ldst + g * 8, e[k]);
        s = _mm256_add_ps(s, e[k]);
      }
    }
    for (; j < nb; ++j) {
      __m256 e = Exp8(_mm256_sub_ps(_mm256_loadu_ps(st + j * ldst + g * 8), new_max));
      if (kRound) e = RoundBf16x8(e);
      _mm256_storeu_ps(st + j * ldst + g * 8, e);
      s = _mm256_add_ps(s, e);
    }
    _mm256_storeu_ps(max + g * 8, new_max);
    _mm256_storeu_ps(sum + g * 8, s);
  }
}

// The latent path: keys [j0, j0 + n) of token t, all heads, into p (out [H, R], max, sum; blocks of
// kBlock keys).
template <bool kRound>
MOERUN_AVX2 void Attend(Scratch& sc, const MlaAttentionArgs& a, int64_t t, int64_t j0, int64_t n, const Partial& p) {
  const int64_t R = a.cache.kv_rank, W = R + a.cache.rope_dim, H = a.n_heads;
  const int64_t groups = (H + 7) / 8, ldst = groups * 8;
  TransposeQueries<kRound>(a, t, sc.qt.data());
  std::fill(p.out, p.out + H * R, 0.0f);
  std::fill(sc.max.begin(), sc.max.end(), -INFINITY);
  std::fill(sc.sum.begin(), sc.sum.end(), 0.0f);
  const int32_t* pages = a.token_pages[t];
  const KeyForm form = FormOf(a.cache, kRound);
  float* st = sc.st.data();
  for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
    const int64_t nb = std::min(kBlock, n - b0);
    WithBlock(sc, form, a.cache, pages, j0 + b0, nb, [&](const auto& keys) MOERUN_AVX2 {
      ScoreAll(sc.qt.data(), W, groups, keys, nb, a.scale, st, ldst);
      Softmax<kRound>(st, ldst, nb, H, b0 > 0, sc.max.data(), sc.sum.data(), p.out, R);
      // Latent slices outer, so that a slice of the block stays in L1 across the heads; meanwhile
      // the next block's rows are prefetched (unless f32 rows are read in place), a share before
      // each tile.
      Prefetcher next(a.cache, pages, j0 + b0 + nb, form == KeyForm::kRows ? 0 : std::min(kBlock, n - b0 - nb),
                      ((R + kSlice - 1) / kSlice) * ((H + kTileHeads - 1) / kTileHeads));
      for (int64_t i0 = 0; i0 < R; i0 += kSlice)
        for (int64_t h = 0; h < H; h += kTileHeads) {
          next.Some();
          switch (std::min<int64_t>(kTileHeads, H - h)) {
            case 1: AccumulateHeads<1>(st + h, ldst, keys, nb, i0, R, p.out + h * R); break;
            case 2: AccumulateHeads<2>(st + h, ldst, keys, nb, i0, R, p.out + h * R); break;
            case 3: AccumulateHeads<3>(st + h, ldst, keys, nb, i0, R, p.out + h * R); break;
            case 4: AccumulateHeads<4>(st + h, ldst, keys, nb, i0, R, p.out + h * R); break;
            case 5: AccumulateHeads<5>(st + h, ldst, keys, nb, i0, R, p.out + h * R); break;
            default: AccumulateHeads<kTileHeads>(st + h, ldst, keys, nb, i0, R, p.out + h * R); break;
          }
        }
    });
  }
  std::copy(sc.max.begin(), sc.max.begin() + H, p.max);
  std::copy(sc.sum.begin(), sc.sum.begin() + H, p.sum);
}

// o_t[i0, i0 + 16) += Σ_{j < nj} p_t[j·ldj] v_j[i0, i0 + 16) for NT tokens (one head; v_j = v + j·dv),
// lanes past dv masked (kFull: none), value rows rounded to bf16 with kRound: each value row read
// once for the NT tokens (per token they came from L3: a prompt's values outgrow L2). Line j of pf
// is prefetched with key j (see ValuesTokensSlices).
template <int NT, bool kRound, bool kFull>
MOERUN_AVX2 void AccumulateValuesTokens(const float* const* p, int64_t ldj, int64_t nj, const float* v, int64_t dv,
                                        int64_t i0, float* const* o, const char* pf) {
  auto load = [&](const float* x, int k) MOERUN_AVX2 {
    return kFull ? _mm256_loadu_ps(x + 8 * k) : Load8(x + 8 * k, dv - i0 - 8 * k);
  };
  __m256 acc[NT][2];
#pragma GCC unroll 6
  for (int t = 0; t < NT; ++t) {
    acc[t][0] = load(o[t] + i0, 0);
    acc[t][1] = load(o[t] + i0, 1);
  }
  for (int64_t j = 0; j < nj; ++j) {
    _mm_prefetch(pf + j * 64, _MM_HINT_T0);
    __m256 r0 = load(v + j * dv + i0, 0), r1 = load(v + j * dv + i0, 1);
    if (kRound) {
      r0 = RoundBf16x8(r0);
      r1 = RoundBf16x8(r1);
    }
#pragma GCC unroll 6
    for (int t = 0; t < NT; ++t) {
      const __m256 e = _mm256_broadcast_ss(p[t] + j * ldj);
      acc[t][0] = _mm256_fmadd_ps(e, r0, acc[t][0]);
      acc[t][1] = _mm256_fmadd_ps(e, r1, acc[t][1]);
    }
  }
#pragma GCC unroll 6
  for (int t = 0; t < NT; ++t) {
    Store8(o[t] + i0, kFull ? 8 : dv - i0, acc[t][0]);
    Store8(o[t] + i0 + 8, kFull ? 8 : dv - i0 - 8, acc[t][1]);
  }
}

// Tokens per register tile of the weighted sum (kRegisterTokens: 12 accumulators), and a kernel for 2
// to that many: [round values][16 lanes inside dv][tokens].
template <bool kRound, bool kFull>
constexpr std::array<ValuesTokensFn, kRegisterTokens + 1> kTokensRow = {
    nullptr,
    nullptr,
    AccumulateValuesTokens<2, kRound, kFull>,
    AccumulateValuesTokens<3, kRound, kFull>,
    AccumulateValuesTokens<4, kRound, kFull>,
    AccumulateValuesTokens<5, kRound, kFull>,
    AccumulateValuesTokens<6, kRound, kFull>};
constexpr std::array<ValuesTokensFn, kRegisterTokens + 1> kTokenKernels[2][2] = {
    {kTokensRow<false, false>, kTokensRow<false, true>}, {kTokensRow<true, false>, kTokensRow<true, true>}};
static_assert(kRegisterTokens == 6, "one kernel per token count");
static_assert(kValuesTileTokens >= kRegisterTokens, "a tile holds at least one register tile");

// The values path: tokens [t0, t0 + nt) of one sequence (shared pages and values), all heads, into
// a.out ([H, dv] each, normalised). Blocks of kValuesBlock keys from key 0 for every token: each
// token's scores, softmax and rounding are what it gets alone; then per head the keys that all the block's
// tokens see are weighed for all of them at once (AccumulateValuesTokens) and the rest per token,
// in key order, so every output has the same bits as the token alone. wide: the keys form's scores
// and the weighted sum on the AVX-512 kernels (avx512k; the same bits).
template <bool kRound>
MOERUN_AVX2 void AttendTokens(Scratch& sc, const MlaAttentionArgs& a, int64_t t0, int64_t nt, bool wide,
                              const KeyPairs* pairs) {
  const int64_t W = a.cache.kv_rank + a.cache.rope_dim, H = a.n_heads, dv = a.v_dim;
  const int64_t groups = (H + 7) / 8, ldst = groups * 8, ldj = nt * ldst, qstride = groups * W * 8;
  const bool keys_form = a.keys != nullptr;
  int64_t n = 0;
  for (int64_t k = 0; k < nt; ++k) {
    n = std::max<int64_t>(n, a.n_keys[t0 + k]);
    if (!keys_form) TransposeQueries<kRound>(a, t0 + k, sc.qt.data() + k * qstride);
  }
  const KeysIsa isa = pairs ? KeysIsa::kDpBf16 : wide ? KeysIsa::kAvx512 : KeysIsa::kAvx2;
  if (keys_form) TransposeKeyQueries(a, t0, nt, kRound, sc.qk.data());
  if (keys_form && isa == KeysIsa::kDpBf16) avx512k::PairQueries(sc.qk.data(), H, a.k_dim + a.cache.rope_dim);
  std::fill(a.out + t0 * H * dv, a.out + (t0 + nt) * H * dv, 0.0f);
  std::fill(sc.max.begin(), sc.max.end(), -INFINITY);
  std::fill(sc.sum.begin(), sc.sum.end(), 0.0f);
  const KeyForm form = FormOf(a.cache, kRound);
  const bool round_values = kRound && !a.values_bf16_exact;
  const float* values = a.values[t0];
  for (int64_t b0 = 0; b0 < n; b0 += kValuesBlock) {
    const int64_t nb = std::min(kValuesBlock, n - b0);
    int64_t seen[kValuesTileTokens];  // keys of the block that token k sees
    int64_t active[kValuesTileTokens], n_active = 0, common = nb;
    // Each token's scores of the block (score(k, st): absorbed, per token; the keys form has them for
    // all tokens already), then its online softmax.
    auto softmax_tokens = [&](auto&& score) MOERUN_AVX2 {
      for (int64_t k = 0; k < nt; ++k) {
        seen[k] = std::clamp<int64_t>(a.n_keys[t0 + k] - b0, 0, nb);
        if (seen[k] == 0) continue;
        active[n_active++] = k;
        common = std::min(common, seen[k]);
        float* st = sc.st.data() + k * ldst;
        score(k, st);
        Softmax<kRound>(st, ldj, seen[k], H, b0 > 0, sc.max.data() + k * ldst, sc.sum.data() + k * ldst,
                        a.out + (t0 + k) * H * dv, dv);
      }
    };
    if (keys_form) {
      ScoreKeysBlock(a, sc.qk.data(), nt, a.token_pages[t0], a.keys[t0], b0, nb, kRound, isa,
                     pairs ? pairs->base[t0] + b0 * (a.k_dim + a.cache.rope_dim) / 2 : nullptr,
                     pairs ? pairs->keys[t0] : 0, sc.kr.data(), sc.sh.data(), sc.st.data(), ldst, ldj);
      softmax_tokens([](int64_t, float*) {});
    } else {
      WithBlock(sc, form, a.cache, a.token_pages[t0], b0, nb, [&](const auto& keys) MOERUN_AVX2 {
        softmax_tokens([&](int64_t k, float* st) MOERUN_AVX2 {
          ScoreAll(sc.qt.data() + k * qstride, W, groups, keys, seen[k], a.scale, st, ldj);
        });
      });
    }
    if (n_active == 0) continue;
    // The keys all of them see, together; one token alone takes the 64-wide kernel for all.
    const int64_t together = n_active > 1 ? common : 0;
    // Register tiles of 2 to kRegisterTokens tokens, as even as may be: per 16-wide slice of dv, each
    // of them against the slice of the head's rows of the block, which the first reads from memory
    // and the others from L1. (With one register tile per tile, every 6 tokens read all heads' values
    // from memory, 32 MiB at 4k keys: that sum ran at ~22% of the FMA peak where the scores ran at
    // ~80%.) Meanwhile the first prefetches the next head's rows of the block (this head's again for
    // the last), a share of `together` lines per slice: the slices read each row 64 bytes at a time,
    // 4·dv bytes apart, and without the prefetch the tile's time went to waiting on those loads.
    const int64_t n_groups = (n_active + kRegisterTokens - 1) / kRegisterTokens;
    int64_t group_end[kValuesTileTokens];
    for (int64_t gi = 0, i0 = 0; gi < n_groups; ++gi) i0 = group_end[gi] = i0 + (n_active - i0) / (n_groups - gi);
    const int64_t lines = (together * dv * static_cast<int64_t>(sizeof(float)) + 63) / 64;
    for (int64_t h = 0; h < H; ++h) {
      const float* v = values + h * a.v_head_stride + b0 * dv;
      const char* next = reinterpret_cast<const char*>(h + 1 < H ? v + a.v_head_stride : v);
      // The head's probabilities gathered, ph[j·n_active + i]: read in place, a key's row of st for
      // 24 tokens is 1.5 KiB and the block's (96 KiB) left L1 between heads.
      float* ph = sc.ph.data();
      const float* p[kValuesTileTokens];
      float* o[kValuesTileTokens];
      for (int64_t i = 0; i < n_active; ++i) {
        const float* src = sc.st.data() + active[i] * ldst + h;
        for (int64_t j = 0; j < seen[active[i]]; ++j) ph[j * n_active + i] = src[j * ldj];
        p[i] = ph + i;
        o[i] = a.out + ((t0 + active[i]) * H + h) * dv;
      }
      for (int64_t c0 = 0, sl = 0; together > 0 && c0 < dv; c0 += 16, ++sl) {
        const char* pf = next + ((sl + 1) * together <= lines ? sl * together * 64 : 0);
        const bool full = c0 + 16 <= dv;
        for (int64_t gi = 0, i0 = 0; gi < n_groups; i0 = group_end[gi++]) {
          const int64_t m = group_end[gi] - i0;
          const ValuesTokensFn kernel = wide ? avx512k::ValuesTokensKernel(m, round_values, full)
                                             : kTokenKernels[round_values][full][m];
          kernel(p + i0, n_active, together, v, dv, c0, o + i0, gi == 0 ? pf : reinterpret_cast<const char*>(v + c0));
        }
      }
      for (int64_t i = 0; i < n_active; ++i) {
        const int64_t rest = seen[active[i]] - together;
        if (rest <= 0) continue;
        for (int64_t c0 = 0; c0 < dv; c0 += 64) {
          const bool full = c0 + 64 <= dv;
          (round_values ? (full ? AccumulateValues<true, true> : AccumulateValues<true, false>)
                        : (full ? AccumulateValues<false, true> : AccumulateValues<false, false>))(
              p[i] + together * n_active, n_active, v + together * dv, dv, rest, c0, o[i]);
        }
      }
    }
  }
  for (int64_t k = 0; k < nt; ++k)
    for (int64_t h = 0; h < H; ++h) {
      const float s = sc.sum[k * ldst + h];
      const __m256 inv = _mm256_set1_ps(s > 0.0f ? 1.0f / s : 0.0f);  // no keys: zero, not 0/0
      float* o = a.out + ((t0 + k) * H + h) * dv;
      for (int64_t i = 0; i < dv; i += 8) Store8(o + i, dv - i, _mm256_mul_ps(inv, Load8(o + i, dv - i)));
    }
}

#undef MOERUN_AVX2

// Scratch for nt tokens of H heads and rows of W; false (logged) when it could not be allocated.
bool Prepare(Scratch& sc, int64_t H, int64_t W, int64_t n, int64_t nt) {
  const int64_t ldst = (H + 7) / 8 * 8;
  try {
    sc.qt.resize(static_cast<size_t>(nt * ldst * W));
    sc.block.resize(static_cast<size_t>((W + kSlice - 1) / kSlice * kSliceStride));
    sc.rows.resize(static_cast<size_t>(kBlock));
    sc.rows16.resize(static_cast<size_t>(kBlock));
    sc.st.resize(static_cast<size_t>(kBlock * nt * ldst));
    sc.max.resize(static_cast<size_t>(nt * ldst));
    sc.sum.resize(static_cast<size_t>(nt * ldst));
    sc.ph.resize(static_cast<size_t>(kValuesBlock * nt));
  } catch (const std::exception&) {
    LogScratchFailure("cpu backend: MlaAttention", n);
    return false;
  }
  return true;
}

thread_local Scratch tls_scratch;

}  // namespace

bool AttendLatent(const MlaAttentionArgs& a, int64_t t, int64_t j0, int64_t j1, bool round, const Partial& p) {
  if (!Prepare(tls_scratch, a.n_heads, a.cache.kv_rank + a.cache.rope_dim, j1 - j0, 1)) return false;
  (round ? Attend<true> : Attend<false>)(tls_scratch, a, t, j0, j1 - j0, p);
  return true;
}

bool AttendValues(const MlaAttentionArgs& a, int64_t t0, int64_t nt, bool round, bool wide, const KeyPairs* pairs) {
  if (nt < 1 || nt > kValuesTileTokens || (pairs && !(a.keys && wide && avx512k::DpScores(a, round)))) return false;
  int64_t n = 0;
  for (int64_t k = 0; k < nt; ++k) n = std::max<int64_t>(n, a.n_keys[t0 + k]);
  if (!Prepare(tls_scratch, a.n_heads, a.cache.kv_rank + a.cache.rope_dim, n, nt)) return false;
  if (a.keys) {
    try {
      tls_scratch.qk.resize(static_cast<size_t>(a.n_heads * (a.k_dim + a.cache.rope_dim) * kKeyLanes));
      tls_scratch.kr.resize(static_cast<size_t>(kValuesBlock * a.cache.rope_dim));
      tls_scratch.sh.resize(static_cast<size_t>(a.n_heads * kValuesBlock * kKeyLanes));
    } catch (const std::exception&) {
      LogScratchFailure("cpu backend: MlaAttention", n);
      return false;
    }
  }
  (round ? AttendTokens<true> : AttendTokens<false>)(tls_scratch, a, t0, nt, wide, pairs);
  return true;
}

}  // namespace moerun::cpu::mla::avx2
