// AVX-512F forms of the keys form's three kernels (MlaAttentionArgs::keys, prefill): the expansion of
// the keys (ExpandKeysRows), the scores' register tiles of ScoreKeysBlock and the weighted sum of the
// value rows of the values tile (AccumulateValuesTokens of mla_attention_avx2.cc). Each lane of each
// kernel is the same chain of fused multiply-adds, in the same order, as in the AVX2 kernel it
// replaces, so the results are the same bits; only more lanes go per instruction:
//   expansion: register tiles of kExpandRows keys × 32 columns (two zmm) instead of × 16 (two ymm);
//   scores: a column of the transposed queries is one zmm (tokens 0-15) and, past 16 tokens, one ymm
//     (16-23), instead of one to three ymm;
//   values: a 16-column slice of a value row is one zmm instead of two ymm.
// The driver, softmax and scratch stay the AVX2 kernel's. Compiled for the baseline ISA with the
// kernels marked target("avx512f,avx512vl,fma"); call only when CpuFeatures::avx512 (AVX-512F, VL).
#include "backends/cpu/mla_attention_impl.h"  // first: it includes simd_avx512.h

#include <cmath>

namespace moerun::cpu::mla::avx512k {
namespace {

#define MOERUN_AVX512 __attribute__((target("avx512f,avx512vl,fma")))

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
#pragma GCC unroll 2
    for (int z = 0; z < NZ; ++z) acc[i][z] = _mm512_setzero_ps();
  for (int64_t r = 0; r < R; ++r) {
    __m512 uz[NZ];
#pragma GCC unroll 2
    for (int z = 0; z < NZ; ++z) uz[z] = _mm512_loadu_ps(u + r * dk + d0 + 16 * z);
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      const __m512 b = _mm512_set1_ps(lat[i * ldl + r]);
#pragma GCC unroll 2
      for (int z = 0; z < NZ; ++z) acc[i][z] = _mm512_fmadd_ps(b, uz[z], acc[i][z]);
    }
  }
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 2
    for (int z = 0; z < NZ; ++z) _mm512_storeu_ps(out + i * ldo + d0 + 16 * z, acc[i][z]);
}

using ExpandFn = void (*)(const float*, int64_t, const float*, int64_t, int64_t, int64_t, float*, int64_t);
template <int NZ>
constexpr ExpandFn kExpand[avx2::kExpandRows + 1] = {nullptr,           ExpandTile<1, NZ>, ExpandTile<2, NZ>,
                                                     ExpandTile<3, NZ>, ExpandTile<4, NZ>, ExpandTile<5, NZ>,
                                                     ExpandTile<6, NZ>};
static_assert(avx2::kExpandRows == 6, "one kernel per row count");

// ---- Scores ----

// out[j·kLanes + lane] = Σ_c q[c·kLanes + lane] · key_j[c] for the lanes of one zmm (and with kY the
// ymm after it) and NK keys: the k_dim columns of the expanded keys (k + j·dk, rounded to bf16 with
// kRoundK), then the rope_dim columns of the rope keys (kr + j·dr), one loop over both parts (as the
// AVX2 tile, whose comment says why).
template <bool kY, int NK, bool kRoundK>
MOERUN_AVX512 void ScoreTile(const float* q, const float* k, int64_t dk, const float* kr, int64_t dr, float* out) {
  __m512 az[NK];
  __m256 ay[kY ? NK : 1];
#pragma GCC unroll 12
  for (int j = 0; j < NK; ++j) {
    az[j] = _mm512_setzero_ps();
    if constexpr (kY) ay[j] = _mm256_setzero_ps();
  }
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
#pragma GCC unroll 12
  for (int j = 0; j < NK; ++j) {
    _mm512_storeu_ps(out + j * kLanes, az[j]);
    if constexpr (kY) _mm256_storeu_ps(out + j * kLanes + 16, ay[j]);
  }
}

// Keys per register tile: 12 accumulators for 9-16 tokens, 20 for 17-24.
constexpr int kKeys16 = 12, kKeys24 = 10;
constexpr avx2::ScoreTileFn kWide[2][2] = {{ScoreTile<false, kKeys16, false>, ScoreTile<true, kKeys24, false>},
                                           {ScoreTile<false, kKeys16, true>, ScoreTile<true, kKeys24, true>}};
constexpr avx2::ScoreTileFn kOne[2][2] = {{ScoreTile<false, 1, false>, ScoreTile<true, 1, false>},
                                          {ScoreTile<false, 1, true>, ScoreTile<true, 1, true>}};

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
  const int64_t pairs = dk / 32 * 32, full = dk / 16 * 16;
  for (int64_t j0 = 0; j0 < rows; j0 += avx2::kExpandRows) {
    const int64_t mr = rows - j0 < avx2::kExpandRows ? rows - j0 : avx2::kExpandRows;
    for (int64_t d0 = 0; d0 < pairs; d0 += 32) kExpand<2>[mr](lat + j0 * ldl, ldl, u, R, dk, d0, out + j0 * dk, dk);
    if (full > pairs) kExpand<1>[mr](lat + j0 * ldl, ldl, u, R, dk, pairs, out + j0 * dk, dk);
    avx2::ExpandKeysTail(u, R, dk, full, lat + j0 * ldl, ldl, mr, out + j0 * dk);
  }
}

avx2::ScoreTiles ScoreKeysTiles(int64_t nt, bool round_k) {
  const int y = nt > 16 ? 1 : 0;
  return {y ? kKeys24 : kKeys16, kWide[round_k][y], kOne[round_k][y]};
}

avx2::ValuesTokensFn ValuesTokensKernel(int64_t nt, bool round, bool full) {
  return round ? (full ? TokensKernel<true, true>(nt) : TokensKernel<true, false>(nt))
               : (full ? TokensKernel<false, true>(nt) : TokensKernel<false, false>(nt));
}

#undef MOERUN_AVX512

}  // namespace moerun::cpu::mla::avx512k
