// Batches for MLA attention, shared by its tests (mla_values_test.cc, mla_values_amx_test.cc,
// mla_latent_amx_test.cc): sequences of one paged cache, their values, a run of the values path; and
// the bf16 rounding that the AMX tests model.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "backends/backend.h"
#include "backends/cpu/q8_kernels.h"
#include "tests/unit/numeric_test_util.h"

namespace moerun::test {

inline constexpr float kSentinel = 12345.0f;

// Whether this CPU runs the AMX-BF16 kernels; recorded as a test property, and said on stdout when
// not (the tests of `what` then check only the fallback).
inline bool HaveAmxBf16(const char* what) {
  const bool yes = cpu::q8::DetectSupport().amx_bf16;
  ::testing::Test::RecordProperty("amx_bf16", yes ? 1 : 0);
  if (!yes) std::printf("%s: no AMX-BF16 here; only the f32 fallback of bf16 precision is checked\n", what);
  return yes;
}

// x rounded to bf16, nearest even.
inline float Bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
  std::memcpy(&x, &u, 4);
  return x;
}

// The two bf16 neighbours of x > 0 (lo <= x < hi).
inline void Bf16Neighbours(float x, float* lo, float* hi) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  u &= 0xffff0000u;
  std::memcpy(lo, &u, 4);
  u += 0x10000u;
  std::memcpy(hi, &u, 4);
}

// A batch over several sequences of one paged cache. Sequence s has cached[s] keys before the batch
// and new[s] tokens in it; the batch lists the tokens in the order given by `order` (sequence ids).
struct ValuesCase {
  int64_t H, R, P, dv, page_size, T = 0;
  std::vector<std::vector<int32_t>> tables;  // per sequence
  std::vector<int64_t> seq_keys;             // per sequence: keys to expand (cached + new)
  std::vector<int64_t> seq_first;            // per sequence: first row in V
  std::vector<int32_t> seq_of, n_keys;       // per token
  std::vector<const int32_t*> token_pages;
  std::vector<float> pool, q_latent, q_rope, uv;  // uv: [H, dv, R]
  std::vector<float> values;                      // [H, K, dv]
  std::vector<const float*> token_values;
  int64_t K = 0;
  // The keys form (AddKeysForm; dk = 0 without): q^N [T, H, dk], W_UK [H, dk, R], K [H, K, dk].
  int64_t dk = 0;
  std::vector<float> q_nope, uk, keys;
  std::vector<const float*> token_keys;

  MlaAttentionArgs Args() const {
    MlaAttentionArgs a;
    a.n_tokens = T;
    a.n_heads = H;
    a.q_latent = q_latent.data();
    a.q_rope = q_rope.data();
    a.cache = {pool.data(), page_size, R, P};
    a.token_pages = token_pages.data();
    a.n_keys = n_keys.data();
    a.scale = 0.09f;
    return a;
  }
};

// Every cached key's latent ĉ_j through per-head matrices w [H, width, R], in double: out[h, j, :] =
// w^h ĉ_j ([H, K, width], RunMla's layout of V and K).
inline std::vector<float> ExpandInDouble(const ValuesCase& c, const std::vector<float>& w, int64_t width) {
  std::vector<float> out(static_cast<size_t>(c.H * c.K * width), 0.0f);
  const LatentCacheView view{c.pool.data(), c.page_size, c.R, c.P};
  for (size_t s = 0; s < c.seq_keys.size(); ++s)
    for (int64_t j = 0; j < c.seq_keys[s]; ++j) {
      const float* row = view.Row(c.tables[s].data(), j);
      for (int64_t h = 0; h < c.H; ++h)
        for (int64_t i = 0; i < width; ++i) {
          double acc = 0.0;
          for (int64_t r = 0; r < c.R; ++r) acc += static_cast<double>(w[(h * width + i) * c.R + r]) * row[r];
          out[(h * c.K + c.seq_first[s] + j) * width + i] = static_cast<float>(acc);
        }
    }
  return out;
}

inline ValuesCase MakeValuesCase(int64_t H, int64_t R, int64_t P, int64_t dv, int64_t page_size,
                                 const std::vector<int64_t>& cached, const std::vector<int32_t>& order,
                                 bool shuffle_pages, std::mt19937& rng) {
  ValuesCase c;
  c.H = H, c.R = R, c.P = P, c.dv = dv, c.page_size = page_size;
  const int64_t n_seq = static_cast<int64_t>(cached.size());
  std::vector<int64_t> added(n_seq, 0);
  for (int32_t s : order) ++added[s];
  int64_t n_pages = 0;
  for (int64_t s = 0; s < n_seq; ++s) n_pages += (cached[s] + added[s] + page_size - 1) / page_size;
  std::vector<int32_t> all(n_pages);
  std::iota(all.begin(), all.end(), 0);
  if (shuffle_pages) std::shuffle(all.begin(), all.end(), rng);
  int64_t next = 0;
  for (int64_t s = 0; s < n_seq; ++s) {
    const int64_t np = (cached[s] + added[s] + page_size - 1) / page_size;
    c.tables.emplace_back(all.begin() + next, all.begin() + next + np);
    c.tables.back().push_back(0);  // never empty
    next += np;
    c.seq_keys.push_back(cached[s] + added[s]);
    c.seq_first.push_back(c.K);
    c.K += cached[s] + added[s];
  }
  c.pool = RandomVector(static_cast<size_t>(std::max<int64_t>(n_pages, 1) * page_size * (R + P)), rng, 0.7f);
  std::vector<int64_t> pos(cached.begin(), cached.end());
  for (int32_t s : order) {
    c.seq_of.push_back(s);
    c.n_keys.push_back(static_cast<int32_t>(++pos[s]));
  }
  c.T = static_cast<int64_t>(order.size());
  for (int64_t t = 0; t < c.T; ++t) c.token_pages.push_back(c.tables[c.seq_of[t]].data());
  c.q_latent = RandomVector(c.T * H * R, rng, 0.2f);
  c.q_rope = RandomVector(c.T * H * P, rng, 0.5f);
  c.uv = RandomVector(H * dv * R, rng, 1.0f / std::sqrt(static_cast<float>(R)));
  // V[h, j, :] = W_UV^h ĉ_j, in double, in RunMla's layout.
  c.values = ExpandInDouble(c, c.uv, dv);
  for (int64_t t = 0; t < c.T; ++t) c.token_values.push_back(c.values.data() + c.seq_first[c.seq_of[t]] * dv);
  return c;
}

// Gives c a keys form with k_dim dk: random q^N and W_UK, the absorbed queries made q_latent[t, h] =
// W_UK^hᵀ q^N[t, h] (so both forms score alike), and K[h, j] = W_UK^h ĉ_j, in double.
inline void AddKeysForm(ValuesCase& c, int64_t dk, std::mt19937& rng) {
  const int64_t H = c.H, R = c.R, T = c.T;
  c.dk = dk;
  c.q_nope = RandomVector(T * H * dk, rng, 0.3f);
  c.uk = RandomVector(H * dk * R, rng, 1.0f / std::sqrt(static_cast<float>(dk)));
  for (int64_t th = 0; th < T * H; ++th)
    for (int64_t r = 0; r < R; ++r) {
      double acc = 0.0;
      for (int64_t d = 0; d < dk; ++d)
        acc += static_cast<double>(c.uk[((th % H) * dk + d) * R + r]) * c.q_nope[th * dk + d];
      c.q_latent[th * R + r] = static_cast<float>(acc);
    }
  c.keys = ExpandInDouble(c, c.uk, dk);
  c.token_keys.clear();
  for (int64_t t = 0; t < T; ++t) c.token_keys.push_back(c.keys.data() + c.seq_first[c.seq_of[t]] * dk);
}

// The values path's args for c (its keys form when c has one), writing to out.
inline MlaAttentionArgs ValuesArgs(const ValuesCase& c, float* out) {
  MlaAttentionArgs a = c.Args();
  a.values = c.token_values.data();
  a.v_dim = c.dv;
  a.v_head_stride = c.K * c.dv;
  if (c.dk > 0) {
    a.keys = c.token_keys.data();
    a.q_nope = c.q_nope.data();
    a.q_latent = nullptr;
    a.k_dim = c.dk;
    a.k_head_stride = c.K * c.dk;
  }
  a.out = out;
  return a;
}

// Runs the values path of `be` on c; checks that nothing is written past the output.
inline std::vector<float> RunValues(const Backend& be, const ValuesCase& c) {
  std::vector<float> got(c.T * c.H * c.dv + 64, kSentinel);  // 64 past the end: nothing may write there
  be.MlaAttention(ValuesArgs(c, got.data()));
  for (size_t i = c.T * c.H * c.dv; i < got.size(); ++i) EXPECT_EQ(got[i], kSentinel) << "wrote past the output";
  got.resize(c.T * c.H * c.dv);
  return got;
}

}  // namespace moerun::test
