// The threading contract of include/moerun/moerun.h, exercised through the C ABI: one model shared by
// many threads, each with its own session and sampler seed, gives exactly the tokens of the same runs
// done one at a time; sessions keep the weights alive after the model handle is destroyed.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "converters/converter.h"
#include "moerun/moerun.h"
#include "tests/api/test_dir.h"

namespace {

std::string ConvertedModel(const char* fixture, moerun::convert::WeightsMode mode) {
  const std::string p = moerun::testing::TestDir() + "/concurrency_" + fixture + "_" +
                        moerun::convert::WeightsModeName(mode) + ".moerun";
  moerun::convert::ConvertOptions o;
  o.weights = mode;
  const moerun::Status st =
      moerun::convert::ConvertHfCheckpoint(std::string(MOERUN_TEST_DATA_DIR "/golden/") + fixture, p, o);
  EXPECT_TRUE(st.ok()) << st.message();
  return p;
}

struct GenerationResult {
  moerun_status status = MOERUN_ERR_INTERNAL;
  std::vector<int32_t> tokens;
};

// One generation on its own session: 12 prompt tokens, 40 sampled tokens with `seed`.
GenerationResult Generate(moerun_model* model, uint64_t seed) {
  GenerationResult r;
  moerun_session_options so;
  moerun_session_options_init(&so);
  so.kv_capacity = 128;
  // The same in both modes, so every kernel splits its work the same way. The ThreadSanitizer run
  // sets MOERUN_TEST_OMP_THREADS=1: libgomp is not instrumented, so its barriers would show up as races.
  const char* omp = std::getenv("MOERUN_TEST_OMP_THREADS");
  so.n_threads = omp ? std::atoi(omp) : 2;
  moerun_session* session = nullptr;
  r.status = moerun_session_create(model, &so, &session);
  if (r.status != MOERUN_OK) return r;
  moerun_sampler_options sopt;
  moerun_sampler_options_init(&sopt);
  sopt.temperature = 0.9f;
  sopt.top_p = 0.95f;
  sopt.seed = seed;
  moerun_sampler* sampler = nullptr;
  r.status = moerun_sampler_create(&sopt, &sampler);
  if (r.status == MOERUN_OK) {
    std::vector<int32_t> prompt;
    for (int i = 0; i < 12; ++i) prompt.push_back(static_cast<int32_t>((seed * 131 + i * 17) % 200));
    r.tokens.resize(40);
    uint32_t n = 0;
    r.status = moerun_generate(session, sampler, 0, prompt.data(), static_cast<uint32_t>(prompt.size()), 40, nullptr,
                               nullptr, r.tokens.data(), &n);
    r.tokens.resize(n);
  }
  moerun_sampler_destroy(sampler);
  moerun_session_destroy(session);
  return r;
}

class Concurrency : public ::testing::TestWithParam<moerun::convert::WeightsMode> {};

TEST_P(Concurrency, ThreadsGiveTheSequentialResults) {
  const std::string path = ConvertedModel("v3_bf16", GetParam());
  moerun_model_options mo;
  moerun_model_options_init(&mo);
  mo.precision = MOERUN_PRECISION_BF16;
  moerun_model* model = nullptr;
  ASSERT_EQ(moerun_model_load(path.c_str(), &mo, &model), MOERUN_OK) << moerun_last_error();
  constexpr int kThreads = 8;
  std::vector<GenerationResult> sequential(kThreads), concurrent(kThreads);
  for (int i = 0; i < kThreads; ++i) sequential[i] = Generate(model, 1000 + i);
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i)
    threads.emplace_back([&, i] { concurrent[i] = Generate(model, 1000 + i); });
  for (std::thread& t : threads) t.join();
  for (int i = 0; i < kThreads; ++i) {
    ASSERT_EQ(sequential[i].status, MOERUN_OK) << i;
    ASSERT_EQ(concurrent[i].status, MOERUN_OK) << i;
    EXPECT_FALSE(sequential[i].tokens.empty());  // up to 40: generation stops at the EOS token
    EXPECT_EQ(concurrent[i].tokens, sequential[i].tokens) << "thread " << i;
  }
  // Different seeds really sample differently (the comparison above is not trivially true).
  EXPECT_NE(sequential[0].tokens, sequential[1].tokens);
  moerun_model_destroy(model);
}

INSTANTIATE_TEST_SUITE_P(Weights, Concurrency,
                         ::testing::Values(moerun::convert::WeightsMode::kKeep, moerun::convert::WeightsMode::kInt8),
                         [](const ::testing::TestParamInfo<moerun::convert::WeightsMode>& i) {
                           return std::string(moerun::convert::WeightsModeName(i.param));
                         });

// Sessions hold their own reference to the weights: destroying the model handle first leaves them
// working (the handle itself is gone; the header documents this).
TEST(ConcurrencyLifetime, SessionOutlivesModelHandle) {
  const std::string path = ConvertedModel("v3_bf16", moerun::convert::WeightsMode::kKeep);
  moerun_model* model = nullptr;
  ASSERT_EQ(moerun_model_load(path.c_str(), nullptr, &model), MOERUN_OK) << moerun_last_error();
  const GenerationResult before = Generate(model, 7);
  moerun_session* session = nullptr;
  ASSERT_EQ(moerun_session_create(model, nullptr, &session), MOERUN_OK);
  moerun_model_destroy(model);
  moerun_sampler_options sopt;
  moerun_sampler_options_init(&sopt);
  moerun_sampler* sampler = nullptr;
  ASSERT_EQ(moerun_sampler_create(&sopt, &sampler), MOERUN_OK);
  const int32_t prompt[] = {3, 1, 4, 1, 5};
  int32_t out[8];
  uint32_t n = 0;
  EXPECT_EQ(moerun_generate(session, sampler, 0, prompt, 5, 8, nullptr, nullptr, out, &n), MOERUN_OK)
      << moerun_last_error();
  EXPECT_EQ(n, 8u);
  moerun_sampler_destroy(sampler);
  moerun_session_destroy(session);
  EXPECT_EQ(before.status, MOERUN_OK);
}

}  // namespace
