// Backend::MoeExperts, LinearSameInput and LinearBatch over one x: the CPU backend's int8 shortcuts
// (an input quantised once and shared by several weights) must give the default's numbers bit for
// bit, on 1 and 2 threads, with 1 row (VNNI) up to several 16-row AMX blocks.
#include <gtest/gtest.h>
#include <omp.h>

#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "backends/backend.h"
#include "tests/unit/numeric_test_util.h"
#include "tests/unit/q8_test_util.h"

namespace moerun {
namespace {

using test::Q8Weight;
using test::RandomVector;
using test::RandomWeight;

std::unique_ptr<Backend> Bf16Cpu() {
  auto b = CreateBackend("cpu", Precision::kBF16);
  EXPECT_TRUE(b.ok());
  return b.ok() ? std::move(b).value() : nullptr;
}

// Random int8 routed experts of D = 300, I = 136 over slots grouped by expert (counts: slots per
// expert), slot s reading token (s·7 + 3) mod T, and the scratch and output of one MoeExperts call.
struct Experts {
  static constexpr int64_t D = 300, I = 136;
  std::vector<Q8Weight> weights;  // gate, up, down per expert
  std::vector<WeightView> gv, uv, dv;
  std::vector<int64_t> counts, begin;
  std::vector<int32_t> slot_token;
  int64_t S = 0, T = 0;
  std::vector<float> gathered, g, u, y;

  Experts(const std::vector<int64_t>& slots, int64_t tokens, std::mt19937& rng) : counts(slots), T(tokens) {
    const int64_t E = static_cast<int64_t>(counts.size());
    for (int64_t e = 0; e < E; ++e) {
      weights.push_back(RandomWeight(I, D, rng));
      weights.push_back(RandomWeight(I, D, rng));
      weights.push_back(RandomWeight(D, I, rng));
      begin.push_back(S);
      S += counts[e];
    }
    for (int64_t e = 0; e < E; ++e) {
      gv.push_back(weights[3 * e].view());
      uv.push_back(weights[3 * e + 1].view());
      dv.push_back(weights[3 * e + 2].view());
    }
    slot_token.resize(static_cast<size_t>(S));
    for (int64_t s = 0; s < S; ++s) slot_token[s] = static_cast<int32_t>((s * 7 + 3) % T);
  }
  // Args over x [T, D] with fresh scratch and y filled with -1.
  MoeExpertsArgs Args(const float* x) {
    gathered.assign(static_cast<size_t>(S * D), 0.0f);
    g.assign(static_cast<size_t>(S * I), 0.0f);
    u.assign(static_cast<size_t>(S * I), 0.0f);
    y.assign(static_cast<size_t>(S * D), -1.0f);
    MoeExpertsArgs a;
    a.x = x;
    a.T = T;
    a.D = D;
    a.I = I;
    a.slot_token = slot_token.data();
    a.n_active = static_cast<int64_t>(counts.size());
    a.begin = begin.data();
    a.count = counts.data();
    a.gate = gv.data();
    a.up = uv.data();
    a.down = dv.data();
    a.gathered = gathered.data();
    a.g = g.data();
    a.u = u.data();
    a.y = y.data();
    return a;
  }
};

// counts: slots per expert; few slots in all (decode) take the CPU backend's jobs path, many the
// expert-per-thread one.
void ExpectInt8PathMatchesDefault(const std::vector<int64_t>& counts, int64_t T, uint32_t seed) {
  auto be = Bf16Cpu();
  ASSERT_TRUE(be);
  std::mt19937 rng(seed);
  Experts ex(counts, T, rng);
  const int64_t D = Experts::D, S = ex.S;
  const std::vector<float> x = RandomVector(T * D, rng);
  for (int threads : {1, 2}) {
    omp_set_num_threads(threads);
    std::vector<float> y[2];
    for (int path = 0; path < 2; ++path) {
      const MoeExpertsArgs a = ex.Args(x.data());
      if (path == 0) {
        be->MoeExperts(a);
      } else {
        be->Backend::MoeExperts(a);
      }
      y[path] = ex.y;
    }
    EXPECT_EQ(std::memcmp(y[0].data(), y[1].data(), y[0].size() * sizeof(float)), 0) << threads << " threads";
    // Not vacuous: the experts wrote finite, non-constant rows.
    EXPECT_NE(y[0][0], -1.0f);
    EXPECT_NE(y[0][0], y[0][(S - 1) * D + 7]);
  }
}

TEST(MoeExperts, CpuInt8PathMatchesDefaultBitForBit) {
  // 106 slots = 2 per token, counts from 1 to 40 (VNNI rows up to several 16-row AMX blocks).
  ExpectInt8PathMatchesDefault({40, 34, 16, 15, 1}, 53, 11);
}

TEST(MoeExperts, CpuInt8JobsPathMatchesDefaultBitForBit) {
  // Decode: one token on 6 experts, and three tokens on 9 experts (13 slots; 1 to 3 rows each).
  ExpectInt8PathMatchesDefault({1, 1, 1, 1, 1, 1}, 1, 12);
  ExpectInt8PathMatchesDefault({3, 2, 2, 1, 1, 1, 1, 1, 1}, 3, 13);
}

// The shared experts in the same call as the routed ones (MoeExpertsArgs::shared): their output is
// that of the shared MLP run on its own (LinearSameInput, SiluMul, Linear), and the routed outputs
// are those of a call without them, bit for bit, on 1 and 2 threads, on the CPU backend's jobs path
// (few slots), its per-expert path and the default.
void ExpectSharedMatchesSeparate(const std::vector<int64_t>& counts, int64_t T, uint32_t seed) {
  auto be = Bf16Cpu();
  ASSERT_TRUE(be);
  std::mt19937 rng(seed);
  Experts ex(counts, T, rng);
  constexpr int64_t D = Experts::D, Is = 280;
  const Q8Weight sg = RandomWeight(Is, D, rng), su = RandomWeight(Is, D, rng), sd = RandomWeight(D, Is, rng);
  const std::vector<float> x = RandomVector(T * D, rng);
  for (int threads : {1, 2})
    for (int use_default = 0; use_default < 2; ++use_default) {
      omp_set_num_threads(threads);
      std::vector<float> y[2], ys[2];
      for (int fused = 0; fused < 2; ++fused) {
        std::vector<float> sg_out(T * Is), su_out(T * Is);
        ys[fused].assign(static_cast<size_t>(T * D), -1.0f);
        SharedMlpArgs sh;
        sh.gate = sg.view();
        sh.up = su.view();
        sh.down = sd.view();
        sh.I = Is;
        sh.g = sg_out.data();
        sh.u = su_out.data();
        sh.y = ys[fused].data();
        MoeExpertsArgs a = ex.Args(x.data());
        a.shared = fused ? &sh : nullptr;
        if (!fused) {  // the shared MLP on its own, as the executor ran it before
          const WeightView w[2] = {sh.gate, sh.up};
          float* const out[2] = {sh.g, sh.u};
          const int64_t ld[2] = {Is, Is};
          be->LinearSameInput(w, 2, x.data(), D, T, out, ld);
          be->SiluMul(sh.g, sh.u, sh.g, T * Is);
          be->Linear(sh.down, sh.g, Is, T, sh.y, D);
        }
        if (use_default) {
          be->Backend::MoeExperts(a);
        } else {
          be->MoeExperts(a);
        }
        y[fused] = ex.y;
      }
      const std::string where = std::to_string(threads) + " threads" + (use_default ? ", default" : "");
      EXPECT_EQ(std::memcmp(ys[0].data(), ys[1].data(), ys[0].size() * sizeof(float)), 0) << where;
      EXPECT_EQ(std::memcmp(y[0].data(), y[1].data(), y[0].size() * sizeof(float)), 0) << where;
      EXPECT_NE(ys[1][0], -1.0f);  // not vacuous: the shared MLP wrote every row
      EXPECT_NE(ys[1][(T - 1) * D + 5], -1.0f);
      EXPECT_NE(ys[1][0], ys[1][(T - 1) * D + 5]);
    }
}

TEST(MoeExperts, SharedInTheSameCallMatchesSharedAlone) {
  ExpectSharedMatchesSeparate({1, 1, 1, 1, 1, 1}, 1, 21);                // decode: the jobs path
  ExpectSharedMatchesSeparate({3, 2, 2, 1, 1, 1, 1, 1, 1}, 3, 22);       // a few tokens: jobs
  ExpectSharedMatchesSeparate({40, 34, 16, 15, 1}, 53, 23);              // many slots: per expert
}

TEST(MoeExperts, CpuLinearSameInputMatchesSeparateLinears) {
  auto be = Bf16Cpu();
  ASSERT_TRUE(be);
  std::mt19937 rng(12);
  for (const int64_t M : {1, 9, 48}) {
    constexpr int64_t K = 260, ldx = 270;
    const Q8Weight a = RandomWeight(96, K, rng), b = RandomWeight(33, K, rng);
    const WeightView w[2] = {a.view(), b.view()};
    const std::vector<float> x = RandomVector(M * ldx, rng);
    std::vector<float> ya(M * 100, -1.0f), yb(M * 40, -1.0f), ra(M * 100, -1.0f), rb(M * 40, -1.0f);
    float* const y[2] = {ya.data(), yb.data()};
    const int64_t ldy[2] = {100, 40};
    be->LinearSameInput(w, 2, x.data(), ldx, M, y, ldy);
    be->Linear(w[0], x.data(), ldx, M, ra.data(), 100);
    be->Linear(w[1], x.data(), ldx, M, rb.data(), 40);
    EXPECT_EQ(std::memcmp(ya.data(), ra.data(), ya.size() * sizeof(float)), 0) << "M=" << M;
    EXPECT_EQ(std::memcmp(yb.data(), rb.data(), yb.size() * sizeof(float)), 0) << "M=" << M;
    EXPECT_EQ(ya[96], -1.0f);  // columns past the weight's rows untouched
  }
}

// LinearBatch against one Linear per item, on 1 and 2 threads: H items of N x K, row stride ldx, and
// item h's input at x + h·x_step.
void ExpectLinearBatchMatchesSeparateLinears(int64_t H, int64_t N, int64_t K, int64_t x_step, int64_t ldx,
                                             std::initializer_list<int64_t> rows, uint32_t seed) {
  auto be = Bf16Cpu();
  ASSERT_TRUE(be);
  std::mt19937 rng(seed);
  const int64_t ldy = N + 2;
  for (int threads : {1, 2})
    for (const int64_t M : rows) {
      omp_set_num_threads(threads);
      std::vector<Q8Weight> heads;
      std::vector<WeightView> w;
      for (int64_t h = 0; h < H; ++h) heads.push_back(RandomWeight(N, K, rng));
      for (const Q8Weight& q : heads) w.push_back(q.view());
      const std::vector<float> x = RandomVector(M * ldx, rng);
      const int64_t y_step = M * ldy;
      std::vector<float> y(H * y_step, -1.0f), want(H * y_step, -1.0f);
      be->LinearBatch(w.data(), H, x.data(), x_step, ldx, M, y.data(), y_step, ldy);
      for (int64_t h = 0; h < H; ++h) be->Linear(w[h], x.data() + h * x_step, ldx, M, want.data() + h * y_step, ldy);
      EXPECT_EQ(std::memcmp(y.data(), want.data(), y.size() * sizeof(float)), 0) << "M=" << M << ", " << threads << " threads";
      EXPECT_EQ(y[M == 1 ? N : ldy - 1], -1.0f);  // past a row's N columns untouched
      EXPECT_NE(y[0], y[(H - 1) * y_step + 3]);
    }
}

// MLA's key expansion: every head's W_UV over the same keys (x_step 0), items across threads or not.
TEST(MoeExperts, CpuLinearBatchOverOneInputMatchesSeparateLinears) {
  ExpectLinearBatchMatchesSeparateLinears(5, 40, 200, 0, 210, {1, 20, 70}, 13);
}

// MLA's per-head matrices at decode: every head its own input (x_step > 0). Few rows take the jobs
// path (all inputs quantised at once, runs of panels across heads), 20 rows the per-item one.
TEST(MoeExperts, CpuLinearBatchPerItemInputsMatchesSeparateLinears) {
  ExpectLinearBatchMatchesSeparateLinears(16, 128, 200, 200, 16 * 200 + 10, {1, 3, 20}, 14);
}

}  // namespace
}  // namespace moerun
