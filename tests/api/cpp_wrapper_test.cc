// The header-only C++ wrapper (moerun/moerun.hpp) against the shared library: errors become
// moerun::Error with the C status and message, results equal the raw C API's, exceptions thrown in
// callbacks come out of the wrapper call unchanged, and handles are move-only and safe when empty.
// This file is compiled as C++17 with -Wall -Wextra -Wpedantic -Werror (tests/CMakeLists.txt), which
// is the header's warning-free check.
#include "moerun/moerun.hpp"

#include <dlfcn.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "converters/converter.h"
#include "tests/api/test_dir.h"

// The order in which C handles are destroyed is invisible through the C API (a session keeps the
// weights alive internally), so this binary interposes the two destroy functions: they record the
// order while a test asks for it and forward to libmoerun. Other tests see no difference.
namespace destroy_log {
std::mutex mu;
bool recording = false;
std::vector<std::string> events;

void Record(const char* what, const void* handle) {
  if (!handle) return;
  std::lock_guard<std::mutex> lock(mu);
  if (recording) events.emplace_back(what);
}

template <typename Fn>
Fn Next(const char* name) {
  void* sym = dlsym(RTLD_NEXT, name);
  if (!sym) {  // only if this binary were linked without the shared library: nothing to forward to
    std::fprintf(stderr, "cpp_wrapper_test: %s not found in libmoerun\n", name);
    std::_Exit(1);
  }
  return reinterpret_cast<Fn>(sym);
}

// Starts recording with an empty log; the destructor stops it.
struct Recorder {
  Recorder() {
    std::lock_guard<std::mutex> lock(mu);
    events.clear();
    recording = true;
  }
  ~Recorder() {
    std::lock_guard<std::mutex> lock(mu);
    recording = false;
  }
  std::vector<std::string> Events() const {
    std::lock_guard<std::mutex> lock(mu);
    return events;
  }
};
}  // namespace destroy_log

extern "C" void moerun_model_destroy(moerun_model* model) {
  static const auto next = destroy_log::Next<void (*)(moerun_model*)>("moerun_model_destroy");
  destroy_log::Record("model", model);
  next(model);
}

extern "C" void moerun_session_destroy(moerun_session* session) {
  static const auto next = destroy_log::Next<void (*)(moerun_session*)>("moerun_session_destroy");
  destroy_log::Record("session", session);
  next(session);
}

namespace {

std::string ModelPath() {
  static const std::string path = [] {
    const std::string p = moerun::testing::TestDir() + "/cpp_wrapper_v3.moerun";
    moerun::convert::ConvertOptions o;
    const moerun::Status st = moerun::convert::ConvertHfCheckpoint(MOERUN_TEST_DATA_DIR "/golden/v3_bf16", p, o);
    EXPECT_TRUE(st.ok()) << st.message();
    return p;
  }();
  return path;
}

std::vector<char> ModelBytes() {
  std::ifstream f(ModelPath(), std::ios::binary);
  return std::vector<char>((std::istreambuf_iterator<char>(f)), {});
}

// Runs body, which must throw moerun::Error, and returns it.
template <typename F>
moerun::Error CaptureError(F&& body) {
  try {
    body();
  } catch (const moerun::Error& e) {
    return e;
  }
  ADD_FAILURE() << "no moerun::Error thrown";
  return moerun::Error(MOERUN_OK, "");
}

// A type no code path of the wrapper or the library could produce by itself.
struct CallbackFailure {
  int code;
};

class CppWrapper : public ::testing::Test {
 protected:
  void SetUp() override { model_ = moerun::Model::load(ModelPath()); }
  moerun::Model model_;
};

static_assert(!std::is_copy_constructible_v<moerun::Model> && !std::is_copy_assignable_v<moerun::Model>);
static_assert(!std::is_copy_constructible_v<moerun::Session> && !std::is_copy_assignable_v<moerun::Session>);
static_assert(!std::is_copy_constructible_v<moerun::Sampler> && !std::is_copy_assignable_v<moerun::Sampler>);
static_assert(std::is_nothrow_move_constructible_v<moerun::Model> && std::is_nothrow_move_assignable_v<moerun::Model>);
static_assert(std::is_nothrow_move_constructible_v<moerun::Session> &&
              std::is_nothrow_move_assignable_v<moerun::Session>);
static_assert(std::is_nothrow_move_constructible_v<moerun::Sampler> &&
              std::is_nothrow_move_assignable_v<moerun::Sampler>);
static_assert(std::is_base_of_v<std::runtime_error, moerun::Error>);

TEST(CppWrapperBasics, VersionAndStatusStrings) {
  EXPECT_EQ(moerun::version(), "0.1.0");
  EXPECT_EQ(moerun::version(), std::string(moerun_version()));
  EXPECT_EQ(moerun::abi_version(), static_cast<uint32_t>(MOERUN_ABI_VERSION));
  EXPECT_EQ(moerun::status_string(MOERUN_ERR_CORRUPT_FILE), "MOERUN_ERR_CORRUPT_FILE");
  const moerun::Error e(MOERUN_ERR_CANCELLED, "");
  EXPECT_STREQ(e.what(), "MOERUN_ERR_CANCELLED");  // the status name stands in for a missing message
}

TEST(CppWrapperModel, LoadErrorsThrowStatusAndMessage) {
  moerun::Error e = CaptureError([] { (void)moerun::Model::load("/no/such/file.moerun"); });
  EXPECT_EQ(e.status(), MOERUN_ERR_IO);
  EXPECT_NE(std::string(e.what()).find("/no/such/file.moerun"), std::string::npos) << e.what();

  const std::string junk = moerun::testing::TestDir() + "/cpp_junk.moerun";
  std::ofstream(junk) << "this is not a model file, but it is longer than sixty-four bytes in total, really";
  e = CaptureError([&] { (void)moerun::Model::load(junk); });
  EXPECT_EQ(e.status(), MOERUN_ERR_CORRUPT_FILE);
  EXPECT_NE(std::string(e.what()).find("bad magic"), std::string::npos) << e.what();

  const std::vector<char> bytes = ModelBytes();
  e = CaptureError([&] { (void)moerun::Model::load_from_memory(bytes.data(), 10); });
  EXPECT_EQ(e.status(), MOERUN_ERR_CORRUPT_FILE);
  EXPECT_GT(std::strlen(e.what()), 0u);

  moerun::ModelOptions o;
  o.backend = "gpu9000";
  e = CaptureError([&] { (void)moerun::Model::load(ModelPath(), o); });
  EXPECT_EQ(e.status(), MOERUN_ERR_UNSUPPORTED);
  EXPECT_GT(std::strlen(e.what()), 0u);

  moerun::ModelOptions bad_threads;
  bad_threads.n_threads = -1;
  EXPECT_EQ(CaptureError([&] { (void)moerun::Model::load(ModelPath(), bad_threads); }).status(),
            MOERUN_ERR_INVALID_ARGUMENT);
  // Catchable as the standard base, too.
  EXPECT_THROW((void)moerun::Model::load("/no/such/file.moerun"), std::runtime_error);
}

TEST(CppWrapperModel, OptionDefaultsAreTheLibrarys) {
  moerun_model_options mc;
  moerun_model_options_init(&mc);
  const moerun::ModelOptions m;
  EXPECT_TRUE(m.backend.empty());
  EXPECT_EQ(m.precision, mc.precision);
  EXPECT_EQ(m.n_threads, mc.n_threads);
  EXPECT_FALSE(m.verify_weights);
  EXPECT_FALSE(m.progress);
  moerun_session_options sc;
  moerun_session_options_init(&sc);
  const moerun::SessionOptions s;
  EXPECT_EQ(s.kv_capacity, sc.kv_capacity);
  EXPECT_EQ(s.max_sequences, sc.max_sequences);
  EXPECT_EQ(s.max_batch_tokens, sc.max_batch_tokens);
  EXPECT_EQ(s.n_threads, sc.n_threads);
  moerun_sampler_options pc;
  moerun_sampler_options_init(&pc);
  const moerun::SamplerOptions p;
  EXPECT_EQ(p.temperature, pc.temperature);
  EXPECT_EQ(p.top_k, pc.top_k);
  EXPECT_EQ(p.top_p, pc.top_p);
  EXPECT_EQ(p.min_p, pc.min_p);
  EXPECT_EQ(p.seed, pc.seed);
}

TEST(CppWrapperModel, LoadOptionsReachTheLibrary) {
  moerun::ModelOptions o;
  o.backend = "reference";
  o.precision = MOERUN_PRECISION_BF16;
  o.n_threads = 1;
  const moerun::Model m = moerun::Model::load(ModelPath(), o);
  EXPECT_STREQ(m.info().backend, "reference");
}

TEST_F(CppWrapper, InfoIsTheWholeCStruct) {
  const moerun_model_info i = model_.info();
  moerun_model_info c;
  moerun_model_info_init(&c);
  ASSERT_EQ(moerun_model_get_info(model_.get(), &c), MOERUN_OK);
  EXPECT_EQ(i.struct_size, sizeof(moerun_model_info));
  EXPECT_STREQ(i.architecture, "DeepseekV3");
  EXPECT_STREQ(i.backend, "cpu");
  EXPECT_EQ(i.vocab_size, 384u);
  EXPECT_EQ(i.num_layers, 3u);
  EXPECT_EQ(i.eos_token_id, 1);
  EXPECT_EQ(i.has_mtp, 1u);
  EXPECT_EQ(i.hidden_size, c.hidden_size);
  EXPECT_EQ(i.num_heads, c.num_heads);
  EXPECT_EQ(i.n_routed_experts, c.n_routed_experts);
  EXPECT_EQ(i.n_shared_experts, c.n_shared_experts);
  EXPECT_EQ(i.num_experts_per_tok, c.num_experts_per_tok);
  EXPECT_EQ(i.kv_lora_rank, c.kv_lora_rank);
  EXPECT_EQ(i.qk_rope_head_dim, c.qk_rope_head_dim);
  EXPECT_EQ(i.max_position_embeddings, c.max_position_embeddings);
  EXPECT_EQ(i.bos_token_id, c.bos_token_id);
  EXPECT_EQ(i.kv_bytes_per_token, c.kv_bytes_per_token);
  EXPECT_EQ(i.weight_bytes, c.weight_bytes);
  EXPECT_GT(i.weight_bytes, 0u);
}

TEST(CppWrapperModel, LoadFromMemoryMisaligned) {
  const std::vector<char> bytes = ModelBytes();
  std::vector<char> shifted(bytes.size() + 1);
  std::memcpy(shifted.data() + 1, bytes.data(), bytes.size());
  const moerun::Model m = moerun::Model::load_from_memory(shifted.data() + 1, bytes.size());
  ASSERT_TRUE(m);
  EXPECT_STREQ(m.info().architecture, "DeepseekV3");
}

TEST(CppWrapperModel, ProgressCallbackSeesTheLoadAndCanCancel) {
  std::vector<float> seen;
  moerun::ModelOptions o;
  o.verify_weights = true;
  o.progress = [&](float f) {
    seen.push_back(f);
    return true;
  };
  const moerun::Model m = moerun::Model::load(ModelPath(), o);
  ASSERT_GE(seen.size(), 2u);
  EXPECT_TRUE(std::is_sorted(seen.begin(), seen.end()));
  EXPECT_FLOAT_EQ(seen.back(), 1.0f);

  seen.clear();
  o.progress = [&](float f) {
    seen.push_back(f);
    return seen.size() < 2;
  };
  const moerun::Error e = CaptureError([&] { (void)moerun::Model::load(ModelPath(), o); });
  EXPECT_EQ(e.status(), MOERUN_ERR_CANCELLED);
  EXPECT_GT(std::strlen(e.what()), 0u);
  EXPECT_EQ(seen.size(), 2u);
}

TEST(CppWrapperModel, ProgressExceptionPropagates) {
  int calls = 0;
  moerun::ModelOptions o;
  o.verify_weights = true;
  o.progress = [&](float) -> bool {
    if (++calls == 2) throw CallbackFailure{42};
    return true;
  };
  try {
    (void)moerun::Model::load(ModelPath(), o);
    ADD_FAILURE() << "load did not throw";
  } catch (const CallbackFailure& f) {
    EXPECT_EQ(f.code, 42);
  }
  EXPECT_EQ(calls, 2) << "the load went on after the callback threw";
  const std::vector<char> bytes = ModelBytes();
  calls = 0;
  EXPECT_THROW((void)moerun::Model::load_from_memory(bytes.data(), bytes.size(), o), CallbackFailure);
  EXPECT_EQ(calls, 2);
}

TEST_F(CppWrapper, DecodeAndLogitsMatchTheCApi) {
  const std::vector<int32_t> prompt = {0, 17, 42, 99};
  moerun::Session s(model_);
  s.decode(prompt);
  const moerun::LogitsView view = s.logits(3);
  ASSERT_EQ(view.size, 384u);
  const std::vector<float> got(view.begin(), view.end());
  EXPECT_EQ(view[5], got[5]);
  EXPECT_EQ(CaptureError([&] { (void)s.logits(0); }).status(), MOERUN_ERR_INVALID_ARGUMENT);

  moerun_session* c = nullptr;
  ASSERT_EQ(moerun_session_create(model_.get(), nullptr, &c), MOERUN_OK);
  moerun_batch b;
  moerun_batch_init(&b);
  b.n_tokens = 4;
  b.tokens = prompt.data();
  ASSERT_EQ(moerun_session_decode(c, &b), MOERUN_OK);
  const float* want = nullptr;
  ASSERT_EQ(moerun_session_get_logits(c, 3, &want), MOERUN_OK);
  EXPECT_EQ(got, std::vector<float>(want, want + 384));
  moerun_session_destroy(c);

  EXPECT_EQ(s.seq_length(0), 4u);
  moerun::Sampler greedy{moerun::SamplerOptions{}};
  const int32_t next = greedy.sample(s.logits(3));
  EXPECT_EQ(next, static_cast<int32_t>(std::max_element(got.begin(), got.end()) - got.begin()));
  s.decode({next});
  EXPECT_EQ(s.seq_length(0), 5u);
  EXPECT_EQ(s.logits(0).size, 384u);
  // Expert usage: every MoE layer routed 5 tokens to num_experts_per_tok experts each.
  const moerun_model_info info = model_.info();
  const std::vector<uint64_t> counts = s.expert_counts();
  ASSERT_EQ(counts.size(), size_t{info.num_layers} * info.n_routed_experts);
  uint64_t total = 0;
  for (uint64_t c : counts) total += c;
  EXPECT_EQ(total, uint64_t{5} * info.num_experts_per_tok * (info.num_layers - 1));  // layer 0 is dense
  EXPECT_THROW((void)moerun::Session().expert_counts(), moerun::Error);
}

TEST_F(CppWrapper, BatchOfTwoSequences) {
  moerun::SessionOptions so;
  so.max_sequences = 2;
  so.kv_capacity = 64;
  moerun::Session s(model_, so);
  const uint32_t free_before = s.kv_free();
  moerun::Batch b;
  b.tokens = {0, 0, 5, 6, 7};
  b.seq_ids = {0, 1, 0, 1, 1};
  b.positions = {0, 0, 1, 1, 2};
  b.logits = {0, 0, 1, 0, 1};
  s.decode(b);
  EXPECT_EQ(s.seq_length(0), 2u);
  EXPECT_EQ(s.seq_length(1), 3u);
  EXPECT_LT(s.kv_free(), free_before);
  const moerun::LogitsView l2 = s.logits(2), l4 = s.logits(4);
  const std::vector<float> seq0(l2.begin(), l2.end()), seq1(l4.begin(), l4.end());
  EXPECT_EQ(CaptureError([&] { (void)s.logits(3); }).status(), MOERUN_ERR_INVALID_ARGUMENT);

  // The same sequence decoded alone gives the same logits, up to the batch's summation order.
  moerun::Session alone(model_);
  alone.decode({0, 6, 7});
  const moerun::LogitsView a = alone.logits(2);
  float max_diff = 0, max_abs = 0;
  for (size_t i = 0; i < a.size; ++i) {
    max_diff = std::max(max_diff, std::fabs(a[i] - seq1[i]));
    max_abs = std::max(max_abs, std::fabs(a[i]));
  }
  EXPECT_LE(max_diff, 1e-4f * max_abs) << "max |logit| " << max_abs;
  EXPECT_NE(seq0, seq1);

  // Array lengths are checked before the library sees them.
  moerun::Batch bad;
  bad.tokens = {3, 4};
  bad.seq_ids = {0};
  moerun::Error e = CaptureError([&] { s.decode(bad); });
  EXPECT_EQ(e.status(), MOERUN_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(e.what()).find("seq_ids"), std::string::npos) << e.what();
  bad.seq_ids.clear();
  bad.logits = {1, 1, 1};
  EXPECT_EQ(CaptureError([&] { s.decode(bad); }).status(), MOERUN_ERR_INVALID_ARGUMENT);
  bad.logits.clear();
  bad.positions = {9};
  EXPECT_EQ(CaptureError([&] { s.decode(bad); }).status(), MOERUN_ERR_INVALID_ARGUMENT);
  // The library's own checks: a token outside the vocabulary, an unknown sequence.
  e = CaptureError([&] { s.decode({384}, 0); });
  EXPECT_EQ(e.status(), MOERUN_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(e.what()).find("outside the vocabulary"), std::string::npos) << e.what();
  EXPECT_EQ(CaptureError([&] { s.decode({3}, 2); }).status(), MOERUN_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(CaptureError([&] { (void)s.seq_length(2); }).status(), MOERUN_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(CaptureError([&] { s.seq_remove(-1); }).status(), MOERUN_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(s.seq_length(0), 2u);
  EXPECT_EQ(s.seq_length(1), 3u);

  // A batch past the cache capacity changes nothing.
  e = CaptureError([&] { s.decode(std::vector<int32_t>(60, 5), 0); });
  EXPECT_EQ(e.status(), MOERUN_ERR_KV_CACHE_FULL);
  EXPECT_EQ(s.seq_length(0), 2u);

  s.seq_remove(1);
  EXPECT_EQ(s.seq_length(1), 0u);
  EXPECT_EQ(s.seq_length(0), 2u);
  s.clear();
  EXPECT_EQ(s.seq_length(0), 0u);
  EXPECT_EQ(s.kv_free(), free_before);
}

// Greedy generation through the raw C API, the reference for the wrapper.
std::vector<int32_t> GenerateWithCApi(moerun_model* model, const std::vector<int32_t>& prompt, uint32_t max_tokens,
                                      uint64_t seed, float temperature) {
  moerun_session* s = nullptr;
  moerun_sampler* smp = nullptr;
  EXPECT_EQ(moerun_session_create(model, nullptr, &s), MOERUN_OK);
  moerun_sampler_options o;
  moerun_sampler_options_init(&o);
  o.temperature = temperature;
  o.seed = seed;
  EXPECT_EQ(moerun_sampler_create(&o, &smp), MOERUN_OK);
  std::vector<int32_t> out(max_tokens);
  uint32_t n = 0;
  EXPECT_EQ(moerun_generate(s, smp, 0, prompt.data(), static_cast<uint32_t>(prompt.size()), max_tokens, nullptr,
                            nullptr, out.data(), &n),
            MOERUN_OK)
      << moerun_last_error();
  out.resize(n);
  moerun_sampler_destroy(smp);
  moerun_session_destroy(s);
  return out;
}

TEST_F(CppWrapper, GreedyGenerationEqualsTheCApi) {
  const std::vector<int32_t> prompt = {0, 11, 22, 33};
  moerun::Session s(model_);
  moerun::Sampler greedy{moerun::SamplerOptions{}};
  const std::vector<int32_t> got = s.generate(greedy, prompt, 12);
  ASSERT_GE(got.size(), 4u) << "eos this early leaves too little to compare";
  EXPECT_EQ(got, GenerateWithCApi(model_.get(), prompt, 12, 0, 0.0f));
  EXPECT_EQ(s.seq_length(0), prompt.size() + got.size() - 1);

  // The same loop by hand through decode, logits and sample.
  moerun::Session manual(model_);
  manual.decode(prompt);
  std::vector<int32_t> by_hand = {greedy.sample(manual.logits(static_cast<uint32_t>(prompt.size() - 1)))};
  while (by_hand.size() < got.size()) {
    manual.decode({by_hand.back()});
    by_hand.push_back(greedy.sample(manual.logits(0)));
  }
  EXPECT_EQ(by_hand, got);

  // Seeded sampling is reproducible and matches the C API too.
  moerun::SamplerOptions so;
  so.temperature = 0.9f;
  so.seed = 7;
  moerun::Sampler sampled(so);
  moerun::Session s2(model_);
  EXPECT_EQ(s2.generate(sampled, prompt, 10), GenerateWithCApi(model_.get(), prompt, 10, 7, 0.9f));
}

TEST_F(CppWrapper, StreamingSeesEveryTokenAndStopsEarly) {
  const std::vector<int32_t> prompt = {0, 11, 22, 33};
  moerun::SamplerOptions so;
  so.temperature = 0.9f;
  so.top_k = 20;
  so.seed = 7;
  std::vector<int32_t> streamed;
  moerun::Session s(model_);
  moerun::Sampler sampler(so);
  const std::vector<int32_t> all = s.generate(sampler, prompt, 10, [&](int32_t t) {
    streamed.push_back(t);
    return true;
  });
  ASSERT_EQ(all.size(), 10u);
  EXPECT_EQ(streamed, all);

  streamed.clear();
  moerun::Session s2(model_);
  moerun::Sampler sampler2(so);
  const std::vector<int32_t> first3 = s2.generate(sampler2, prompt, 10, [&](int32_t t) {
    streamed.push_back(t);
    return streamed.size() < 3;
  });
  EXPECT_EQ(first3, std::vector<int32_t>(all.begin(), all.begin() + 3));
  EXPECT_EQ(streamed, first3);
  EXPECT_EQ(s2.seq_length(0), prompt.size() + 2);

  // Generation appends to the sequence; an empty prompt is rejected by the library.
  EXPECT_EQ(CaptureError([&] { (void)s2.generate(sampler2, {}, 4); }).status(), MOERUN_ERR_INVALID_ARGUMENT);
  EXPECT_TRUE(s2.generate(sampler2, {5}, 0).empty());
  EXPECT_EQ(s2.seq_length(0), prompt.size() + 3);
}

TEST_F(CppWrapper, StreamingExceptionPropagates) {
  const std::vector<int32_t> prompt = {0, 11, 22, 33};
  moerun::SamplerOptions so;
  so.temperature = 0.9f;
  so.seed = 7;
  moerun::Session s(model_);
  moerun::Sampler sampler(so);
  int calls = 0;
  try {
    (void)s.generate(sampler, prompt, 10, [&](int32_t) -> bool {
      if (++calls == 4) throw CallbackFailure{7};
      return true;
    });
    ADD_FAILURE() << "generate did not throw";
  } catch (const CallbackFailure& f) {
    EXPECT_EQ(f.code, 7);
  }
  EXPECT_EQ(calls, 4) << "generation went on after the callback threw";
  EXPECT_EQ(s.seq_length(0), prompt.size() + 3);
  // The session is still usable.
  EXPECT_EQ(s.generate(sampler, {5}, 2).size(), 2u);

  // A standard exception keeps its type and message too.
  try {
    (void)s.generate(sampler, {6}, 4, [](int32_t) -> bool { throw std::out_of_range("from the callback"); });
    ADD_FAILURE() << "generate did not throw";
  } catch (const std::out_of_range& e) {
    EXPECT_STREQ(e.what(), "from the callback");
  }
}

TEST_F(CppWrapper, MovedFromHandlesAreEmptyAndSafe) {
  moerun::Model m = std::move(model_);
  EXPECT_FALSE(model_);
  EXPECT_EQ(model_.get(), nullptr);
  ASSERT_TRUE(m);
  EXPECT_EQ(CaptureError([&] { (void)model_.info(); }).status(), MOERUN_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(CaptureError([&] { moerun::Session bad(model_); }).status(), MOERUN_ERR_INVALID_ARGUMENT);
  model_ = std::move(m);
  EXPECT_FALSE(m);
  EXPECT_TRUE(model_);

  moerun::Session a(model_);
  a.decode({0, 5});
  moerun::Session b = std::move(a);
  EXPECT_FALSE(a);
  EXPECT_EQ(a.get(), nullptr);
  EXPECT_EQ(b.seq_length(0), 2u);
  EXPECT_EQ(CaptureError([&] { a.decode({1}); }).status(), MOERUN_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(CaptureError([&] { (void)a.logits(0); }).status(), MOERUN_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(CaptureError([&] { (void)a.seq_length(0); }).status(), MOERUN_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(CaptureError([&] { a.seq_remove(0); }).status(), MOERUN_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(CaptureError([&] { a.clear(); }).status(), MOERUN_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(CaptureError([&] { (void)a.kv_free(); }).status(), MOERUN_ERR_INVALID_ARGUMENT);

  // Assigning over a live session destroys it; self-move leaves the session intact.
  moerun::Session c(model_);
  c.decode({0});
  c = std::move(b);
  EXPECT_EQ(c.seq_length(0), 2u);
  moerun::Session& alias = c;
  c = std::move(alias);
  EXPECT_EQ(c.seq_length(0), 2u);
  a = moerun::Session();
  EXPECT_FALSE(a);

  moerun::Sampler p{moerun::SamplerOptions{}};
  moerun::Sampler q = std::move(p);
  EXPECT_FALSE(p);
  EXPECT_EQ(p.get(), nullptr);
  const std::vector<float> l = {0.0f, 2.0f, 1.0f};
  EXPECT_EQ(q.sample(l), 1);
  EXPECT_EQ(CaptureError([&] { (void)p.sample(l); }).status(), MOERUN_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(CaptureError([&] { (void)c.generate(p, {1}, 2); }).status(), MOERUN_ERR_INVALID_ARGUMENT);
  p = std::move(q);
  EXPECT_TRUE(p);
  p.reset();
  EXPECT_FALSE(p);
}

TEST(CppWrapperLifetime, SessionKeepsItsModelAlive) {
  using Events = std::vector<std::string>;
  const destroy_log::Recorder recorder;
  moerun::Session s;
  EXPECT_FALSE(s);
  {
    const moerun::Model m = moerun::Model::load(ModelPath());
    s = moerun::Session(m);
  }
  EXPECT_EQ(recorder.Events(), Events()) << "the C model went before its session";
  s.decode({0, 17, 42});
  EXPECT_EQ(s.logits(2).size, 384u);
  // Assigning over the session that holds the last reference must destroy the session first (a
  // defaulted move assignment would release the model first).
  s = moerun::Session();
  EXPECT_FALSE(s);
  EXPECT_EQ(recorder.Events(), (Events{"session", "model"}));

  // The same through the destructor and reset(), with the Model outliving one of two sessions.
  moerun::Model m = moerun::Model::load(ModelPath());
  auto a = std::make_unique<moerun::Session>(m);
  moerun::Session b(m);
  m.reset();
  a.reset();
  EXPECT_EQ(recorder.Events(), (Events{"session", "model", "session"}));
  b.reset();
  EXPECT_EQ(recorder.Events(), (Events{"session", "model", "session", "session", "model"}));
}

TEST(CppWrapperSampler, ValidationErrorsNameTheParameter) {
  struct Case {
    const char* field;
    void (*set)(moerun::SamplerOptions&);
  };
  const Case cases[] = {
      {"temperature", [](moerun::SamplerOptions& o) { o.temperature = -1.0f; }},
      {"top_p", [](moerun::SamplerOptions& o) { o.top_p = 0.0f; }},
      {"top_p", [](moerun::SamplerOptions& o) { o.top_p = 1.5f; }},
      {"min_p", [](moerun::SamplerOptions& o) { o.min_p = 1.0f; }},
      {"top_k", [](moerun::SamplerOptions& o) { o.top_k = -3; }},
  };
  for (const Case& c : cases) {
    moerun::SamplerOptions o;
    c.set(o);
    const moerun::Error e = CaptureError([&] { moerun::Sampler s(o); });
    EXPECT_EQ(e.status(), MOERUN_ERR_INVALID_ARGUMENT) << c.field;
    EXPECT_NE(std::string(e.what()).find(c.field), std::string::npos) << e.what();
  }
  moerun::Sampler greedy{moerun::SamplerOptions{}};
  EXPECT_EQ(CaptureError([&] { (void)greedy.sample(std::vector<float>()); }).status(), MOERUN_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(CaptureError([&] { (void)greedy.sample(nullptr, 3); }).status(), MOERUN_ERR_INVALID_ARGUMENT);
  const float ties[4] = {1.0f, 3.0f, 3.0f, 0.0f};
  EXPECT_EQ(greedy.sample(ties, 4), 1);  // lowest id on ties
  EXPECT_EQ(greedy.sample(moerun::LogitsView{ties, 4}), 1);
}

TEST(CppWrapperSampler, SameSeedSameTokens) {
  std::vector<float> logits(64);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = std::sin(static_cast<float>(i));
  auto draw = [&](uint64_t seed) {
    moerun::SamplerOptions o;
    o.temperature = 1.5f;
    o.top_p = 0.95f;
    o.seed = seed;
    moerun::Sampler s(o);
    std::vector<int32_t> out;
    for (int i = 0; i < 32; ++i) out.push_back(s.sample(logits));
    return out;
  };
  EXPECT_EQ(draw(3), draw(3));
  EXPECT_NE(draw(3), draw(4));
}

TEST(CppWrapperLog, CallbackReceivesMessages) {
  std::vector<std::pair<moerun_log_level, std::string>> seen;
  moerun::set_log_callback([&](moerun_log_level level, std::string_view message) {
    seen.emplace_back(level, std::string(message));
  }, MOERUN_LOG_DEBUG);
  const std::vector<char> bytes = ModelBytes();
  std::vector<char> shifted(bytes.size() + 1);
  std::memcpy(shifted.data() + 1, bytes.data(), bytes.size());
  auto load_misaligned = [&] { (void)moerun::Model::load_from_memory(shifted.data() + 1, bytes.size()); };
  load_misaligned();
  // The copy of the misaligned buffer is reported at info level (other messages may come too: the
  // backend's view of the CPU, on one without AVX-512).
  const auto copied = std::find_if(seen.begin(), seen.end(), [](const auto& m) {
    return m.second.find("aligned") != std::string::npos;
  });
  ASSERT_NE(copied, seen.end()) << seen.size() << " messages, none about alignment";
  EXPECT_EQ(copied->first, MOERUN_LOG_INFO);

  // min_level filters: the info message no longer arrives.
  seen.clear();
  moerun::set_log_callback([&](moerun_log_level level, std::string_view message) {
    seen.emplace_back(level, std::string(message));
  }, MOERUN_LOG_WARNING);
  load_misaligned();
  EXPECT_TRUE(seen.empty());

  // A replaced callback is no longer called; one that throws does not disturb the library.
  int thrown = 0;
  moerun::set_log_callback([&](moerun_log_level, std::string_view) {
    ++thrown;
    throw std::runtime_error("from the log callback");
  }, MOERUN_LOG_DEBUG);
  EXPECT_NO_THROW(load_misaligned());
  EXPECT_GE(thrown, 1);
  EXPECT_TRUE(seen.empty());

  // An empty callback restores the default sink: ours are not called any more.
  moerun::set_log_callback(nullptr, MOERUN_LOG_WARNING);
  const int before = thrown;
  load_misaligned();
  EXPECT_EQ(thrown, before);
}

}  // namespace
