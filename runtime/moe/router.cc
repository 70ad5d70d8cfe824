#include "runtime/moe/router.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace moerun {
namespace {

// Indices of the k largest values (ties: lower index first), written in descending order.
void TopK(const float* v, int n, int k, int32_t* out) {
  for (int i = 0; i < k; ++i) out[i] = -1;
  for (int i = 0; i < n; ++i) {
    int pos = k;
    while (pos > 0 && (out[pos - 1] < 0 || v[i] > v[out[pos - 1]])) --pos;
    if (pos >= k) continue;
    for (int j = k - 1; j > pos; --j) out[j] = out[j - 1];
    out[pos] = i;
  }
}

}  // namespace

namespace {

// Router logits run on the threads from this many multiply-adds: a decode step's one token against
// V2-Lite's 64 experts of 2048 (128 Ki) splits its experts; on one thread the router took ~45 us of
// each layer's ~2.2 ms at two threads on the AMD EPYC host.
constexpr int64_t kMinParallelRouterWork = int64_t{1} << 16;

// One logit in the order every path uses: lane j of 16 sums a[d + j]·b[d + j] over the whole blocks
// of 16 (a product, then an add: this file is built with -ffp-contract=off), then the tail columns
// in order from 0, then lanes 0..15 in order.
float DotScalar(const float* a, const float* b, int64_t D) {
  float acc[16] = {0};
  int64_t d = 0;
  for (; d + 16 <= D; d += 16)
    for (int j = 0; j < 16; ++j) acc[j] += a[d + j] * b[d + j];
  float s = 0.0f;
  for (; d < D; ++d) s += a[d] * b[d];
  for (int j = 0; j < 16; ++j) s += acc[j];
  return s;
}

// DotScalar's last steps for the vector paths: the tail columns [d, D) in order from 0, then the 16
// lane sums in order.
float FinishDot(const float* a, const float* b, int64_t d, int64_t D, const float* lanes) {
  float s = 0.0f;
  for (int64_t k = d; k < D; ++k) s += a[k] * b[k];
  for (int k = 0; k < 16; ++k) s += lanes[k];
  return s;
}

// The same operations with one AVX-512 register per lane set, 4 tokens × 4 experts at a time so
// that each load feeds four products.
template <int TB, int EB>
__attribute__((target("avx512f"))) void DotBlockAvx512(const float* x, int64_t D, const float* router, int64_t E,
                                                       int64_t t0, int64_t e0, float* logits) {
  __m512 acc[TB][EB];
  for (int i = 0; i < TB; ++i)
    for (int j = 0; j < EB; ++j) acc[i][j] = _mm512_setzero_ps();
  int64_t d = 0;
  for (; d + 16 <= D; d += 16) {
    __m512 b[EB];
    for (int j = 0; j < EB; ++j) b[j] = _mm512_loadu_ps(router + (e0 + j) * D + d);
    for (int i = 0; i < TB; ++i) {
      const __m512 a = _mm512_loadu_ps(x + (t0 + i) * D + d);
      for (int j = 0; j < EB; ++j) acc[i][j] = _mm512_add_ps(acc[i][j], _mm512_mul_ps(a, b[j]));
    }
  }
  for (int i = 0; i < TB; ++i)
    for (int j = 0; j < EB; ++j) {
      alignas(64) float lanes[16];
      _mm512_store_ps(lanes, acc[i][j]);
      logits[(t0 + i) * E + e0 + j] = FinishDot(x + (t0 + i) * D, router + (e0 + j) * D, d, D, lanes);
    }
}

// Logits in blocks of TB tokens × EB experts, parallel over both (decode's single token then still
// splits its experts between the threads): Block(t0, nt, e0, ne) with nt <= TB, ne <= EB.
template <int64_t TB, int64_t EB, typename Block>
void RouterBlocks(int64_t T, int64_t D, int64_t E, Block block) {
  const int64_t tb = (T + TB - 1) / TB, eb = (E + EB - 1) / EB;
#pragma omp parallel for collapse(2) schedule(static) if (T * E * D >= kMinParallelRouterWork)
  for (int64_t b = 0; b < tb; ++b)
    for (int64_t c = 0; c < eb; ++c)
      block(TB * b, std::min(TB, T - TB * b), EB * c, std::min(EB, E - EB * c));
}

__attribute__((target("avx512f"))) void RouterLogitsAvx512(const float* x, int64_t T, int64_t D,
                                                           const float* router, int64_t E, float* logits) {
  RouterBlocks<4, 4>(T, D, E, [&](int64_t t0, int64_t nt, int64_t e0, int64_t ne) __attribute__((target("avx512f"))) {
    if (nt == 4 && ne == 4) return DotBlockAvx512<4, 4>(x, D, router, E, t0, e0, logits);
    for (int64_t t = t0; t < t0 + nt; ++t)
      for (int64_t e = e0; e < e0 + ne; ++e) DotBlockAvx512<1, 1>(x, D, router, E, t, e, logits);
  });
}

// The same on AVX2: each set of 16 lanes is two 8-lane registers (lanes 0-7, 8-15); 2 tokens × 3
// experts at a time (12 accumulators). Decode's router on a CPU without AVX-512 was otherwise the
// scalar loop: ~1% of a prefill and of a decode step on the AMD EPYC host.
template <int TB, int EB>
__attribute__((target("avx2"))) void DotBlockAvx2(const float* x, int64_t D, const float* router, int64_t E,
                                                  int64_t t0, int64_t e0, float* logits) {
  __m256 acc[TB][EB][2];
  for (int i = 0; i < TB; ++i)
    for (int j = 0; j < EB; ++j) acc[i][j][0] = acc[i][j][1] = _mm256_setzero_ps();
  int64_t d = 0;
  for (; d + 16 <= D; d += 16) {
    for (int h = 0; h < 2; ++h) {
      __m256 b[EB];
      for (int j = 0; j < EB; ++j) b[j] = _mm256_loadu_ps(router + (e0 + j) * D + d + 8 * h);
      for (int i = 0; i < TB; ++i) {
        const __m256 a = _mm256_loadu_ps(x + (t0 + i) * D + d + 8 * h);
        for (int j = 0; j < EB; ++j) acc[i][j][h] = _mm256_add_ps(acc[i][j][h], _mm256_mul_ps(a, b[j]));
      }
    }
  }
  for (int i = 0; i < TB; ++i)
    for (int j = 0; j < EB; ++j) {
      alignas(32) float lanes[16];
      _mm256_store_ps(lanes, acc[i][j][0]);
      _mm256_store_ps(lanes + 8, acc[i][j][1]);
      logits[(t0 + i) * E + e0 + j] = FinishDot(x + (t0 + i) * D, router + (e0 + j) * D, d, D, lanes);
    }
}

__attribute__((target("avx2"))) void RouterLogitsAvx2(const float* x, int64_t T, int64_t D, const float* router,
                                                      int64_t E, float* logits) {
  RouterBlocks<2, 3>(T, D, E, [&](int64_t t0, int64_t nt, int64_t e0, int64_t ne) __attribute__((target("avx2"))) {
    if (nt == 2 && ne == 3) return DotBlockAvx2<2, 3>(x, D, router, E, t0, e0, logits);
    if (nt == 1 && ne == 3) return DotBlockAvx2<1, 3>(x, D, router, E, t0, e0, logits);
    for (int64_t e = e0; e < e0 + ne; ++e) {
      if (nt == 2) {
        DotBlockAvx2<2, 1>(x, D, router, E, t0, e, logits);
      } else {
        DotBlockAvx2<1, 1>(x, D, router, E, t0, e, logits);
      }
    }
  });
}

}  // namespace

void RouterLogitsScalar(const float* x, int64_t T, int64_t D, const float* router, int64_t E, float* logits) {
#pragma omp parallel for collapse(2) schedule(static) if (T * E * D >= kMinParallelRouterWork)
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < E; ++e) logits[t * E + e] = DotScalar(x + t * D, router + e * D, D);
}

void RouterLogits(const float* x, int64_t T, int64_t D, const float* router, int64_t E, float* logits) {
  static const bool avx512 = __builtin_cpu_supports("avx512f"), avx2 = __builtin_cpu_supports("avx2");
  (avx512 ? RouterLogitsAvx512 : avx2 ? RouterLogitsAvx2 : RouterLogitsScalar)(x, T, D, router, E, logits);
}

void RouteToken(const ModelConfig& c, const float* logits, const float* bias, float* scratch, int32_t* experts,
                float* weights) {
  const int E = static_cast<int>(c.n_routed_experts);
  const int K = static_cast<int>(c.num_experts_per_tok);
  const int G = static_cast<int>(c.n_group);
  const int per_group = E / G;
  float* scores = scratch;       // [E] scores used as weights
  float* choice = scratch + E;   // [E] scores used for selection
  float* group = scratch + 2 * E;  // [G]

  if (c.scoring_func == ScoringFunc::kSoftmax) {
    float mx = -std::numeric_limits<float>::infinity();
    for (int e = 0; e < E; ++e) mx = std::max(mx, logits[e]);
    float sum = 0.0f;
    for (int e = 0; e < E; ++e) sum += (scores[e] = std::exp(logits[e] - mx));
    for (int e = 0; e < E; ++e) scores[e] /= sum;
  } else {
    for (int e = 0; e < E; ++e) scores[e] = 1.0f / (1.0f + std::exp(-logits[e]));
  }
  for (int e = 0; e < E; ++e) choice[e] = scores[e] + (bias ? bias[e] : 0.0f);

  if (c.topk_method != TopkMethod::kGreedy && G > 1) {
    for (int g = 0; g < G; ++g) {
      const float* cg = choice + g * per_group;
      if (c.topk_method == TopkMethod::kGroupLimitedGreedy) {
        group[g] = *std::max_element(cg, cg + per_group);
      } else {  // noaux_tc: sum of the two largest biased scores in the group
        int32_t top2[2];
        TopK(cg, per_group, 2, top2);
        group[g] = cg[top2[0]] + cg[top2[1]];
      }
    }
    // Keep the topk_group best groups (ties: lower index). transformers masks the dropped groups with
    // 0 (softmax scores, V2) or -inf (noaux_tc, V3).
    float* kept = group + G;
    for (int g = 0; g < G; ++g) kept[g] = 0.0f;
    for (uint32_t j = 0; j < c.topk_group; ++j) {
      int best = -1;
      for (int g = 0; g < G; ++g)
        if (kept[g] == 0.0f && (best < 0 || group[g] > group[best])) best = g;
      kept[best] = 1.0f;
    }
    const float masked = c.topk_method == TopkMethod::kNoauxTc ? -std::numeric_limits<float>::infinity() : 0.0f;
    for (int g = 0; g < G; ++g)
      if (kept[g] == 0.0f)
        for (int e = g * per_group; e < (g + 1) * per_group; ++e) choice[e] = masked;
  }
  TopK(choice, E, K, experts);
  float sum = 0.0f;
  for (int k = 0; k < K; ++k) sum += (weights[k] = scores[experts[k]]);
  // transformers' DeepseekV2 never renormalises; V3 renormalises when norm_topk_prob is set.
  const bool renormalise = c.architecture == Architecture::kDeepseekV3 && c.norm_topk_prob;
  for (int k = 0; k < K; ++k) {
    if (renormalise) weights[k] /= (sum + 1e-20f);
    weights[k] *= c.routed_scaling_factor;
  }
}

}  // namespace moerun
