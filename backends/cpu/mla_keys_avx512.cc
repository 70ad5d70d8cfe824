// AVX-512F forms of the keys form's three kernels (MlaAttentionArgs::keys, prefill): the expansion of
// the keys (ExpandKeysRows), the scores' register tiles of ScoreKeysBlock and the weighted sum of the
// value rows of the values tile (AccumulateValuesTokens of mla_attention_avx2.cc). Each lane of each
// kernel is the same chain of fused multiply-adds, in the same order, as in the AVX2 kernel it
// replaces, so the results are the same bits; only more lanes go per instruction:
//   expansion: register tiles of kExpandRows keys × 64 columns (four zmm: 24 accumulators, ten loads
//     per 24 products; with two zmm, eight per 12, the expansion took 1.2x the samples in a 512-token
//     prompt), then 32 and 16, instead of × 16 (two ymm);
//   scores: a column of the transposed queries is one zmm (tokens 0-15) and, past 16 tokens, one ymm
//     (16-23), instead of one to three ymm;
//   values: a 16-column slice of a value row is one zmm instead of two ymm.
// At bf16 precision with AVX512_BF16 the scores go on vdpbf16ps instead (ScoreHeadsDp): two products per
// lane and instruction, the queries and keys as bf16 pairs with column c in the high half and c + 1 in
// the low one. vdpbf16ps adds the high pair's product, rounds, then the low one's and rounds (measured
// on the Zen 5 host: every one of 3.2M random lanes equals those two fused multiply-adds), and a
// product of two bf16 numbers is exact in f32, so each lane is again the chain over c in order: the
// same bits, except that vdpbf16ps flushes subnormal inputs and results to zero (a product or partial
// sum below 1.2e-38, which the FMA chain keeps).
// The driver, softmax and scratch stay the AVX2 kernel's. Compiled for the baseline ISA with the
// kernels marked target("avx512f,avx512vl,fma") (and avx512bf16 for the pairs); call only when
// CpuFeatures::avx512 (AVX-512F, VL), ScoreHeadsDp only when q8::DetectSupport().avx512_bf16.
#include "backends/cpu/mla_attention_impl.h"  // first: it includes simd_avx512.h

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "backends/cpu/q8_kernels.h"

namespace moerun::cpu::mla::avx512k {
namespace {

#define MOERUN_AVX512 __attribute__((target("avx512f,avx512vl,fma")))
#define MOERUN_DPBF16 __attribute__((target("avx512f,avx512vl,avx512bf16,fma")))

constexpr int kLanes = static_cast<int>(avx2::kKeyLanes);
static_assert(kLanes > 16 && kLanes <= 24, "a column is one zmm and at most one ymm");

// ---- Expansion ----

// out[i·ldo + d0 + e] = Σ_r lat[i·ldl + r] · u[r·dk + d0 + e] for MR rows and 16·NZ columns.
template <int MR, int NZ>
MOERUN_AVX512 void ExpandTile(const float* lat, int64_t ldl, const float* u, int64_t R, int64_t dk, int64_t d0,
                              float* out, int64_t ldo) {
  __m512 acc[MR][NZ];
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int z = 0; z < NZ; ++z) acc[i][z] = _mm512_setzero_ps();
  for (int64_t r = 0; r < R; ++r) {
    __m512 uz[NZ];
#pragma GCC unroll 4
    for (int z = 0; z < NZ; ++z) uz[z] = _mm512_loadu_ps(u + r * dk + d0 + 16 * z);
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      const __m512 b = _mm512_set1_ps(lat[i * ldl + r]);
#pragma GCC unroll 4
      for (int z = 0; z < NZ; ++z) acc[i][z] = _mm512_fmadd_ps(b, uz[z], acc[i][z]);
    }
  }
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int z = 0; z < NZ; ++z) _mm512_storeu_ps(out + i * ldo + d0 + 16 * z, acc[i][z]);
}

using ExpandFn = void (*)(const float*, int64_t, const float*, int64_t, int64_t, int64_t, float*, int64_t);
template <int NZ>
constexpr ExpandFn kExpand[avx2::kExpandRows + 1] = {nullptr,           ExpandTile<1, NZ>, ExpandTile<2, NZ>,
                                                     ExpandTile<3, NZ>, ExpandTile<4, NZ>, ExpandTile<5, NZ>,
                                                     ExpandTile<6, NZ>};
static_assert(avx2::kExpandRows == 6, "one kernel per row count");

// ---- Scores ----

// A score tile's sums, zero to start: per key j, tokens 0-15 in z[j] and (kY) 16-23 in y[j].
template <bool kY, int NK>
struct ScoreSums {
  __m512 z[NK];
  __m256 y[kY ? NK : 1];
  MOERUN_AVX512 __attribute__((always_inline)) ScoreSums() {
#pragma GCC unroll 12
    for (int j = 0; j < NK; ++j) {
      z[j] = _mm512_setzero_ps();
      if constexpr (kY) y[j] = _mm256_setzero_ps();
    }
  }
  MOERUN_AVX512 __attribute__((always_inline)) void Store(float* out) const {
#pragma GCC unroll 12
    for (int j = 0; j < NK; ++j) {
      _mm512_storeu_ps(out + j * kLanes, z[j]);
      if constexpr (kY) _mm256_storeu_ps(out + j * kLanes + 16, y[j]);
    }
  }
};

// out[j·kLanes + lane] = Σ_c q[c·kLanes + lane] · key_j[c] for the lanes of one zmm (and with kY the
// ymm after it) and NK keys: the k_dim columns of the expanded keys (k + j·dk, rounded to bf16 with
// kRoundK), then the rope_dim columns of the rope keys (kr + j·dr), one loop over both parts (as the
// AVX2 tile, whose comment says why).
template <bool kY, int NK, bool kRoundK>
MOERUN_AVX512 void ScoreTile(const float* q, const float* k, int64_t dk, const float* kr, int64_t dr, float* out) {
  ScoreSums<kY, NK> acc;
  __m512(&az)[NK] = acc.z;
  auto& ay = acc.y;
  for (int part = 0; part < 2; ++part) {
    const float* key = part == 0 ? k : kr;
    const int64_t ld = part == 0 ? dk : dr;
    const bool round = kRoundK && part == 0;
    for (int64_t c = 0; c < ld; ++c, q += kLanes) {
      const __m512 qz = _mm512_loadu_ps(q);
      const __m256 qy = kY ? _mm256_loadu_ps(q + 16) : _mm256_setzero_ps();
#pragma GCC unroll 12
      for (int j = 0; j < NK; ++j) {
        __m512 b = _mm512_set1_ps(key[j * ld + c]);
        if (round) b = RoundBf16x16(b);
        az[j] = _mm512_fmadd_ps(qz, b, az[j]);
        if constexpr (kY) ay[j] = _mm256_fmadd_ps(qy, _mm512_castps512_ps256(b), ay[j]);
      }
    }
  }
  acc.Store(out);
}

// Keys per register tile: 12 accumulators for 9-16 tokens, 20 for 17-24.
constexpr int kKeys16 = 12, kKeys24 = 10;
constexpr avx2::ScoreTileFn kWide[2][2] = {{ScoreTile<false, kKeys16, false>, ScoreTile<true, kKeys24, false>},
                                           {ScoreTile<false, kKeys16, true>, ScoreTile<true, kKeys24, true>}};
constexpr avx2::ScoreTileFn kOne[2][2] = {{ScoreTile<false, 1, false>, ScoreTile<true, 1, false>},
                                          {ScoreTile<false, 1, true>, ScoreTile<true, 1, true>}};

// The same sums on vdpbf16ps: q2 the queries as pairs ([column pair][kLanes] words), kp the NK keys'
// pairs (key j's W2 words at kp + j·W2).
template <bool kY, int NK>
MOERUN_DPBF16 void ScoreTileDp(const uint32_t* q2, const uint32_t* kp, int64_t W2, float* out) {
  ScoreSums<kY, NK> acc;
  __m512(&az)[NK] = acc.z;
  auto& ay = acc.y;
  for (int64_t c = 0; c < W2; ++c, q2 += kLanes) {
    const __m512bh qz = (__m512bh)_mm512_loadu_si512(q2);
    const __m256bh qy = kY ? (__m256bh)_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q2 + 16))
                           : (__m256bh)_mm256_setzero_si256();
#pragma GCC unroll 12
    for (int j = 0; j < NK; ++j) {
      const __m512i b = _mm512_set1_epi32(static_cast<int>(kp[j * W2 + c]));
      az[j] = _mm512_dpbf16_ps(az[j], qz, (__m512bh)b);
      if constexpr (kY) ay[j] = _mm256_dpbf16_ps(ay[j], qy, (__m256bh)_mm512_castsi512_si256(b));
    }
  }
  acc.Store(out);
}

// Keys per register tile of ScoreTileDp (as kKeys16 and kKeys24).
using DpTileFn = void (*)(const uint32_t*, const uint32_t*, int64_t, float*);
constexpr DpTileFn kDpWide[2] = {ScoreTileDp<false, kKeys16>, ScoreTileDp<true, kKeys24>};
constexpr DpTileFn kDpOne[2] = {ScoreTileDp<false, 1>, ScoreTileDp<true, 1>};

// The bf16 bits of x (exact: x is a bf16 number) or, with kRound, of x rounded to bf16.
template <bool kRound>
MOERUN_AVX512 inline __m512i HighHalves(__m512 x) {
  return _mm512_srli_epi32(kRound ? RoundBf16Lanes(x) : _mm512_castps_si512(x), 16);
}

// kp[j·W2 + c/2] for the nb keys of one head: the pair (c, c + 1) of [K[j] (dk), k^R_j (dr)], c in the
// high half (dk and dr even), 16 pairs at a time from 32 columns of one part.
template <bool kRound>
MOERUN_AVX512 void PackKeyPairs(const float* k, int64_t dk, const float* kr, int64_t dr, int64_t nb, uint32_t* kp) {
  const int64_t W2 = (dk + dr) / 2;
  const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  for (int64_t j = 0; j < nb; ++j) {
    uint32_t* dst = kp + j * W2;
    for (int part = 0; part < 2; ++part) {
      const float* src = part == 0 ? k + j * dk : kr + j * dr;
      const int64_t n = part == 0 ? dk : dr;
      const bool round = kRound && part == 0;  // the rope keys are bf16 numbers already
      for (int64_t c = 0; c < n; c += 32) {
        const int64_t m = n - c < 32 ? n - c : 32;
        const __m512 a = _mm512_maskz_loadu_ps(TailMask(m), src + c);
        const __m512 b = m > 16 ? _mm512_maskz_loadu_ps(TailMask(m - 16), src + c + 16) : _mm512_setzero_ps();
        const __m512i ha = round ? HighHalves<true>(a) : HighHalves<false>(a);
        const __m512i hb = round ? HighHalves<true>(b) : HighHalves<false>(b);
        const __m512i first = _mm512_permutex2var_epi32(ha, even, hb), second = _mm512_permutex2var_epi32(ha, odd, hb);
        _mm512_mask_storeu_epi32(dst + c / 2, TailMask(m / 2), _mm512_or_si512(_mm512_slli_epi32(first, 16), second));
      }
      dst += n / 2;
    }
  }
}

// ---- Weighted sum of the value rows ----

// o_t[i0, i0 + 16) += Σ_{j < nj} p_t[j·ldj] v_j[i0, i0 + 16) for NT tokens (as the AVX2 kernel: value
// rows rounded to bf16 with kRound, lanes past dv neither read nor written unless kFull, line j of
// pf prefetched with key j).
template <int NT, bool kRound, bool kFull>
MOERUN_AVX512 void AccumulateValuesTokens(const float* const* p, int64_t ldj, int64_t nj, const float* v, int64_t dv,
                                          int64_t i0, float* const* o, const char* pf) {
  const __mmask16 m = kFull ? static_cast<__mmask16>(0xffff) : TailMask(dv - i0);
  __m512 acc[NT];
#pragma GCC unroll 6
  for (int t = 0; t < NT; ++t) acc[t] = kFull ? _mm512_loadu_ps(o[t] + i0) : _mm512_maskz_loadu_ps(m, o[t] + i0);
  for (int64_t j = 0; j < nj; ++j) {
    _mm_prefetch(pf + j * 64, _MM_HINT_T0);
    __m512 r = kFull ? _mm512_loadu_ps(v + j * dv + i0) : _mm512_maskz_loadu_ps(m, v + j * dv + i0);
    if (kRound) r = RoundBf16x16(r);
#pragma GCC unroll 6
    for (int t = 0; t < NT; ++t) acc[t] = _mm512_fmadd_ps(_mm512_set1_ps(p[t][j * ldj]), r, acc[t]);
  }
#pragma GCC unroll 6
  for (int t = 0; t < NT; ++t) {
    if (kFull) {
      _mm512_storeu_ps(o[t] + i0, acc[t]);
    } else {
      _mm512_mask_storeu_ps(o[t] + i0, m, acc[t]);
    }
  }
}

template <bool kRound, bool kFull>
avx2::ValuesTokensFn TokensKernel(int64_t nt) {
  static_assert(avx2::kRegisterTokens == 6, "one kernel per token count");
  switch (nt) {
    case 2: return AccumulateValuesTokens<2, kRound, kFull>;
    case 3: return AccumulateValuesTokens<3, kRound, kFull>;
    case 4: return AccumulateValuesTokens<4, kRound, kFull>;
    case 5: return AccumulateValuesTokens<5, kRound, kFull>;
    case 6: return AccumulateValuesTokens<6, kRound, kFull>;
    default: return nullptr;
  }
}

}  // namespace

MOERUN_AVX512 void ExpandKeysRows(const float* u, int64_t R, int64_t dk, const float* lat, int64_t ldl, int64_t rows,
                                  float* out) {
  const int64_t fours = dk / 64 * 64, pairs = dk / 32 * 32, full = dk / 16 * 16;
  for (int64_t j0 = 0; j0 < rows; j0 += avx2::kExpandRows) {
    const int64_t mr = rows - j0 < avx2::kExpandRows ? rows - j0 : avx2::kExpandRows;
    for (int64_t d0 = 0; d0 < fours; d0 += 64) kExpand<4>[mr](lat + j0 * ldl, ldl, u, R, dk, d0, out + j0 * dk, dk);
    for (int64_t d0 = fours; d0 < pairs; d0 += 32) kExpand<2>[mr](lat + j0 * ldl, ldl, u, R, dk, d0, out + j0 * dk, dk);
    if (full > pairs) kExpand<1>[mr](lat + j0 * ldl, ldl, u, R, dk, pairs, out + j0 * dk, dk);
    avx2::ExpandKeysTail(u, R, dk, full, lat + j0 * ldl, ldl, mr, out + j0 * dk);
  }
}

avx2::ScoreTiles ScoreKeysTiles(int64_t nt, bool round_k) {
  const int y = nt > 16 ? 1 : 0;
  return {y ? kKeys24 : kKeys16, kWide[round_k][y], kOne[round_k][y]};
}

bool DpScores(const MlaAttentionArgs& a, bool round) {
  return round && a.k_dim % 2 == 0 && a.cache.rope_dim % 2 == 0 && q8::DetectSupport().avx512_bf16;
}

MOERUN_AVX512 void PairQueries(float* qk, int64_t H, int64_t Wq) {
  static_assert(kLanes == 24, "a row of the transposed queries is one zmm and one ymm");
  uint32_t* q2 = reinterpret_cast<uint32_t*>(qk);
  for (int64_t r = 0; r < H * Wq / 2; ++r) {  // row r of the pairs from rows 2r and 2r + 1 (never ahead)
    const float* a = qk + 2 * r * kLanes;
    const float* b = a + kLanes;
    const __m512i lo = _mm512_or_si512(_mm512_slli_epi32(HighHalves<false>(_mm512_loadu_ps(a)), 16),
                                       HighHalves<false>(_mm512_loadu_ps(b)));
    const __m512i hi = _mm512_or_si512(_mm512_slli_epi32(HighHalves<false>(_mm512_maskz_loadu_ps(0xff, a + 16)), 16),
                                       HighHalves<false>(_mm512_maskz_loadu_ps(0xff, b + 16)));
    _mm512_storeu_si512(q2 + r * kLanes, lo);
    _mm512_mask_storeu_epi32(q2 + r * kLanes + 16, 0xff, hi);
  }
}

void PackKeyPairsOf(const MlaAttentionArgs& a, bool round_k, bool parallel, KeyPairs* p) {
  const int64_t T = a.n_tokens, H = a.n_heads, dk = a.k_dim, dr = a.cache.rope_dim, W2 = (dk + dr) / 2;
  // The sequences: tokens with the same keys and page table; each up to the most keys its tokens see.
  std::vector<int64_t> seq_of(static_cast<size_t>(T)), first, keys, offset;
  for (int64_t t = 0; t < T; ++t) {
    size_t s = 0;
    while (s < first.size() && (a.keys[first[s]] != a.keys[t] || a.token_pages[first[s]] != a.token_pages[t])) ++s;
    if (s == first.size()) {
      first.push_back(t);
      keys.push_back(0);
    }
    keys[s] = std::max<int64_t>(keys[s], a.n_keys[t]);
    seq_of[t] = static_cast<int64_t>(s);
  }
  int64_t words = 0;
  for (int64_t n : keys) {
    offset.push_back(words);
    words += H * n * W2;
  }
  p->words.resize(static_cast<size_t>(words));
  p->base.resize(static_cast<size_t>(T));
  p->keys.resize(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) {
    p->base[t] = p->words.data() + offset[seq_of[t]];
    p->keys[t] = keys[seq_of[t]];
  }
  // Items: blocks of kKeyBlock keys of one sequence, all heads (the block's rope keys read once).
  constexpr int64_t kBlock = amx::kKeyBlock;
  std::vector<int64_t> item_seq, item_b0;
  for (size_t s = 0; s < keys.size(); ++s)
    for (int64_t b0 = 0; b0 < keys[s]; b0 += kBlock) {
      item_seq.push_back(static_cast<int64_t>(s));
      item_b0.push_back(b0);
    }
  const int64_t items = static_cast<int64_t>(item_seq.size());
  std::vector<float> kr_all;
  kr_all.resize(static_cast<size_t>(omp_get_max_threads() * kBlock * dr));
#pragma omp parallel for schedule(dynamic, 1) if (parallel && items > 1)
  for (int64_t i = 0; i < items; ++i) {
    const int64_t s = item_seq[i], b0 = item_b0[i], t = first[s], n = keys[s];
    const int64_t nb = n - b0 < kBlock ? n - b0 : kBlock;
    float* kr = kr_all.data() + omp_get_thread_num() * kBlock * dr;
    avx2::RopeKeys(a.cache, a.token_pages[t], b0, nb, true, kr);
    for (int64_t h = 0; h < H; ++h)
      (round_k ? PackKeyPairs<true> : PackKeyPairs<false>)(a.keys[t] + h * a.k_head_stride + b0 * dk, dk, kr, dr,
                                                            nb, p->words.data() + offset[s] + (h * n + b0) * W2);
  }
}

void ScoreHeadsDp(const MlaAttentionArgs& a, const float* qk, int64_t nt, const uint32_t* kp, int64_t kp_keys,
                  int64_t nb, float* sh) {
  const int64_t H = a.n_heads, W2 = (a.k_dim + a.cache.rope_dim) / 2;
  const int y = nt > 16 ? 1 : 0, tile = y ? kKeys24 : kKeys16;
  const uint32_t* q2 = reinterpret_cast<const uint32_t*>(qk);
  for (int64_t h = 0; h < H; ++h) {
    const uint32_t* kh = kp + h * kp_keys * W2;
    float* out = sh + h * nb * kLanes;
    for (int64_t j0 = 0; j0 < nb;) {
      const int64_t n = nb - j0 >= tile ? tile : 1;
      (n == tile ? kDpWide[y] : kDpOne[y])(q2 + h * W2 * kLanes, kh + j0 * W2, W2, out + j0 * kLanes);
      j0 += n;
    }
  }
}

avx2::ValuesTokensFn ValuesTokensKernel(int64_t nt, bool round, bool full) {
  return round ? (full ? TokensKernel<true, true>(nt) : TokensKernel<true, false>(nt))
               : (full ? TokensKernel<false, true>(nt) : TokensKernel<false, false>(nt));
}

#undef MOERUN_AVX512
#undef MOERUN_DPBF16

}  // namespace moerun::cpu::mla::avx512k
