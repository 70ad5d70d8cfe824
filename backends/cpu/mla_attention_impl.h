// Pieces shared by the CPU backend's MLA attention files: mla_attention.cc (the latent path, decode
// and long-context chunks), mla_values.cc (the values path of prefill), and their AMX-BF16 forms for
// bf16 precision (mla_latent_amx.cc, mla_values_amx.cc).
#pragma once

#include "backends/cpu/simd_avx512.h"  // first: see there

#include <atomic>
#include <cstdint>
#include <vector>

#include "backends/backend.h"

namespace moerun::cpu::mla {

inline __mmask16 TailMask(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << n) - 1u);
}

__attribute__((target("avx512f"), always_inline)) inline __m512 UnpackLoPd(__m512 a, __m512 b) {
  return _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
}
__attribute__((target("avx512f"), always_inline)) inline __m512 UnpackHiPd(__m512 a, __m512 b) {
  return _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
}

// dst[c·16 + i] = src[i·lds + c] for i, c < 16: a 16 x 16 transpose in registers.
__attribute__((target("avx512f"))) inline void Transpose16x16(const float* src, int64_t lds, float* dst) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * lds);
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = UnpackLoPd(t[i], t[i + 2]);
    r[i + 1] = UnpackHiPd(t[i], t[i + 2]);
    r[i + 2] = UnpackLoPd(t[i + 1], t[i + 3]);
    r[i + 3] = UnpackHiPd(t[i + 1], t[i + 3]);
  }
  for (int i = 0; i < 16; i += 8)
    for (int k = 0; k < 4; ++k) {
      t[i + k] = _mm512_shuffle_f32x4(r[i + k], r[i + 4 + k], 0x88);
      t[i + 4 + k] = _mm512_shuffle_f32x4(r[i + k], r[i + 4 + k], 0xdd);
    }
  for (int k = 0; k < 8; ++k) {
    r[k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0x88);
    r[8 + k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0xdd);
  }
  for (int i = 0; i < 16; ++i) _mm512_storeu_ps(dst + i * 16, r[i]);
}

// qt[g, c, h % 16] = (c < R ? q_latent[h, c] : q_rope[h, c - R]) for the heads h of group g,
// zero past the last head.
__attribute__((target("avx512f,fma"))) inline void TransposeQueries(const float* ql, const float* qr, int64_t H, int64_t R,
                                                              int64_t P, float* qt) {
  const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  const __m512i idx_l = _mm512_mullo_epi32(lane, _mm512_set1_epi32(static_cast<int>(R)));
  const __m512i idx_r = _mm512_mullo_epi32(lane, _mm512_set1_epi32(static_cast<int>(P)));
  for (int64_t g0 = 0; g0 < H; g0 += 16) {
    const __mmask16 m = TailMask(H - g0);
    const bool full = H - g0 >= 16;  // whole 16 x 16 blocks transposed in registers
    const float* l = ql + g0 * R;
    int64_t c = 0;
    for (; full && c + 16 <= R; c += 16, qt += 256) Transpose16x16(l + c, R, qt);
    for (; c < R; ++c, qt += 16)
      _mm512_storeu_ps(qt, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx_l, l + c, 4));
    const float* r = qr + g0 * P;
    for (c = 0; full && c + 16 <= P; c += 16, qt += 256) Transpose16x16(r + c, P, qt);
    for (; c < P; ++c, qt += 16)
      _mm512_storeu_ps(qt, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx_r, r + c, 4));
  }
}

// Where a pass over one span of a token's keys leaves its result (the latent path): out[h] =
// Σ_j e^(s_hj − max_h) ĉ_j, not yet divided by sum[h] = Σ_j e^(s_hj − max_h), so that the spans of
// one token can be merged.
struct Partial {
  float* out;  // [heads, kv_rank]
  float* max;  // [heads]
  float* sum;  // [heads]
};

// Rate limit of the attention's error log lines (all its files).
inline std::atomic<int> g_log_budget{20};

// Logs (rate-limited) that `what` could not allocate its scratch for `keys` keys. Called inside
// parallel regions, so it never throws: a message that cannot be built is dropped. Defined in
// mla_attention.cc, built without the AMX files' -m flags (so no string code is compiled with them).
void LogScratchFailure(const char* what, int64_t keys) noexcept;
// The same for any message.
void LogError(const char* message) noexcept;

// x rounded to bf16 and back (nearest even; NaN stays NaN). For the generic translation units only.
inline float RoundBf16(float x) { return Bf16ToF32(F32ToBf16(x)); }

// The values path (MlaAttentionArgs::values): out [T, H, v_dim]. Throws std::bad_alloc when scratch
// could not be allocated, after its parallel region. avx: the AVX-512 tile kernel, else avx2: the
// AVX2 kernel, else the scalar one. round (bf16 precision; the AVX2 and scalar kernels): queries,
// keys, values and probabilities rounded to bf16 as the AMX kernels and the reference backend do.
// wide (with avx2): the keys form's AVX-512 kernels (avx512k); only where CpuFeatures::avx512.
void AttendValues(const MlaAttentionArgs& a, bool avx, bool avx2, bool wide, bool round, bool parallel);

// The keys form's keys as bf16 pairs for the scores on vdpbf16ps (avx512k::PackKeyPairsOf), made once
// per call for all of its tiles: token t's sequence has head h's key j at base[t] + (h·keys[t] + j)·
// (k_dim + rope_dim)/2 words, the pair (c, c + 1) of [K[j, h], k^R_j] with c in the high half.
struct KeyPairs {
  std::vector<uint32_t> words;
  std::vector<const uint32_t*> base;  // [n_tokens]
  std::vector<int64_t> keys;          // [n_tokens]
};

namespace avx2 {
// The latent path on AVX2 + FMA (mla_attention_avx2.cc), for CPUs without AVX-512 and for bf16
// precision without AMX-BF16: keys [j0, j1) of
// token t, all heads, into p (not normalised). round (bf16 precision): queries, key rows and the
// probabilities rounded to bf16 exactly as amx::AttendLatent rounds them (blocks of kLatentKeyBlock
// keys from j0); without round the exact softmax in f32.
// False when scratch could not be allocated (logged). Call only when q8::DetectSupport().avx2.
bool AttendLatent(const MlaAttentionArgs& a, int64_t t, int64_t j0, int64_t j1, bool round, const Partial& p);
// The values path there: tokens [t0, t0 + nt) of one sequence (1 <= nt <= kValuesTileTokens), all
// heads, into a.out (normalised); each token gets the same bits as alone (nt = 1). round: as on
// AMX-BF16 (amx::AttendValues: blocks of kKeyBlock keys). False when scratch could not be allocated
// (logged) or nt is out of range. 24 tokens: every tile reads all heads' values once (32 MiB at 4k
// keys of V2-Lite); 512 tokens at 4096 keys took 0.85x the time of tiles of 6 (2 threads; tiles of
// 12 took 5-8% longer than 24, and 48 no less; AMD EPYC test host).
inline constexpr int64_t kValuesTileTokens = 24;
// wide: the keys form's AVX-512 kernels (avx512k below; the same bits), its scores on vdpbf16ps where
// pairs is given (avx512k::PackKeyPairsOf; only at bf16 precision). Call with wide only when
// CpuFeatures::avx512.
bool AttendValues(const MlaAttentionArgs& a, int64_t t0, int64_t nt, bool round, bool wide,
                  const KeyPairs* pairs = nullptr);
// The weighted sum's register tiles: o_t[i0, i0 + 16) += Σ_{j < nj} p_t[j·ldj] v_j[i0, i0 + 16) for 2 to
// kRegisterTokens tokens t (p[t], o[t]) of one head (v_j = v + j·dv); line j of pf prefetched with key j.
inline constexpr int64_t kRegisterTokens = 6;
using ValuesTokensFn = void (*)(const float* const* p, int64_t ldj, int64_t nj, const float* v, int64_t dv,
                                int64_t i0, float* const* o, const char* pf);

// The keys form's scores (MlaAttentionArgs::keys; mla_keys_avx2.cc), for the values path above.
// Tokens per column of the transposed queries.
inline constexpr int64_t kKeyLanes = 24;
// The queries of tokens [t0, t0 + nt) (nt <= kValuesTileTokens) transposed per head, no-rope columns
// then rope ones: qk[(h·(k_dim + rope_dim) + c)·kKeyLanes + k], zero for k >= nt (n_heads·(k_dim +
// rope_dim)·kKeyLanes floats); rounded to bf16 with round.
void TransposeKeyQueries(const MlaAttentionArgs& a, int64_t t0, int64_t nt, bool round, float* qk);
// The scaled scores of keys [b0, b0 + nb) (nb <= kValuesBlock of mla_attention_avx2.cc) for those nt
// tokens and every head, st[j·ldj + k·ldst + h] (ldst a multiple of 8; lanes from n_heads on get
// zeros): keys = the tokens' expanded keys (a.keys[t0]), pages their page table, kr scratch for
// nb·rope_dim floats, sh for n_heads·nb·kKeyLanes. With round, K is rounded to bf16 (unless
// keys_bf16_exact) and so are an f32 cache's rope keys (a bf16 cache's are bf16 already). A token's
// scores are the same bits in any tile.
// isa: the AVX2 register tiles, the AVX-512 ones where nt > 8, or avx512k::ScoreHeadsDp on the tokens'
// key pairs kp (head h's key j at kp + (h·kp_keys + j)·(k_dim + rope_dim)/2) with qk paired
// (avx512k::PairQueries); the same bits (see there).
enum class KeysIsa { kAvx2, kAvx512, kDpBf16 };
void ScoreKeysBlock(const MlaAttentionArgs& a, const float* qk, int64_t nt, const int32_t* pages, const float* keys,
                    int64_t b0, int64_t nb, bool round, KeysIsa isa, const uint32_t* kp, int64_t kp_keys, float* kr,
                    float* sh, float* st, int64_t ldst, int64_t ldj);
// A register tile of the scores: out[j·kKeyLanes + lane] for its lanes (tokens) and keys j, from the
// transposed queries q, the expanded keys k (+ j·dk) and the rope keys kr (+ j·dr); `wide` for `keys`
// keys at a time, `one` for one.
using ScoreTileFn = void (*)(const float* q, const float* k, int64_t dk, const float* kr, int64_t dr, float* out);
struct ScoreTiles {
  int keys;
  ScoreTileFn wide, one;
};
// The rope keys of keys [b0, b0 + nb) as f32 rows kr[j·rope_dim + c]: a bf16 cache's exactly, an f32
// cache's rounded to bf16 with round.
void RopeKeys(const LatentCacheView& cache, const int32_t* pages, int64_t b0, int64_t nb, bool round, float* kr);
// Backend::ExpandKeys for one head and `rows` keys: out[j·dk + d] = Σ_r lat[j·ldl + r] · u[r·dk + d],
// u the head's dequantised W_UKᵀ [R, dk]; register tiles of kExpandRows keys × 16 columns, each lane
// one chain of FMAs over r in order (the default's bits).
inline constexpr int64_t kExpandRows = 6;
void ExpandKeysRows(const float* u, int64_t R, int64_t dk, const float* lat, int64_t ldl, int64_t rows, float* out);
// Its columns [d0, dk) one lane at a time (the same chains), for the columns past the last whole vector.
void ExpandKeysTail(const float* u, int64_t R, int64_t dk, int64_t d0, const float* lat, int64_t ldl, int64_t rows,
                    float* out);
}  // namespace avx2

// The keys form's kernels on AVX-512F + VL (mla_keys_avx512.cc): each lane the same chain of FMAs as
// in the AVX2 kernel, so the same bits, with zmm registers. Call only when CpuFeatures::avx512.
namespace avx512k {
// As avx2::ExpandKeysRows (tiles of kExpandRows keys × 32 columns).
void ExpandKeysRows(const float* u, int64_t R, int64_t dk, const float* lat, int64_t ldl, int64_t rows, float* out);
// The score tiles for tiles of 9 to kValuesTileTokens tokens (round_k: K rounded to bf16).
avx2::ScoreTiles ScoreKeysTiles(int64_t nt, bool round_k);
// The weighted sum's kernel for nt tokens (2 <= nt <= kRegisterTokens, else null); round: the value
// rows rounded to bf16; full: all 16 lanes inside dv.
avx2::ValuesTokensFn ValuesTokensKernel(int64_t nt, bool round, bool full);
// Whether the scores go on vdpbf16ps (ScoreHeadsDp): at bf16 precision (round), k_dim and rope_dim even,
// and the CPU has AVX512_BF16.
bool DpScores(const MlaAttentionArgs& a, bool round);
// avx2::TransposeKeyQueries's rows (bf16 numbers) as bf16 pairs, in place: row r of the pairs, at
// qk + r·kKeyLanes as 32-bit words, holds rows 2r (high halves) and 2r + 1 (low halves).
void PairQueries(float* qk, int64_t H, int64_t Wq);
// The key pairs of every sequence of a (keys form; DpScores), up to the most keys any of its tokens
// sees, K rounded to bf16 with round_k (an f32 cache's rope keys always); by all threads when parallel.
// Throws std::bad_alloc.
void PackKeyPairsOf(const MlaAttentionArgs& a, bool round_k, bool parallel, KeyPairs* p);
// ScoreKeysBlock's per-head sums sh[(h·nb + j)·kKeyLanes + k] on vdpbf16ps, for nb keys from the paired
// queries (PairQueries) and the key pairs at kp (as ScoreKeysBlock's, from the block's first key).
void ScoreHeadsDp(const MlaAttentionArgs& a, const float* qk, int64_t nt, const uint32_t* kp, int64_t kp_keys,
                  int64_t nb, float* sh);
}  // namespace avx512k

// The values path on AMX-BF16 (mla_values_amx.cc), for Precision::kBF16: queries, keys, values and
// the probabilities rounded to bf16, f32 accumulation and softmax, the running maximum updated per
// block of kKeyBlock keys (the probabilities are rounded relative to it). Call only when
// q8::DetectSupport().amx_bf16. Throws std::bad_alloc like AttendValues.
namespace amx {
inline constexpr int64_t kKeyBlock = 64;
void AttendValues(const MlaAttentionArgs& a, bool parallel);

// The latent path on AMX-BF16 (mla_latent_amx.cc), for Precision::kBF16: keys [j0, j1) of token t,
// j0 < j1, all heads, into p. Queries, keys (ĉ and k^R) and the probabilities rounded to bf16, f32
// accumulation and softmax; the running maximum is updated per block of kLatentKeyBlock keys counted
// from j0, and each block's probabilities are rounded relative to it; p.sum adds the rounded
// probabilities. False when scratch could not be allocated (logged). Call only when
// q8::DetectSupport().amx_bf16.
inline constexpr int64_t kLatentKeyBlock = 128;
bool AttendLatent(const MlaAttentionArgs& a, int64_t t, int64_t j0, int64_t j1, const Partial& p);

// Tokens [t0, t0 + nt) that share one page table, each over all its keys [0, n_keys[t]), into
// parts[i]: the same results, bit for bit, as AttendLatent per token, but each block of keys is read
// and converted once for all of them. nt <= LatentUnitTokens(...) <= kMaxUnitTokens; false when nt
// is out of range or scratch could not be allocated (logged).
inline constexpr int64_t kMaxUnitTokens = 8;
int64_t LatentUnitTokens(int64_t n_heads, int64_t tokens_per_thread);
bool AttendLatentTokens(const MlaAttentionArgs& a, int64_t t0, int64_t nt, const Partial* parts);
}  // namespace amx

// The latent path at bf16 precision on AVX512_BF16 without AMX-BF16 (mla_latent_bf16.cc): the AMX
// kernel's blocks, rounding and unit of tokens (mla_latent_blocks.h) with vdpbf16ps loops for the
// tile products, so the same results but for the order of the f32 additions. Call only when
// q8::DetectSupport().avx512_bf16.
namespace dpbf16 {
bool AttendLatent(const MlaAttentionArgs& a, int64_t t, int64_t j0, int64_t j1, const Partial& p);
bool AttendLatentTokens(const MlaAttentionArgs& a, int64_t t0, int64_t nt, const Partial* parts);
}  // namespace dpbf16

}  // namespace moerun::cpu::mla
