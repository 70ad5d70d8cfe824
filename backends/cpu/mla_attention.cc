// Absorbed-form MLA attention over the paged latent cache (MODEL_SPEC §4.5):
//   s_j = scale · (q_latent·ĉ_j + q_rope·k^R_j),  out = Σ_j softmax(s)_j ĉ_j.
//
// Work items are tokens with all their heads rather than (token, head) pairs: all heads of a token
// read the same cache rows, so an item walks the keys in blocks that stay in L2 while every head
// uses them, instead of streaming the cache once per head. With fewer tokens than threads (decode)
// each token's keys are split into spans whose softmax partials are merged afterwards, so that the
// threads share the cache reads rather than each streaming all of them.
#include "backends/cpu/simd_avx512.h"  // first: see there
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "backends/cpu/cpu_backend_impl.h"
#include "runtime/core/log.h"

namespace moerun::cpu {

namespace {

// 64 cache rows of 576 floats = 147 KiB: an L2-resident block reused by every head of the group.
constexpr int64_t kKeyBlock = 64;
constexpr int kHeadTile = 4;
constexpr int kKeyTile = 4;
constexpr int64_t kMinParallelWork = int64_t{1} << 16;  // multiply-adds
// Decode splits a token's keys into spans of at least this many keys, and at most kMaxSpans spans.
constexpr int64_t kMinKeysPerSpan = 256;
constexpr int64_t kMaxSpans = 16;

inline __mmask16 TailMask(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << n) - 1u);
}

// Per-thread scratch, grown to the longest sequence seen: the scores of a head group and the cache
// row of every key. On the heap, so long contexts cannot overflow a thread's stack.
struct Scratch {
  std::vector<float> q;             // [heads, W]: q_latent then q_rope, matching a cache row
  std::vector<float> scores;        // [heads, n]: scores, then unnormalised probabilities
  std::vector<const float*> rows;   // [n]
};

// s[h, j] = scale · q[h] · k[j] for NH heads × NK keys, W-long dot products.
template <int NH, int NK>
__attribute__((target("avx512f,fma"))) void DotTile(const float* q, int64_t W, const float* const* k, float scale,
                                                     float* s, int64_t lds) {
  __m512 acc[NH][NK];
#pragma GCC unroll 4
  for (int h = 0; h < NH; ++h)
#pragma GCC unroll 4
    for (int j = 0; j < NK; ++j) acc[h][j] = _mm512_setzero_ps();
  for (int64_t c = 0; c < W; c += 16) {
    const __mmask16 m = TailMask(W - c);
    __m512 kv[NK];
#pragma GCC unroll 4
    for (int j = 0; j < NK; ++j) kv[j] = _mm512_maskz_loadu_ps(m, k[j] + c);
#pragma GCC unroll 4
    for (int h = 0; h < NH; ++h) {
      const __m512 qv = _mm512_maskz_loadu_ps(m, q + h * W + c);
#pragma GCC unroll 4
      for (int j = 0; j < NK; ++j) acc[h][j] = _mm512_fmadd_ps(qv, kv[j], acc[h][j]);
    }
  }
#pragma GCC unroll 4
  for (int h = 0; h < NH; ++h)
#pragma GCC unroll 4
    for (int j = 0; j < NK; ++j) s[h * lds + j] = scale * _mm512_reduce_add_ps(acc[h][j]);
}

template <int NH>
__attribute__((target("avx512f,fma"))) void DotTileK(int nk, const float* q, int64_t W, const float* const* k,
                                                      float scale, float* s, int64_t lds) {
  switch (nk) {
    case 1: DotTile<NH, 1>(q, W, k, scale, s, lds); break;
    case 2: DotTile<NH, 2>(q, W, k, scale, s, lds); break;
    case 3: DotTile<NH, 3>(q, W, k, scale, s, lds); break;
    default: DotTile<NH, kKeyTile>(q, W, k, scale, s, lds); break;
  }
}

// out[h, i0 : i0 + 16·NV] += Σ_{j0 <= j < j1} p[h, j] · ĉ_j[i0 : ...] for NH heads.
template <int NH, int NV>
__attribute__((target("avx512f,fma"))) void AccumulateTile(const float* p, int64_t ldp, int64_t j0, int64_t j1,
                                                            const float* const* rows, int64_t i0, __mmask16 m,
                                                            float* out, int64_t R) {
  __m512 acc[NH][NV];
#pragma GCC unroll 4
  for (int h = 0; h < NH; ++h)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[h][v] = _mm512_maskz_loadu_ps(m, out + h * R + i0 + 16 * v);
  for (int64_t j = j0; j < j1; ++j) {
    __m512 cv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) cv[v] = _mm512_maskz_loadu_ps(m, rows[j] + i0 + 16 * v);
#pragma GCC unroll 4
    for (int h = 0; h < NH; ++h) {
      const __m512 pb = _mm512_set1_ps(p[h * ldp + j]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[h][v] = _mm512_fmadd_ps(pb, cv[v], acc[h][v]);
    }
  }
#pragma GCC unroll 4
  for (int h = 0; h < NH; ++h)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) _mm512_mask_storeu_ps(out + h * R + i0 + 16 * v, m, acc[h][v]);
}

template <int NH>
__attribute__((target("avx512f,fma"))) void AccumulateHeads(const float* p, int64_t ldp, int64_t j0, int64_t j1,
                                                             const float* const* rows, float* out, int64_t R) {
  int64_t i0 = 0;
  for (; i0 + 64 <= R; i0 += 64) AccumulateTile<NH, 4>(p, ldp, j0, j1, rows, i0, 0xffff, out, R);
  for (; i0 < R; i0 += 16) AccumulateTile<NH, 1>(p, ldp, j0, j1, rows, i0, TailMask(R - i0), out, R);
}

// Where AttendKeys leaves its result for one span of keys: out[h] = Σ_j e^(s_hj - max_h) ĉ_j, not yet
// divided by sum[h] = Σ_j e^(s_hj - max_h), so that spans of one token can be merged.
struct Partial {
  float* out;  // [heads, kv_rank]
  float* max;  // [heads]
  float* sum;  // [heads]
};

// Scores → exp(s - max) in place.
__attribute__((target("avx512f,fma"))) void SoftmaxAvx512(float* s, int64_t n, float* max, float* sum) {
  __m512 mx = _mm512_set1_ps(-INFINITY);
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 m = TailMask(n - j);
    mx = _mm512_mask_max_ps(mx, m, mx, _mm512_maskz_loadu_ps(m, s + j));
  }
  *max = _mm512_reduce_max_ps(mx);
  const __m512 vmax = _mm512_set1_ps(*max);
  __m512 acc = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 m = TailMask(n - j);
    const __m512 e = ExpAvx512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, s + j), vmax));
    _mm512_mask_storeu_ps(s + j, m, e);
    acc = _mm512_mask_add_ps(acc, m, acc, e);
  }
  *sum = _mm512_reduce_add_ps(acc);
}

// Two passes over the n keys in sc.rows, each in L2-sized blocks shared by all heads: scores for
// every head, then the probability-weighted latents.
__attribute__((target("avx512f,fma"))) void AttendAvx512(Scratch& sc, int64_t H, int64_t n, int64_t R, int64_t W,
                                                          float scale, const Partial& p) {
  float* scores = sc.scores.data();
  const float* const* rows = sc.rows.data();
  const float* q = sc.q.data();
  for (int64_t j0 = 0; j0 < n; j0 += kKeyBlock) {
    const int64_t j1 = std::min(n, j0 + kKeyBlock);
    for (int64_t h = 0; h < H; h += kHeadTile) {
      const int th = static_cast<int>(std::min<int64_t>(kHeadTile, H - h));
      for (int64_t j = j0; j < j1; j += kKeyTile) {
        const int tk = static_cast<int>(std::min<int64_t>(kKeyTile, j1 - j));
        float* s = scores + h * n + j;
        switch (th) {
          case 1: DotTileK<1>(tk, q + h * W, W, rows + j, scale, s, n); break;
          case 2: DotTileK<2>(tk, q + h * W, W, rows + j, scale, s, n); break;
          case 3: DotTileK<3>(tk, q + h * W, W, rows + j, scale, s, n); break;
          default: DotTileK<kHeadTile>(tk, q + h * W, W, rows + j, scale, s, n); break;
        }
      }
    }
  }
  for (int64_t h = 0; h < H; ++h) SoftmaxAvx512(scores + h * n, n, p.max + h, p.sum + h);
  std::memset(p.out, 0, static_cast<size_t>(H * R) * sizeof(float));
  for (int64_t j0 = 0; j0 < n; j0 += kKeyBlock) {
    const int64_t j1 = std::min(n, j0 + kKeyBlock);
    for (int64_t h = 0; h < H; h += kHeadTile) {
      switch (std::min<int64_t>(kHeadTile, H - h)) {
        case 1: AccumulateHeads<1>(scores + h * n, n, j0, j1, rows, p.out + h * R, R); break;
        case 2: AccumulateHeads<2>(scores + h * n, n, j0, j1, rows, p.out + h * R, R); break;
        case 3: AccumulateHeads<3>(scores + h * n, n, j0, j1, rows, p.out + h * R, R); break;
        default: AccumulateHeads<kHeadTile>(scores + h * n, n, j0, j1, rows, p.out + h * R, R); break;
      }
    }
  }
}

void AttendScalar(Scratch& sc, int64_t H, int64_t n, int64_t R, int64_t W, float scale, const Partial& p) {
  for (int64_t h = 0; h < H; ++h) {
    const float* q = sc.q.data() + h * W;
    float* s = sc.scores.data() + h * n;
    float mx = -INFINITY;
    for (int64_t j = 0; j < n; ++j) {
      const float* row = sc.rows[j];
      float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
      for (int64_t i = 0; i < W; ++i) acc += q[i] * row[i];
      s[j] = scale * acc;
      mx = std::max(mx, s[j]);
    }
    float sum = 0.0f;
    for (int64_t j = 0; j < n; ++j) sum += (s[j] = std::exp(s[j] - mx));
    p.max[h] = mx;
    p.sum[h] = sum;
    float* o = p.out + h * R;
    std::fill(o, o + R, 0.0f);
    for (int64_t j = 0; j < n; ++j) {
      const float* row = sc.rows[j];
      const float e = s[j];
#pragma omp simd
      for (int64_t i = 0; i < R; ++i) o[i] += e * row[i];
    }
  }
}

std::atomic<int> g_log_budget{20};

// Keys [j0, j1) of token t, all heads. False when scratch could not be allocated (logged).
bool AttendKeys(const MlaAttentionArgs& a, int64_t t, int64_t j0, int64_t j1, bool avx, const Partial& p) {
  const int64_t R = a.cache.kv_rank, P = a.cache.rope_dim, W = R + P, H = a.n_heads, n = j1 - j0;
  if (n <= 0) {
    std::fill(p.out, p.out + H * R, 0.0f);
    std::fill(p.max, p.max + H, -INFINITY);
    std::fill(p.sum, p.sum + H, 0.0f);
    return true;
  }
  thread_local Scratch sc;
  try {
    sc.q.resize(static_cast<size_t>(H * W));
    if (sc.scores.size() < static_cast<size_t>(H * n)) sc.scores.resize(static_cast<size_t>(H * n));
    if (sc.rows.size() < static_cast<size_t>(n)) sc.rows.resize(static_cast<size_t>(n));
  } catch (const std::exception&) {
    if (g_log_budget.fetch_sub(1) > 0)
      Log(LogLevel::kError, "cpu backend: MlaAttention out of memory for " + std::to_string(n) + " keys");
    return false;
  }
  const int32_t* pages = a.token_pages[t];
  for (int64_t j = 0; j < n; ++j) sc.rows[j] = a.cache.Row(pages, j0 + j);
  for (int64_t h = 0; h < H; ++h) {
    std::memcpy(sc.q.data() + h * W, a.q_latent + (t * H + h) * R, static_cast<size_t>(R) * sizeof(float));
    std::memcpy(sc.q.data() + h * W + R, a.q_rope + (t * H + h) * P, static_cast<size_t>(P) * sizeof(float));
  }
  if (avx) {
    AttendAvx512(sc, H, n, R, W, a.scale, p);
  } else {
    AttendScalar(sc, H, n, R, W, a.scale, p);
  }
  return true;
}

// out[h] = Σ_c e^(max_c - M) out_c / Σ_c e^(max_c - M) sum_c over the spans c of one token.
void Merge(const Partial* spans, int64_t n_spans, int64_t h, int64_t R, float* out) {
  float M = -INFINITY;
  for (int64_t c = 0; c < n_spans; ++c) M = std::max(M, spans[c].max[h]);
  float total = 0.0f;
  std::fill(out, out + R, 0.0f);
  if (M == -INFINITY) return;  // no keys: zero rather than the 0/0 of an empty softmax
  for (int64_t c = 0; c < n_spans; ++c) {
    const float f = std::exp(spans[c].max[h] - M);
    total += f * spans[c].sum[h];
    const float* o = spans[c].out + h * R;
    for (int64_t i = 0; i < R; ++i) out[i] += f * o[i];
  }
  const float inv = 1.0f / total;
  for (int64_t i = 0; i < R; ++i) out[i] *= inv;
}

}  // namespace

void CpuBackend::MlaAttention(const MlaAttentionArgs& a) const {
  const LatentCacheView& c = a.cache;
  if (a.n_tokens <= 0 || a.n_heads <= 0) return;
  if (!a.q_latent || !a.out || !a.token_pages || !a.n_keys || !c.pool || c.page_size <= 0 || c.kv_rank <= 0 ||
      c.rope_dim < 0 || (c.rope_dim > 0 && !a.q_rope)) {
    if (g_log_budget.fetch_sub(1) > 0) Log(LogLevel::kError, "cpu backend: MlaAttention called with invalid arguments");
    return;
  }
  const int64_t T = a.n_tokens, H = a.n_heads, R = c.kv_rank;
  int64_t keys = 0, most = 0;
  for (int64_t t = 0; t < T; ++t) {
    keys += std::max<int32_t>(a.n_keys[t], 0);
    most = std::max<int64_t>(most, a.n_keys[t]);
  }
  const bool parallel = keys * H * (2 * R + c.rope_dim) >= kMinParallelWork;
  const int64_t threads = parallel ? omp_get_max_threads() : 1;
  // Few tokens (decode): split each token's keys into spans, so that the threads share the reads of
  // its cache rows instead of each streaming all of them, and merge the spans' softmax afterwards.
  const int64_t spans =
      T >= 2 * threads ? 1
                       : std::clamp<int64_t>((2 * threads + T - 1) / T, 1,
                                             std::clamp<int64_t>(most / kMinKeysPerSpan, 1, kMaxSpans));
  const bool avx = features_.avx512;
  // Tokens whose scratch could not be allocated (logged) get a zero output.
  std::vector<uint8_t> failed;
  std::vector<float> partial;  // spans > 1: per (token, span) out [H, R], max [H], sum [H]
  try {
    failed.assign(static_cast<size_t>(T), 0);
    if (spans > 1) partial.resize(static_cast<size_t>(T * spans * H * (R + 2)));
  } catch (const std::exception&) {
    Log(LogLevel::kError, "cpu backend: MlaAttention out of memory; output zeroed");
    std::fill(a.out, a.out + T * H * R, 0.0f);
    return;
  }
  if (spans == 1) {
#pragma omp parallel for schedule(dynamic, 1) if (parallel && T > 1)
    for (int64_t t = 0; t < T; ++t) {
      thread_local std::vector<float> stats;
      float* out = a.out + t * H * R;
      bool done = false;
      try {
        stats.resize(static_cast<size_t>(2 * H));
        done = AttendKeys(a, t, 0, a.n_keys[t], avx, Partial{out, stats.data(), stats.data() + H});
      } catch (const std::exception&) {
      }
      if (!done) {
        failed[t] = 1;
        continue;
      }
      for (int64_t h = 0; h < H; ++h) {
        const float sum = stats[H + h];
        const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;  // no keys: zero, not 0/0
        for (int64_t i = 0; i < R; ++i) out[h * R + i] *= inv;
      }
    }
  } else {
    auto span = [&](int64_t item) {
      float* base = partial.data() + item * H * (R + 2);
      return Partial{base, base + H * R, base + H * R + H};
    };
#pragma omp parallel for schedule(dynamic, 1) if (parallel)
    for (int64_t item = 0; item < T * spans; ++item) {
      const int64_t t = item / spans, sp = item % spans, n = std::max<int32_t>(a.n_keys[t], 0);
      if (!AttendKeys(a, t, n * sp / spans, n * (sp + 1) / spans, avx, span(item)))
        std::atomic_ref<uint8_t>(failed[t]).store(1, std::memory_order_relaxed);  // spans share t
    }
#pragma omp parallel for schedule(static) if (parallel && T * H > 1)
    for (int64_t th = 0; th < T * H; ++th) {
      const int64_t t = th / H, h = th % H;
      Partial spans_of_t[kMaxSpans];
      for (int64_t sp = 0; sp < spans; ++sp) spans_of_t[sp] = span(t * spans + sp);
      Merge(spans_of_t, spans, h, R, a.out + th * R);
    }
  }
  for (int64_t t = 0; t < T; ++t)
    if (failed[t]) std::fill(a.out + t * H * R, a.out + (t + 1) * H * R, 0.0f);
}

}  // namespace moerun::cpu
