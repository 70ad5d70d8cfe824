// The values path of the CPU backend's MLA attention (prefill; MlaAttentionArgs::values): scores in
// the absorbed form against the latent cache, the weighted sum over per-head value rows V[j, h].
#include "backends/cpu/mla_attention_impl.h"  // first: it includes simd_avx512.h

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "runtime/core/log.h"

namespace moerun::cpu::mla {
namespace {

// ---- Values path (prefill): tiles of tokens over per-head value rows ----
//
// Consecutive batch tokens of one sequence read the same keys: a tile of up to kTileTokens of them
// walks the keys once, in blocks, and every key element loaded feeds all of the tile's tokens. Per
// block and group of 16 heads: the scores of all the tile's tokens (micro-tiles of kTileScoreTokens
// tokens x kTileScoreKeys keys in registers), an online softmax per (token, head), then per head the
// probability-weighted value rows V[j, h] (v_dim wide): a block's slice of one head's values (rows
// that follow each other, so no L1 set conflicts) stays in L1 while micro-tiles of kTileAccTokens
// tokens accumulate it.
constexpr int64_t kTileTokens = 12;
constexpr int kTileScoreTokens = 4;
constexpr int kTileScoreKeys = 6;
constexpr int kTileAccTokens = 6;
constexpr int64_t kTileColumns = 96;  // 4 tokens' queries over 96 columns: 24 KiB of L1
constexpr int64_t kTileKeyBlock = 64;

struct TileScratch {
  std::vector<float> qt;            // [NT, groups, W, 16]: queries transposed per head group
  std::vector<float> st;            // [kTileKeyBlock, NT, 16]: scores, then unnormalised probabilities
  std::vector<float> stats;         // [NT, H] running max, then [NT, H] running sum
  std::vector<const float*> rows;   // [n]
  std::vector<float> block;         // [kTileKeyBlock, W]: a block's rows when they are not contiguous
};

// st[t·16 + j·ldj + lane] (+)= Σ_{c0 <= c < c1} qt[t·ldq + c·16 + lane] · k_j[c] for NT tokens and NK
// keys at k_j = k + j·ks; kS > 0 is ks as a constant (DeepSeek's rows of 576: constant offsets).
template <int NT, int NK, int kS>
__attribute__((target("avx512f,fma"))) void ScoreTokensTile(const float* qt, int64_t ldq, int64_t c0, int64_t c1,
                                                             const float* k, int64_t ks, bool first, float* st,
                                                             int64_t ldj) {
  __m512 acc[NT][NK];
  const float* qp[NT];
#pragma GCC unroll 8
  for (int t = 0; t < NT; ++t) {
    qp[t] = qt + t * ldq + c0 * 16;
#pragma GCC unroll 8
    for (int j = 0; j < NK; ++j) acc[t][j] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(st + t * 16 + j * ldj);
  }
  const int64_t stride = kS > 0 ? kS : ks;
  const float* kp = k + c0;
  for (int64_t c = 0; c < c1 - c0; ++c) {
    __m512 q[NT];
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) q[t] = _mm512_loadu_ps(qp[t] + c * 16);
#pragma GCC unroll 8
    for (int j = 0; j < NK; ++j) {
      const __m512 b = _mm512_set1_ps(kp[j * stride + c]);
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t) acc[t][j] = _mm512_fmadd_ps(q[t], b, acc[t][j]);
    }
  }
#pragma GCC unroll 8
  for (int t = 0; t < NT; ++t)
#pragma GCC unroll 8
    for (int j = 0; j < NK; ++j) _mm512_storeu_ps(st + t * 16 + j * ldj, acc[t][j]);
}

template <int NT>
__attribute__((target("avx512f,fma"))) void ScoreTokensK(int nk, const float* qt, int64_t ldq, int64_t c0, int64_t c1,
                                                          const float* k, int64_t ks, bool first, float* st,
                                                          int64_t ldj) {
  if (nk == kTileScoreKeys && ks == 576) {
    ScoreTokensTile<NT, kTileScoreKeys, 576>(qt, ldq, c0, c1, k, ks, first, st, ldj);
    return;
  }
  switch (nk) {
    case 1: ScoreTokensTile<NT, 1, 0>(qt, ldq, c0, c1, k, ks, first, st, ldj); break;
    case 2: ScoreTokensTile<NT, 2, 0>(qt, ldq, c0, c1, k, ks, first, st, ldj); break;
    case 3: ScoreTokensTile<NT, 3, 0>(qt, ldq, c0, c1, k, ks, first, st, ldj); break;
    case 4: ScoreTokensTile<NT, 4, 0>(qt, ldq, c0, c1, k, ks, first, st, ldj); break;
    case 5: ScoreTokensTile<NT, 5, 0>(qt, ldq, c0, c1, k, ks, first, st, ldj); break;
    default: ScoreTokensTile<NT, kTileScoreKeys, 0>(qt, ldq, c0, c1, k, ks, first, st, ldj); break;
  }
}

__attribute__((target("avx512f,fma"))) void ScoreTokens(int nt, int nk, const float* qt, int64_t ldq, int64_t c0,
                                                         int64_t c1, const float* k, int64_t ks, bool first, float* st,
                                                         int64_t ldj) {
  switch (nt) {
    case 1: ScoreTokensK<1>(nk, qt, ldq, c0, c1, k, ks, first, st, ldj); break;
    case 2: ScoreTokensK<2>(nk, qt, ldq, c0, c1, k, ks, first, st, ldj); break;
    case 3: ScoreTokensK<3>(nk, qt, ldq, c0, c1, k, ks, first, st, ldj); break;
    default: ScoreTokensK<kTileScoreTokens>(nk, qt, ldq, c0, c1, k, ks, first, st, ldj); break;
  }
}

// out[t·ldo + 16·u] += Σ_{j < nj} p[t·16 + j·ldj] · v[j·ldv + 16·u] for NT tokens, NV vectors of one head;
// kMasked: lanes outside m are neither read nor written (masked loads cost an extra ALU uop, so the
// full slices go without).
template <int NT, int NV, bool kMasked>
__attribute__((target("avx512f,fma"))) void AccumulateValuesTile(const float* p, int64_t ldj, int64_t nj,
                                                                  const float* v, int64_t ldv, __mmask16 m,
                                                                  float* out, int64_t ldo) {
  __m512 acc[NT][NV];
#pragma GCC unroll 8
  for (int t = 0; t < NT; ++t)
#pragma GCC unroll 4
    for (int u = 0; u < NV; ++u)
      acc[t][u] = kMasked ? _mm512_maskz_loadu_ps(m, out + t * ldo + 16 * u) : _mm512_loadu_ps(out + t * ldo + 16 * u);
  for (int64_t j = 0; j < nj; ++j, v += ldv, p += ldj) {
    __m512 cv[NV];
#pragma GCC unroll 4
    for (int u = 0; u < NV; ++u) cv[u] = kMasked ? _mm512_maskz_loadu_ps(m, v + 16 * u) : _mm512_loadu_ps(v + 16 * u);
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
      const __m512 pb = _mm512_set1_ps(p[t * 16]);
#pragma GCC unroll 4
      for (int u = 0; u < NV; ++u) acc[t][u] = _mm512_fmadd_ps(pb, cv[u], acc[t][u]);
    }
  }
#pragma GCC unroll 8
  for (int t = 0; t < NT; ++t)
#pragma GCC unroll 4
    for (int u = 0; u < NV; ++u) {
      if (kMasked) {
        _mm512_mask_storeu_ps(out + t * ldo + 16 * u, m, acc[t][u]);
      } else {
        _mm512_storeu_ps(out + t * ldo + 16 * u, acc[t][u]);
      }
    }
}

template <int NV, bool kMasked>
__attribute__((target("avx512f,fma"))) void AccumulateValues(int nt, const float* p, int64_t ldj, int64_t nj,
                                                              const float* v, int64_t ldv, __mmask16 m, float* out,
                                                              int64_t ldo) {
  switch (nt) {
    case 1: AccumulateValuesTile<1, NV, kMasked>(p, ldj, nj, v, ldv, m, out, ldo); break;
    case 2: AccumulateValuesTile<2, NV, kMasked>(p, ldj, nj, v, ldv, m, out, ldo); break;
    case 3: AccumulateValuesTile<3, NV, kMasked>(p, ldj, nj, v, ldv, m, out, ldo); break;
    case 4: AccumulateValuesTile<4, NV, kMasked>(p, ldj, nj, v, ldv, m, out, ldo); break;
    case 5: AccumulateValuesTile<5, NV, kMasked>(p, ldj, nj, v, ldv, m, out, ldo); break;
    default: AccumulateValuesTile<kTileAccTokens, NV, kMasked>(p, ldj, nj, v, ldv, m, out, ldo); break;
  }
}

// Keys of the block [j0, j0 + nb) that any of the nt tokens sees: the rest are masked for all of them.
inline int64_t SubtileKeys(const int32_t* n_keys, int64_t nt, int64_t j0, int64_t nb) {
  int64_t most = 0;
  for (int64_t t = 0; t < nt; ++t) most = std::max<int64_t>(most, n_keys[t]);
  return std::clamp<int64_t>(most - j0, 0, nb);
}

// One head's share of a key block for the tokens [lo, hi) of a tile: out[t·ldo + i] += Σ_j p(t, j) ·
// v[j·ldv + i] for i < width, in slices of 64 and micro-tiles of kTileAccTokens tokens, each over the
// keys that any of its tokens sees. p(t, j) = p[t·16 + j·ldj].
__attribute__((target("avx512f,fma"))) void AccumulateHead(const float* v, int64_t ldv, const float* p, int64_t ldj,
                                                            const int32_t* n_keys, int64_t lo, int64_t hi, int64_t j0,
                                                            int64_t nb, float* out, int64_t ldo, int64_t width) {
  for (int64_t i0 = 0; i0 < width; i0 += 64) {
    for (int64_t ts = lo; ts < hi; ts += kTileAccTokens) {
      const int nta = static_cast<int>(std::min<int64_t>(kTileAccTokens, hi - ts));
      const int64_t nj = SubtileKeys(n_keys + ts, nta, j0, nb);
      const float* ps = p + ts * 16;
      float* os = out + ts * ldo + i0;
      if (i0 + 64 <= width) {
        AccumulateValues<4, false>(nta, ps, ldj, nj, v + i0, ldv, 0xffff, os, ldo);
      } else {
        for (int64_t i = 0; i < width - i0; i += 16)
          AccumulateValues<1, true>(nta, ps, ldj, nj, v + i0 + i, ldv, TailMask(width - i0 - i), os + i, ldo);
      }
    }
  }
}

// Tokens [t0, t0 + nt) of one sequence (shared token_pages and values), all heads, values path:
// out [nt, H, v_dim]. False when scratch could not be allocated (logged).
__attribute__((target("avx512f,fma"))) bool AttendTileValues(const MlaAttentionArgs& a, int64_t t0, int64_t nt) {
  const int64_t R = a.cache.kv_rank, P = a.cache.rope_dim, W = R + P, H = a.n_heads, dv = a.v_dim;
  // Queries: per token, padded by a cache line (whole multiples of 4 KiB would put the rows that a
  // micro-tile reads together into one L1 set). Scores: [key][token][16 heads], so that the
  // probabilities of all the tile's tokens for one key are neighbours.
  const int64_t G = (H + 15) / 16, ldq = G * W * 16 + 16, ldj = nt * 16;
  const int32_t* n_keys = a.n_keys + t0;
  float* out = a.out + t0 * H * dv;
  std::memset(out, 0, static_cast<size_t>(nt * H * dv) * sizeof(float));
  int64_t n = 0;
  for (int64_t t = 0; t < nt; ++t) n = std::max<int64_t>(n, n_keys[t]);
  if (n <= 0) return true;
  thread_local TileScratch sc;
  try {
    if (sc.qt.size() < static_cast<size_t>(nt * ldq)) sc.qt.resize(static_cast<size_t>(nt * ldq));
    if (sc.st.size() < static_cast<size_t>(kTileKeyBlock * ldj)) sc.st.resize(static_cast<size_t>(kTileKeyBlock * ldj));
    if (sc.stats.size() < static_cast<size_t>(2 * nt * H)) sc.stats.resize(static_cast<size_t>(2 * nt * H));
    if (sc.rows.size() < static_cast<size_t>(n)) sc.rows.resize(static_cast<size_t>(n));
    if (sc.block.size() < static_cast<size_t>(kTileKeyBlock * W)) sc.block.resize(static_cast<size_t>(kTileKeyBlock * W));
  } catch (const std::exception&) {
    mla::LogScratchFailure("cpu backend: MlaAttention", n);
    return false;
  }
  const int32_t* pages = a.token_pages[t0];
  const float* values = a.values[t0];
  for (int64_t j = 0; j < n; ++j) sc.rows[j] = a.cache.Row(pages, j);
  for (int64_t t = 0; t < nt; ++t)
    TransposeQueries(a.q_latent + (t0 + t) * H * R, a.q_rope + (t0 + t) * H * P, H, R, P, sc.qt.data() + t * ldq);
  float* mx = sc.stats.data();
  float* sm = mx + nt * H;
  std::fill(mx, mx + nt * H, -INFINITY);
  std::fill(sm, sm + nt * H, 0.0f);
  float* st = sc.st.data();
  const __m512 vscale = _mm512_set1_ps(a.scale);
  for (int64_t j0 = 0; j0 < n; j0 += kTileKeyBlock) {
    const int64_t nb = std::min(n - j0, kTileKeyBlock);
    // The tokens with keys in this block: [lo, hi).
    int64_t lo = 0, hi = nt;
    while (lo < hi && n_keys[lo] <= j0) ++lo;
    while (hi > lo && n_keys[hi - 1] <= j0) --hi;
    const float* const* kr = sc.rows.data() + j0;
    bool contiguous = true;
    for (int64_t j = 1; j < nb && contiguous; ++j) contiguous = kr[j] == kr[0] + j * W;
    // The block's rows with one stride (a block spread over pages is copied together first), for the
    // score kernels' fast form.
    const float* block = kr[0];
    if (!contiguous) {
      for (int64_t j = 0; j < nb; ++j) std::memcpy(sc.block.data() + j * W, kr[j], static_cast<size_t>(W) * sizeof(float));
      block = sc.block.data();
    }
    for (int64_t g0 = 0; g0 < H; g0 += 16) {
      const int gh = static_cast<int>(std::min<int64_t>(16, H - g0));
      const __mmask16 mh = TailMask(gh);
      const float* qt = sc.qt.data() + (g0 / 16) * W * 16;
      for (int64_t c0 = 0; c0 < W; c0 += kTileColumns) {
        const int64_t c1 = std::min(W, c0 + kTileColumns);
        for (int64_t ts = lo; ts < hi; ts += kTileScoreTokens) {
          const int ntt = static_cast<int>(std::min<int64_t>(kTileScoreTokens, hi - ts));
          const int64_t nbs = SubtileKeys(n_keys + ts, ntt, j0, nb);  // causal: skip keys none of them sees
          for (int64_t j = 0; j < nbs; j += kTileScoreKeys) {
            const int nk = static_cast<int>(std::min<int64_t>(kTileScoreKeys, nbs - j));
            ScoreTokens(ntt, nk, qt + ts * ldq, ldq, c0, c1, block + j * W, W, c0 == 0, st + ts * 16 + j * ldj, ldj);
          }
        }
      }
      // Online softmax per token; keys a token does not see get probability 0.
      for (int64_t t = lo; t < hi; ++t) {
        float* s = st + t * 16;
        const int64_t valid = std::clamp<int64_t>(n_keys[t] - j0, 0, nb);
        for (int64_t j = valid; j < nb; ++j) _mm512_storeu_ps(s + j * ldj, _mm512_setzero_ps());
        if (valid == 0) continue;
        __m512 bmax = _mm512_set1_ps(-INFINITY);
        for (int64_t j = 0; j < valid; ++j) {
          const __m512 sj = _mm512_mul_ps(vscale, _mm512_loadu_ps(s + j * ldj));
          _mm512_storeu_ps(s + j * ldj, sj);
          bmax = _mm512_max_ps(bmax, sj);
        }
        float* tmx = mx + t * H + g0;
        float* tsm = sm + t * H + g0;
        const __m512 old_max = _mm512_maskz_loadu_ps(mh, tmx);
        const __m512 new_max = _mm512_max_ps(old_max, bmax);
        __m512 sum = _mm512_maskz_loadu_ps(mh, tsm);
        if (j0 > 0) {
          const __mmask16 grew = _mm512_mask_cmp_ps_mask(mh, new_max, old_max, _CMP_GT_OQ);
          if (grew) {
            alignas(64) float alpha[16];
            const __m512 al = ExpAvx512(_mm512_sub_ps(old_max, new_max));
            _mm512_store_ps(alpha, al);
            sum = _mm512_mul_ps(sum, al);
            for (int h = 0; h < gh; ++h) {
              if (!((grew >> h) & 1)) continue;
              const __m512 ab = _mm512_set1_ps(alpha[h]);
              float* o = out + (t * H + g0 + h) * dv;
              for (int64_t i = 0; i < dv; i += 16) {
                const __mmask16 m = TailMask(dv - i);
                _mm512_mask_storeu_ps(o + i, m, _mm512_mul_ps(ab, _mm512_maskz_loadu_ps(m, o + i)));
              }
            }
          }
        }
        for (int64_t j = 0; j < valid; ++j) {
          const __m512 e = ExpAvx512(_mm512_sub_ps(_mm512_loadu_ps(s + j * ldj), new_max));
          _mm512_storeu_ps(s + j * ldj, e);
          sum = _mm512_add_ps(sum, e);
        }
        _mm512_mask_storeu_ps(tmx, mh, new_max);
        _mm512_mask_storeu_ps(tsm, mh, sum);
      }
      // Per head: its values of the block, slice by slice, for micro-tiles of tokens.
      for (int h = 0; h < gh; ++h)
        AccumulateHead(values + (g0 + h) * a.v_head_stride + j0 * dv, dv, st + h, ldj, n_keys, lo, hi, j0, nb,
                       out + (g0 + h) * dv, H * dv, dv);
    }
  }
  for (int64_t t = 0; t < nt; ++t)
    for (int64_t h = 0; h < H; ++h) {
      const float sum = sm[t * H + h];
      const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;  // no keys: zero, not 0/0
      float* o = out + (t * H + h) * dv;
      for (int64_t i = 0; i < dv; ++i) o[i] *= inv;
    }
  return true;
}

// Values path without AVX-512: token t alone, all heads. kRound (bf16 precision): queries, key rows,
// value rows and each probability (relative to the row's max; the sum adds the rounded ones) rounded
// to bf16, as the AMX kernels and the reference backend do. False when scratch could not be allocated.
template <bool kRound>
bool AttendValuesScalar(const MlaAttentionArgs& a, int64_t t) {
  const int64_t R = a.cache.kv_rank, P = a.cache.rope_dim, H = a.n_heads, dv = a.v_dim;
  const int64_t Q = a.keys ? a.k_dim : R;  // query columns before the rope part
  const int64_t n = std::max<int32_t>(a.n_keys[t], 0);
  float* out = a.out + t * H * dv;
  std::fill(out, out + H * dv, 0.0f);
  if (n == 0) return true;
  thread_local std::vector<float> s, q;
  thread_local std::vector<const float*> rows;
  try {
    if (s.size() < static_cast<size_t>(n)) s.resize(static_cast<size_t>(n));
    if (rows.size() < static_cast<size_t>(n)) rows.resize(static_cast<size_t>(n));
    if (q.size() < static_cast<size_t>(Q + P)) q.resize(static_cast<size_t>(Q + P));
  } catch (const std::exception&) {
    mla::LogScratchFailure("cpu backend: MlaAttention", n);
    return false;
  }
  for (int64_t j = 0; j < n; ++j) rows[j] = a.cache.Row(a.token_pages[t], j);
  const float* values = a.values[t];
  auto in = [](float v) { return kRound ? RoundBf16(v) : v; };
  for (int64_t h = 0; h < H; ++h) {
    const float* qn = a.keys ? a.q_nope + (t * H + h) * Q : a.q_latent + (t * H + h) * R;
    for (int64_t i = 0; i < Q; ++i) q[i] = in(qn[i]);
    for (int64_t i = 0; i < P; ++i) q[Q + i] = in(a.q_rope[(t * H + h) * P + i]);
    const float* ql = q.data();
    const float* qr = q.data() + Q;
    float mx = -INFINITY;
    for (int64_t j = 0; j < n; ++j) {
      const float* row = rows[j];
      // The keys form's expanded keys, else the latent row (the absorbed form).
      const float* k = a.keys ? a.keys[t] + h * a.k_head_stride + j * Q : row;
      float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
      for (int64_t i = 0; i < Q; ++i) acc += ql[i] * in(k[i]);
      for (int64_t i = 0; i < P; ++i) acc += qr[i] * in(row[R + i]);
      s[j] = a.scale * acc;
      mx = std::max(mx, s[j]);
    }
    float sum = 0.0f;
    for (int64_t j = 0; j < n; ++j) sum += (s[j] = in(std::exp(s[j] - mx)));
    float* o = out + h * dv;
    for (int64_t j = 0; j < n; ++j) {
      const float* v = values + h * a.v_head_stride + j * dv;
      const float e = s[j];
#pragma omp simd
      for (int64_t i = 0; i < dv; ++i) o[i] += e * in(v[i]);
    }
    const float inv = 1.0f / sum;
    for (int64_t i = 0; i < dv; ++i) o[i] *= inv;
  }
  return true;
}

}  // namespace

// The values path and its keys form: tiles of consecutive tokens of one sequence (AVX-512, AVX2) or
// single tokens, run concurrently, the last tile first (later tokens see more keys). Tiles hold up to
// kTileTokens tokens (avx2::kValuesTileTokens on AVX2), fewer when that leaves less than two tiles per
// thread.
void AttendValues(const MlaAttentionArgs& a, bool avx, bool avx2, bool wide, bool round, bool parallel) {
  const int64_t T = a.n_tokens;
  avx = avx && !a.keys;  // the keys form: the AVX2 kernel (every AVX-512 CPU has AVX2) or the scalar one
  const int64_t threads = parallel ? omp_get_max_threads() : 1;
  const int64_t most = avx    ? std::clamp<int64_t>(T / (2 * threads), 1, kTileTokens)
                       : avx2 ? std::clamp<int64_t>(T / (2 * threads), 1, avx2::kValuesTileTokens)
                              : 1;
  // Tile boundaries: a tile ends at `most` tokens or where the sequence changes.
  std::vector<int64_t> tile_start;
  tile_start.reserve(static_cast<size_t>(T + 1));
  for (int64_t t = 0; t < T; ++t) {
    const int64_t s = tile_start.empty() ? -1 : tile_start.back();
    if (s < 0 || t - s >= most || a.token_pages[t] != a.token_pages[s] || a.values[t] != a.values[s])
      tile_start.push_back(t);
  }
  const int64_t n_tiles = static_cast<int64_t>(tile_start.size());
  tile_start.push_back(T);
  // The keys form at bf16 precision on AVX512_BF16: the keys as bf16 pairs once for all tiles, in a
  // buffer kept between calls (a new one each call cost a page fault per 4 KiB: 3 MiB a layer for a
  // 512-token V2-Lite prompt; it keeps the largest call's size, 25 MiB at 4096 keys). The calling
  // thread's: the parallel region below reads it through `pairs` (a name of a thread_local there would
  // be each thread's own).
  thread_local KeyPairs kept;
  KeyPairs* const pairs = avx2 && wide && a.keys && avx512k::DpScores(a, round) ? &kept : nullptr;
  if (pairs) avx512k::PackKeyPairsOf(a, !a.keys_bf16_exact, parallel, pairs);
  std::vector<uint8_t> failed(static_cast<size_t>(n_tiles), 0);
#pragma omp parallel for schedule(dynamic, 1) if (parallel && n_tiles > 1)
  for (int64_t i = n_tiles - 1; i >= 0; --i) {
    bool done = false;
    try {
      done = avx     ? AttendTileValues(a, tile_start[i], tile_start[i + 1] - tile_start[i])
             : avx2  ? avx2::AttendValues(a, tile_start[i], tile_start[i + 1] - tile_start[i], round, wide, pairs)
             : round ? AttendValuesScalar<true>(a, tile_start[i])
                     : AttendValuesScalar<false>(a, tile_start[i]);
    } catch (const std::exception&) {
    }
    if (!done) failed[i] = 1;
  }
  for (int64_t i = 0; i < n_tiles; ++i)
    if (failed[i]) throw std::bad_alloc();
}

}  // namespace moerun::cpu::mla
