#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <random>
#include <vector>

#include "runtime/exec/sampler.h"
#include "runtime/moe/router.h"

namespace moerun {
namespace {

ModelConfig V3Router() {
  ModelConfig c;
  c.architecture = Architecture::kDeepseekV3;
  c.n_routed_experts = 8;
  c.num_experts_per_tok = 2;
  c.n_group = 4;
  c.topk_group = 2;
  c.scoring_func = ScoringFunc::kSigmoid;
  c.topk_method = TopkMethod::kNoauxTc;
  c.norm_topk_prob = true;
  c.routed_scaling_factor = 2.5f;
  return c;
}

TEST(Router, NoauxTcUsesBiasForChoiceOnlyAndGroupsByTopTwoSum) {
  const ModelConfig c = V3Router();
  // Groups {0,1} {2,3} {4,5} {6,7}. Without bias expert 7 has the top score, but the bias makes
  // group 0 and 1 win on the sum of their two best biased scores.
  const float logits[8] = {0.5f, 0.4f, 0.3f, 0.2f, -1.0f, -1.0f, -2.0f, 3.0f};
  const float bias[8] = {0.5f, 0.5f, 0.5f, 0.5f, 0.0f, 0.0f, 0.0f, 0.0f};
  float scratch[2 * (8 + 4)];
  int32_t ex[2];
  float w[2];
  RouteToken(c, logits, bias, scratch, ex, w);
  EXPECT_EQ(ex[0], 0);
  EXPECT_EQ(ex[1], 1);
  const float s0 = 1.0f / (1.0f + std::exp(-0.5f)), s1 = 1.0f / (1.0f + std::exp(-0.4f));
  EXPECT_NEAR(w[0], s0 / (s0 + s1) * 2.5f, 1e-6);  // weights from unbiased scores, renormalised
  EXPECT_NEAR(w[1], s1 / (s0 + s1) * 2.5f, 1e-6);
}

TEST(Router, SoftmaxGreedyDoesNotRenormalise) {
  ModelConfig c;
  c.architecture = Architecture::kDeepseekV2;
  c.n_routed_experts = 4;
  c.num_experts_per_tok = 2;
  c.norm_topk_prob = true;  // transformers' V2 ignores it
  c.routed_scaling_factor = 1.0f;
  const float logits[4] = {1.0f, 3.0f, 2.0f, 0.0f};
  float scratch[2 * (4 + 1)];
  int32_t ex[2];
  float w[2];
  RouteToken(c, logits, nullptr, scratch, ex, w);
  const double z = std::exp(1.0) + std::exp(3.0) + std::exp(2.0) + 1.0;
  EXPECT_EQ(ex[0], 1);
  EXPECT_EQ(ex[1], 2);
  EXPECT_NEAR(w[0], std::exp(3.0) / z, 1e-6);
  EXPECT_NEAR(w[1], std::exp(2.0) / z, 1e-6);
}

TEST(Router, GroupLimitedGreedyMasksGroupsByMax) {
  ModelConfig c;
  c.architecture = Architecture::kDeepseekV2;
  c.n_routed_experts = 6;
  c.num_experts_per_tok = 2;
  c.n_group = 3;
  c.topk_group = 1;
  c.topk_method = TopkMethod::kGroupLimitedGreedy;
  c.routed_scaling_factor = 16.0f;
  // Group 1 ({2,3}) has the single best expert; group 0 has the better pair, but only one group stays.
  const float logits[6] = {2.0f, 2.0f, 2.5f, -3.0f, 0.0f, 0.0f};
  float scratch[2 * (6 + 3)];
  int32_t ex[2];
  float w[2];
  RouteToken(c, logits, nullptr, scratch, ex, w);
  EXPECT_EQ(ex[0], 2);
  EXPECT_EQ(ex[1], 3);
  double z = 0;
  for (float l : logits) z += std::exp(l);
  EXPECT_NEAR(w[0], std::exp(2.5) / z * 16.0, 1e-5);
}

// The vectorised router logits must be the portable ones bit for bit (routing flips on the last bit
// of a near-tie), for shapes with partial token/expert blocks and a column tail; and both must be the
// dot product (checked against double precision).
TEST(Router, LogitsPathsAgreeBitForBit) {
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  struct Shape { int64_t T, E, D; };
  for (const Shape sh : {Shape{1, 64, 2048}, Shape{5, 6, 37}, Shape{9, 3, 16}, Shape{512, 64, 2048}, Shape{7, 65, 2053}}) {
    std::vector<float> x(sh.T * sh.D), r(sh.E * sh.D), fast(sh.T * sh.E, -1.0f), slow(sh.T * sh.E, -2.0f);
    for (float& v : x) v = nd(rng);
    for (float& v : r) v = nd(rng) / 45.0f;
    RouterLogits(x.data(), sh.T, sh.D, r.data(), sh.E, fast.data());
    RouterLogitsScalar(x.data(), sh.T, sh.D, r.data(), sh.E, slow.data());
    EXPECT_EQ(std::memcmp(fast.data(), slow.data(), fast.size() * sizeof(float)), 0)
        << "T=" << sh.T << " E=" << sh.E << " D=" << sh.D;
    for (int64_t t = 0; t < sh.T; t += 3)
      for (int64_t e = 0; e < sh.E; ++e) {
        double ref = 0.0;
        for (int64_t d = 0; d < sh.D; ++d) ref += double(x[t * sh.D + d]) * r[e * sh.D + d];
        ASSERT_NEAR(fast[t * sh.E + e], ref, 1e-4) << "t=" << t << " e=" << e;
      }
  }
}

TEST(Sampler, GreedyIsArgmaxLowestIdOnTies) {
  Sampler s(SamplerParams{});
  const float l[5] = {0.0f, 2.0f, 2.0f, NAN, -1.0f};
  EXPECT_EQ(s.Sample(l, 5), 1);
}

// Greedy over a vocabulary's worth of logits: the largest that is not NaN, lowest id on ties, 0 when
// all are NaN; the maximum placed in every lane of a vector and in the tail past the last 8.
TEST(Sampler, ArgmaxOverLongRows) {
  auto reference = [](const std::vector<float>& l) {
    int64_t best = 0;
    for (int64_t i = 1; i < static_cast<int64_t>(l.size()); ++i)
      if (l[i] > l[best] || (std::isnan(l[best]) && !std::isnan(l[i]))) best = i;
    return static_cast<int32_t>(best);
  };
  std::mt19937 rng(21);
  std::normal_distribution<float> nd(0.0f, 3.0f);
  const float inf = std::numeric_limits<float>::infinity();
  for (int64_t n : {1, 7, 8, 9, 100003}) {
    std::vector<float> l(static_cast<size_t>(n));
    for (float& v : l) v = nd(rng);
    for (int64_t i = 0; i < n; i += 97) l[i] = NAN;
    std::vector<int64_t> places = {0, n - 1};
    for (int64_t r = 0; r < 8; ++r) places.push_back(std::min(n - 1, 8 * (n / 16) + r));  // every lane
    for (int64_t at : places) {
      std::vector<float> c = l;
      c[at] = 50.0f;
      EXPECT_EQ(Sampler::Argmax(c.data(), n), at) << n << " " << at;
      if (at + 13 < n) c[at + 13] = 50.0f;  // a tie in another lane: the lower id wins
      EXPECT_EQ(Sampler::Argmax(c.data(), n), at) << n << " " << at << ", tied";
      EXPECT_EQ(Sampler::Argmax(c.data(), n), reference(c));
    }
    std::vector<float> nans(static_cast<size_t>(n), NAN);
    EXPECT_EQ(Sampler::Argmax(nans.data(), n), 0);
    nans[n - 1] = -inf;  // the only number: it wins though it is -inf
    EXPECT_EQ(Sampler::Argmax(nans.data(), n), n - 1);
    std::vector<float> low(static_cast<size_t>(n), -inf);
    low[0] = NAN;
    EXPECT_EQ(Sampler::Argmax(low.data(), n), reference(low));
    EXPECT_EQ(Sampler::Argmax(l.data(), n), reference(l));
  }
}

TEST(Sampler, SeedIsReproducibleAndTopKRestricts) {
  SamplerParams p;
  p.temperature = 1.0f;
  p.top_k = 3;
  p.seed = 42;
  std::vector<float> logits(50);
  for (int i = 0; i < 50; ++i) logits[i] = std::sin(i * 0.7f) * 3.0f;
  Sampler a(p), b(p);
  std::map<int, int> counts;
  for (int i = 0; i < 300; ++i) {
    const int32_t x = a.Sample(logits.data(), 50);
    EXPECT_EQ(x, b.Sample(logits.data(), 50));
    counts[x]++;
  }
  EXPECT_LE(counts.size(), 3u);
  EXPECT_GE(counts.size(), 2u);
  p.seed = 43;
  Sampler c(p);
  Sampler d(SamplerParams{1.0f, 3, 1.0f, 0.0f, 42});
  int differ = 0;
  for (int i = 0; i < 50; ++i) differ += c.Sample(logits.data(), 50) != d.Sample(logits.data(), 50);
  EXPECT_GT(differ, 0);
}

TEST(Sampler, TopPAndMinPKeepOnlyTheHead) {
  const float logits[4] = {5.0f, 4.0f, 0.0f, -5.0f};
  SamplerParams p;
  p.temperature = 1.0f;
  p.top_p = 0.5f;  // token 0 alone has p ≈ 0.73
  p.seed = 1;
  Sampler s(p);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(s.Sample(logits, 4), 0);
  p.top_p = 1.0f;
  p.min_p = 0.2f;  // keeps tokens 0 and 1 (0.27/0.73 > 0.2), drops 2 and 3
  Sampler m(p);
  for (int i = 0; i < 200; ++i) EXPECT_LE(m.Sample(logits, 4), 1);
}

TEST(Sampler, ValidateRejectsBadParameters) {
  EXPECT_FALSE(Sampler::Validate({-1.0f, 0, 1.0f, 0.0f, 0}).ok());
  EXPECT_FALSE(Sampler::Validate({NAN, 0, 1.0f, 0.0f, 0}).ok());
  EXPECT_FALSE(Sampler::Validate({1.0f, -2, 1.0f, 0.0f, 0}).ok());
  EXPECT_FALSE(Sampler::Validate({1.0f, 0, 0.0f, 0.0f, 0}).ok());
  EXPECT_FALSE(Sampler::Validate({1.0f, 0, 1.5f, 0.0f, 0}).ok());
  EXPECT_FALSE(Sampler::Validate({1.0f, 0, 1.0f, 1.0f, 0}).ok());
  EXPECT_TRUE(Sampler::Validate({0.7f, 40, 0.9f, 0.05f, 7}).ok());
}

}  // namespace
}  // namespace moerun
