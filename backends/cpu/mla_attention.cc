// Absorbed-form MLA attention over the paged latent cache (MODEL_SPEC §4.5):
//   s_j = scale · (q_latent·ĉ_j + q_rope·k^R_j),  out = Σ_j softmax(s)_j ĉ_j.
//
// Work items are (token, group of heads) rather than single (token, head) pairs: all heads of a
// token read the same cache rows, so a group walks the keys in blocks that stay in L2 while every
// head of the group uses them, instead of streaming the whole cache once per head. Groups are only
// as large as keeps both threads busy (a decode step of one token still splits its heads).
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

inline __mmask16 TailMask(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << n) - 1u);
}

// Per-thread scratch, grown to the longest sequence seen: the scores of a head group and the cache
// row of every key. On the heap, so long contexts cannot overflow a thread's stack.
struct Scratch {
  std::vector<float> q;             // [heads, W]: q_latent then q_rope, matching a cache row
  std::vector<float> scores;        // [heads, n]: scores, then unnormalised probabilities
  std::vector<const float*> rows;   // [n]
  std::vector<float> inv_sum;       // [heads]
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

// Scores → exp(s - max) in place; returns 1 / Σ.
__attribute__((target("avx512f,fma"))) float SoftmaxAvx512(float* s, int64_t n) {
  __m512 mx = _mm512_set1_ps(-INFINITY);
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 m = TailMask(n - j);
    mx = _mm512_mask_max_ps(mx, m, mx, _mm512_maskz_loadu_ps(m, s + j));
  }
  const __m512 vmax = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
  __m512 sum = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 m = TailMask(n - j);
    const __m512 e = ExpAvx512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, s + j), vmax));
    _mm512_mask_storeu_ps(s + j, m, e);
    sum = _mm512_mask_add_ps(sum, m, sum, e);
  }
  return 1.0f / _mm512_reduce_add_ps(sum);
}

__attribute__((target("avx512f,fma"))) void AttendAvx512(Scratch& sc, int64_t nh, int64_t n, int64_t R, int64_t W,
                                                          float scale, float* out) {
  float* scores = sc.scores.data();
  const float* const* rows = sc.rows.data();
  const float* q = sc.q.data();
  for (int64_t j0 = 0; j0 < n; j0 += kKeyBlock) {
    const int64_t j1 = std::min(n, j0 + kKeyBlock);
    for (int64_t h = 0; h < nh; h += kHeadTile) {
      const int th = static_cast<int>(std::min<int64_t>(kHeadTile, nh - h));
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
  float* inv = sc.inv_sum.data();
  for (int64_t h = 0; h < nh; ++h) inv[h] = SoftmaxAvx512(scores + h * n, n);
  std::memset(out, 0, static_cast<size_t>(nh * R) * sizeof(float));
  for (int64_t j0 = 0; j0 < n; j0 += kKeyBlock) {
    const int64_t j1 = std::min(n, j0 + kKeyBlock);
    for (int64_t h = 0; h < nh; h += kHeadTile) {
      switch (std::min<int64_t>(kHeadTile, nh - h)) {
        case 1: AccumulateHeads<1>(scores + h * n, n, j0, j1, rows, out + h * R, R); break;
        case 2: AccumulateHeads<2>(scores + h * n, n, j0, j1, rows, out + h * R, R); break;
        case 3: AccumulateHeads<3>(scores + h * n, n, j0, j1, rows, out + h * R, R); break;
        default: AccumulateHeads<kHeadTile>(scores + h * n, n, j0, j1, rows, out + h * R, R); break;
      }
    }
  }
  for (int64_t h = 0; h < nh; ++h) {
    const __m512 f = _mm512_set1_ps(inv[h]);
    for (int64_t i = 0; i < R; i += 16) {
      const __mmask16 m = TailMask(R - i);
      _mm512_mask_storeu_ps(out + h * R + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, out + h * R + i), f));
    }
  }
}

void AttendScalar(Scratch& sc, int64_t nh, int64_t n, int64_t R, int64_t W, float scale, float* out) {
  for (int64_t h = 0; h < nh; ++h) {
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
    double sum = 0.0;
    for (int64_t j = 0; j < n; ++j) sum += (s[j] = std::exp(s[j] - mx));
    float* o = out + h * R;
    std::fill(o, o + R, 0.0f);
    for (int64_t j = 0; j < n; ++j) {
      const float* row = sc.rows[j];
      const float p = s[j];
#pragma omp simd
      for (int64_t i = 0; i < R; ++i) o[i] += p * row[i];
    }
    const float inv = static_cast<float>(1.0 / sum);
    for (int64_t i = 0; i < R; ++i) o[i] *= inv;
  }
}

std::atomic<int> g_log_budget{20};

// Heads [h0, h1) of token t.
void AttendGroup(const MlaAttentionArgs& a, int64_t t, int64_t h0, int64_t h1, bool avx) {
  const int64_t R = a.cache.kv_rank, P = a.cache.rope_dim, W = R + P, nh = h1 - h0;
  const int64_t n = a.n_keys[t];
  float* out = a.out + (t * a.n_heads + h0) * R;
  if (n <= 0) {  // nothing visible: a zero output rather than the 0/0 of an empty softmax
    std::memset(out, 0, static_cast<size_t>(nh * R) * sizeof(float));
    return;
  }
  thread_local Scratch sc;
  try {
    sc.q.resize(static_cast<size_t>(nh * W));
    sc.inv_sum.resize(static_cast<size_t>(nh));
    if (sc.scores.size() < static_cast<size_t>(nh * n)) sc.scores.resize(static_cast<size_t>(nh * n));
    if (sc.rows.size() < static_cast<size_t>(n)) sc.rows.resize(static_cast<size_t>(n));
  } catch (const std::exception&) {
    if (g_log_budget.fetch_sub(1) > 0)
      Log(LogLevel::kError, "cpu backend: MlaAttention out of memory for " + std::to_string(n) + " keys; output zeroed");
    std::memset(out, 0, static_cast<size_t>(nh * R) * sizeof(float));
    return;
  }
  const int32_t* pages = a.token_pages[t];
  for (int64_t j = 0; j < n; ++j) sc.rows[j] = a.cache.Row(pages, j);
  for (int64_t h = 0; h < nh; ++h) {
    const int64_t th = t * a.n_heads + h0 + h;
    std::memcpy(sc.q.data() + h * W, a.q_latent + th * R, static_cast<size_t>(R) * sizeof(float));
    std::memcpy(sc.q.data() + h * W + R, a.q_rope + th * P, static_cast<size_t>(P) * sizeof(float));
  }
  if (avx) {
    AttendAvx512(sc, nh, n, R, W, a.scale, out);
  } else {
    AttendScalar(sc, nh, n, R, W, a.scale, out);
  }
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
  const int64_t T = a.n_tokens, H = a.n_heads;
  int64_t keys = 0;
  for (int64_t t = 0; t < T; ++t) keys += std::max<int32_t>(a.n_keys[t], 0);
  const int64_t work = keys * H * (2 * c.kv_rank + c.rope_dim);
  // Twice as many items as threads (n_keys differ per token, so dynamic scheduling evens them out),
  // but never smaller than one head.
  const int64_t threads = omp_get_max_threads();
  const int64_t groups = std::clamp<int64_t>((2 * threads + T - 1) / T, 1, H);
  const int64_t heads_per_group = (H + groups - 1) / groups;
  const int64_t groups_per_token = (H + heads_per_group - 1) / heads_per_group;
  const bool avx = features_.avx512;
#pragma omp parallel for schedule(dynamic, 1) if (work >= kMinParallelWork && T * groups_per_token > 1)
  for (int64_t item = 0; item < T * groups_per_token; ++item) {
    const int64_t t = item / groups_per_token;
    const int64_t h0 = (item % groups_per_token) * heads_per_group;
    AttendGroup(a, t, h0, std::min(H, h0 + heads_per_group), avx);
  }
}

}  // namespace moerun::cpu
