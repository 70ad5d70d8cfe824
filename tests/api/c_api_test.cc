// The public C ABI, used exactly as a host application would, including abuse: NULL handles, wrong
// struct sizes, bad ids, bad sampler parameters. Every case must return a status, never crash.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "converters/converter.h"
#include "moerun/moerun.h"
#include "tests/api/test_dir.h"

namespace {

std::string ModelPath() {
  static const std::string path = [] {
    const std::string p = moerun::testing::TestDir() + "/c_api_v3.moerun";
    moerun::convert::ConvertOptions o;
    const moerun::Status st = moerun::convert::ConvertHfCheckpoint(MOERUN_TEST_DATA_DIR "/golden/v3_bf16", p, o);
    EXPECT_TRUE(st.ok()) << st.message();
    return p;
  }();
  return path;
}

class CApi : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(moerun_model_load(ModelPath().c_str(), nullptr, &model_), MOERUN_OK) << moerun_last_error(); }
  void TearDown() override { moerun_model_destroy(model_); }
  moerun_model* model_ = nullptr;
};

TEST(CApiBasics, VersionAndStatusStrings) {
  EXPECT_STREQ(moerun_version(), "0.1.0");
  EXPECT_EQ(moerun_abi_version(), static_cast<uint32_t>(MOERUN_ABI_VERSION));
  EXPECT_STREQ(moerun_status_string(MOERUN_ERR_KV_CACHE_FULL), "MOERUN_ERR_KV_CACHE_FULL");
  EXPECT_STREQ(moerun_status_string(static_cast<moerun_status>(77)), "MOERUN_ERR_UNKNOWN");
}

TEST(CApiBasics, LoadErrors) {
  moerun_model* m = reinterpret_cast<moerun_model*>(0x1);
  EXPECT_EQ(moerun_model_load("/no/such/file.moerun", nullptr, &m), MOERUN_ERR_IO);
  EXPECT_NE(std::string(moerun_last_error()).find("/no/such/file.moerun"), std::string::npos);
  EXPECT_EQ(m, reinterpret_cast<moerun_model*>(0x1)) << "out-parameter touched on failure";
  EXPECT_EQ(moerun_model_load(nullptr, nullptr, &m), MOERUN_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(moerun_model_load(ModelPath().c_str(), nullptr, nullptr), MOERUN_ERR_INVALID_ARGUMENT);
  moerun_model_options o;
  moerun_model_options_init(&o);
  o.struct_size = sizeof(o) + 8;
  EXPECT_EQ(moerun_model_load(ModelPath().c_str(), &o, &m), MOERUN_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(moerun_last_error()).find("struct_size"), std::string::npos);
  moerun_model_options_init(&o);
  o.backend = "gpu9000";
  EXPECT_EQ(moerun_model_load(ModelPath().c_str(), &o, &m), MOERUN_ERR_UNSUPPORTED);
  moerun_model_options_init(&o);
  o.precision = static_cast<moerun_precision>(5);
  EXPECT_EQ(moerun_model_load(ModelPath().c_str(), &o, &m), MOERUN_ERR_INVALID_ARGUMENT);
  // A text file is not a model.
  const std::string junk = moerun::testing::TestDir() + "/junk.moerun";
  std::ofstream(junk) << "this is not a model file, but it is longer than sixty-four bytes in total, really";
  EXPECT_EQ(moerun_model_load(junk.c_str(), nullptr, &m), MOERUN_ERR_CORRUPT_FILE);
  EXPECT_NE(std::string(moerun_last_error()).find("bad magic"), std::string::npos);
  moerun_model_destroy(nullptr);
  moerun_session_destroy(nullptr);
  moerun_sampler_destroy(nullptr);
}

// The default precision is AUTO: BF16 (int8 activations) for a file with int8 weights, F32 for any
// other; info.precision reports the choice, and an info struct from before that field still works.
TEST(CApiBasics, AutoPrecisionFollowsTheWeights) {
  moerun_model_options o;
  moerun_model_options_init(&o);
  EXPECT_EQ(o.precision, MOERUN_PRECISION_AUTO);
  const std::string int8_path = moerun::testing::TestDir() + "/c_api_v3_int8.moerun";
  moerun::convert::ConvertOptions co;
  co.weights = moerun::convert::WeightsMode::kInt8;
  const moerun::Status st = moerun::convert::ConvertHfCheckpoint(MOERUN_TEST_DATA_DIR "/golden/v3_bf16", int8_path, co);
  ASSERT_TRUE(st.ok()) << st.message();
  const int32_t prompt[3] = {0, 17, 42};
  auto load = [&](const std::string& path, moerun_precision p, std::vector<float>* logits) {
    moerun_model_options mo;
    moerun_model_options_init(&mo);
    mo.precision = p;
    moerun_model* m = nullptr;
    EXPECT_EQ(moerun_model_load(path.c_str(), &mo, &m), MOERUN_OK) << moerun_last_error();
    if (!m) return MOERUN_PRECISION_AUTO;
    moerun_model_info info;
    moerun_model_info_init(&info);
    EXPECT_EQ(moerun_model_get_info(m, &info), MOERUN_OK);
    moerun_session* s = nullptr;
    EXPECT_EQ(moerun_session_create(m, nullptr, &s), MOERUN_OK) << moerun_last_error();
    moerun_batch b;
    moerun_batch_init(&b);
    b.n_tokens = 3;
    b.tokens = prompt;
    EXPECT_EQ(moerun_session_decode(s, &b), MOERUN_OK) << moerun_last_error();
    const float* row = nullptr;
    EXPECT_EQ(moerun_session_get_logits(s, 2, &row), MOERUN_OK) << moerun_last_error();
    if (row) logits->assign(row, row + info.vocab_size);
    moerun_session_destroy(s);
    moerun_model_destroy(m);
    return info.precision;
  };
  std::vector<float> auto_logits, bf16_logits, f32_logits;
  EXPECT_EQ(load(int8_path, MOERUN_PRECISION_AUTO, &auto_logits), MOERUN_PRECISION_BF16);
  EXPECT_EQ(load(int8_path, MOERUN_PRECISION_BF16, &bf16_logits), MOERUN_PRECISION_BF16);
  EXPECT_EQ(load(int8_path, MOERUN_PRECISION_F32, &f32_logits), MOERUN_PRECISION_F32);
  EXPECT_EQ(auto_logits, bf16_logits);  // the same computation, not merely close
  EXPECT_NE(auto_logits, f32_logits);
  EXPECT_EQ(load(ModelPath(), MOERUN_PRECISION_AUTO, &auto_logits), MOERUN_PRECISION_F32);
  EXPECT_EQ(load(ModelPath(), MOERUN_PRECISION_F32, &f32_logits), MOERUN_PRECISION_F32);
  EXPECT_EQ(auto_logits, f32_logits);
  EXPECT_EQ(load(ModelPath(), MOERUN_PRECISION_BF16, &bf16_logits), MOERUN_PRECISION_BF16);

  // A caller built before info.precision existed passes the shorter struct: filled up to its size.
  moerun_model* m = nullptr;
  ASSERT_EQ(moerun_model_load(int8_path.c_str(), nullptr, &m), MOERUN_OK) << moerun_last_error();
  moerun_model_info info;
  std::memset(&info, 0xab, sizeof(info));
  info.struct_size = offsetof(moerun_model_info, precision);
  EXPECT_EQ(moerun_model_get_info(m, &info), MOERUN_OK);
  EXPECT_EQ(info.struct_size, offsetof(moerun_model_info, precision));
  int32_t untouched;
  std::memset(&untouched, 0xab, sizeof(untouched));
  EXPECT_EQ(std::memcmp(&info.precision, &untouched, sizeof(untouched)), 0);
  EXPECT_EQ(info.vocab_size, 384u);
  moerun_model_destroy(m);
}

TEST(CApiBasics, LoadFromMemoryAlignedAndUnaligned) {
  std::ifstream f(ModelPath(), std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(f)), {});
  std::vector<char> shifted(bytes.size() + 1);
  std::memcpy(shifted.data() + 1, bytes.data(), bytes.size());  // deliberately misaligned
  moerun_model* m = nullptr;
  ASSERT_EQ(moerun_model_load_from_memory(shifted.data() + 1, bytes.size(), nullptr, &m), MOERUN_OK) << moerun_last_error();
  moerun_model_info info;
  moerun_model_info_init(&info);
  ASSERT_EQ(moerun_model_get_info(m, &info), MOERUN_OK);
  EXPECT_STREQ(info.architecture, "DeepseekV3");
  moerun_model_destroy(m);
  EXPECT_EQ(moerun_model_load_from_memory(bytes.data(), 10, nullptr, &m), MOERUN_ERR_CORRUPT_FILE);
  EXPECT_EQ(moerun_model_load_from_memory(nullptr, 100, nullptr, &m), MOERUN_ERR_INVALID_ARGUMENT);
}

TEST_F(CApi, ModelInfo) {
  moerun_model_info info;
  moerun_model_info_init(&info);
  ASSERT_EQ(moerun_model_get_info(model_, &info), MOERUN_OK);
  EXPECT_GT(info.vocab_size, 0u);
  EXPECT_GT(info.num_layers, 0u);
  EXPECT_EQ(info.kv_bytes_per_token, uint64_t{info.num_layers} * (info.kv_lora_rank + info.qk_rope_head_dim) * 4);
  EXPECT_EQ(info.has_mtp, 1u);  // the v3_bf16 fixture carries an MTP layer
  EXPECT_STREQ(info.backend, "cpu");
  EXPECT_EQ(moerun_model_get_info(nullptr, &info), MOERUN_ERR_INVALID_ARGUMENT);
  info.struct_size = 3;
  EXPECT_EQ(moerun_model_get_info(model_, &info), MOERUN_ERR_INVALID_ARGUMENT);
}

// Expert counts: per MoE layer they sum to tokens × experts per token, dense layers stay zero, a
// failed decode adds nothing, and a wrong size or NULL is an error naming the size.
TEST_F(CApi, ExpertCountsFollowTheRouting) {
  moerun_model_info info;
  moerun_model_info_init(&info);
  ASSERT_EQ(moerun_model_get_info(model_, &info), MOERUN_OK);
  const size_t E = info.n_routed_experts, n = size_t{info.num_layers} * E;
  moerun_session* s = nullptr;
  ASSERT_EQ(moerun_session_create(model_, nullptr, &s), MOERUN_OK) << moerun_last_error();
  std::vector<uint64_t> counts(n, 99);
  ASSERT_EQ(moerun_session_get_expert_counts(s, counts.data(), n), MOERUN_OK) << moerun_last_error();
  EXPECT_EQ(counts, std::vector<uint64_t>(n, 0));
  const int32_t prompt[5] = {0, 17, 42, 99, 7};
  moerun_batch b;
  moerun_batch_init(&b);
  b.n_tokens = 5;
  b.tokens = prompt;
  ASSERT_EQ(moerun_session_decode(s, &b), MOERUN_OK) << moerun_last_error();
  b.n_tokens = 1;
  ASSERT_EQ(moerun_session_decode(s, &b), MOERUN_OK) << moerun_last_error();
  const int32_t bad = -1;
  b.tokens = &bad;
  EXPECT_EQ(moerun_session_decode(s, &b), MOERUN_ERR_INVALID_ARGUMENT);
  ASSERT_EQ(moerun_session_get_expert_counts(s, counts.data(), n), MOERUN_OK) << moerun_last_error();
  int moe_layers = 0;
  for (size_t l = 0; l < info.num_layers; ++l) {
    uint64_t sum = 0, most = 0;
    for (size_t e = 0; e < E; ++e) {
      sum += counts[l * E + e];
      most = std::max(most, counts[l * E + e]);
    }
    if (sum == 0) continue;  // a dense layer
    ++moe_layers;
    EXPECT_EQ(sum, 6u * info.num_experts_per_tok) << "layer " << l;
    EXPECT_LE(most, 6u) << "an expert appears at most once per token";
  }
  EXPECT_EQ(moe_layers, static_cast<int>(info.num_layers) - 1);  // the fixture's first layer is dense
  EXPECT_EQ(counts[0], 0u);
  EXPECT_EQ(moerun_session_get_expert_counts(s, counts.data(), n - 1), MOERUN_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(moerun_last_error()).find(std::to_string(n)), std::string::npos) << moerun_last_error();
  EXPECT_EQ(moerun_session_get_expert_counts(s, nullptr, n), MOERUN_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(moerun_session_get_expert_counts(nullptr, counts.data(), n), MOERUN_ERR_INVALID_ARGUMENT);
  moerun_session_destroy(s);
}

TEST_F(CApi, SessionAbuse) {
  moerun_session* s = nullptr;
  moerun_session_options so;
  moerun_session_options_init(&so);
  so.kv_capacity = 0;
  EXPECT_EQ(moerun_session_create(model_, &so, &s), MOERUN_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(moerun_session_create(nullptr, nullptr, &s), MOERUN_ERR_INVALID_ARGUMENT);
  moerun_session_options_init(&so);
  so.kv_capacity = 16;
  so.max_batch_tokens = 32;
  ASSERT_EQ(moerun_session_create(model_, &so, &s), MOERUN_OK);
  moerun_model_info info;
  moerun_model_info_init(&info);
  moerun_model_get_info(model_, &info);

  int32_t bad = static_cast<int32_t>(info.vocab_size);
  moerun_batch b;
  moerun_batch_init(&b);
  b.n_tokens = 1;
  b.tokens = &bad;
  EXPECT_EQ(moerun_session_decode(s, &b), MOERUN_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(moerun_last_error()).find("outside the vocabulary"), std::string::npos);
  EXPECT_EQ(moerun_session_decode(nullptr, &b), MOERUN_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(moerun_session_decode(s, nullptr), MOERUN_ERR_INVALID_ARGUMENT);
  b.struct_size = 1;
  EXPECT_EQ(moerun_session_decode(s, &b), MOERUN_ERR_INVALID_ARGUMENT);

  // Positions beyond the KV capacity: the cache is full, nothing changes.
  std::vector<int32_t> ids(20, 5);
  moerun_batch_init(&b);
  b.n_tokens = 20;
  b.tokens = ids.data();
  EXPECT_EQ(moerun_session_decode(s, &b), MOERUN_ERR_KV_CACHE_FULL);
  uint32_t len = 99, free_tokens = 0;
  ASSERT_EQ(moerun_session_seq_length(s, 0, &len), MOERUN_OK);
  EXPECT_EQ(len, 0u);
  ASSERT_EQ(moerun_session_kv_free(s, &free_tokens), MOERUN_OK);
  EXPECT_GE(free_tokens, 16u);
  EXPECT_EQ(moerun_session_seq_length(s, 5, &len), MOERUN_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(moerun_session_seq_remove(s, -1), MOERUN_ERR_INVALID_ARGUMENT);
  const float* logits = nullptr;
  EXPECT_EQ(moerun_session_get_logits(s, 0, &logits), MOERUN_ERR_INVALID_ARGUMENT);
  b.n_tokens = 4;
  ASSERT_EQ(moerun_session_decode(s, &b), MOERUN_OK);
  EXPECT_EQ(moerun_session_get_logits(s, 0, &logits), MOERUN_ERR_INVALID_ARGUMENT);  // only the last by default
  EXPECT_EQ(moerun_session_get_logits(s, 3, &logits), MOERUN_OK);
  EXPECT_EQ(moerun_session_get_logits(s, 3, nullptr), MOERUN_ERR_INVALID_ARGUMENT);
  ASSERT_EQ(moerun_session_clear(s), MOERUN_OK);
  ASSERT_EQ(moerun_session_seq_length(s, 0, &len), MOERUN_OK);
  EXPECT_EQ(len, 0u);
  moerun_session_destroy(s);
}

TEST(CApiSampler, RejectsBadParameters) {
  moerun_sampler* s = nullptr;
  moerun_sampler_options o;
  moerun_sampler_options_init(&o);
  o.temperature = -1;
  EXPECT_EQ(moerun_sampler_create(&o, &s), MOERUN_ERR_INVALID_ARGUMENT);
  moerun_sampler_options_init(&o);
  o.top_p = 0;
  EXPECT_EQ(moerun_sampler_create(&o, &s), MOERUN_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(moerun_last_error()).find("top_p"), std::string::npos);
  EXPECT_EQ(s, nullptr);
  moerun_sampler_options_init(&o);
  ASSERT_EQ(moerun_sampler_create(&o, &s), MOERUN_OK);
  const float l[3] = {0.0f, 1.0f, 0.5f};
  int32_t tok = -1;
  EXPECT_EQ(moerun_sampler_sample(s, l, 3, &tok), MOERUN_OK);
  EXPECT_EQ(tok, 1);
  EXPECT_EQ(moerun_sampler_sample(s, l, 0, &tok), MOERUN_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(moerun_sampler_sample(s, nullptr, 3, &tok), MOERUN_ERR_INVALID_ARGUMENT);
  moerun_sampler_destroy(s);
}

struct StreamState {
  std::vector<int32_t> seen;
  size_t stop_after = 1000;
};

int OnToken(void* user, int32_t token) {
  auto* st = static_cast<StreamState*>(user);
  st->seen.push_back(token);
  return st->seen.size() < st->stop_after;
}

TEST_F(CApi, GenerateStreamsAndIsReproducible) {
  auto run = [&](uint64_t seed, size_t stop_after) {
    moerun_session* s = nullptr;
    moerun_sampler* smp = nullptr;
    EXPECT_EQ(moerun_session_create(model_, nullptr, &s), MOERUN_OK);
    moerun_sampler_options o;
    moerun_sampler_options_init(&o);
    o.temperature = 0.9f;
    o.top_k = 20;
    o.seed = seed;
    EXPECT_EQ(moerun_sampler_create(&o, &smp), MOERUN_OK);
    const int32_t prompt[4] = {0, 11, 22, 33};
    int32_t out[10];
    uint32_t n = 0;
    StreamState st;
    st.stop_after = stop_after;
    EXPECT_EQ(moerun_generate(s, smp, 0, prompt, 4, 10, OnToken, &st, out, &n), MOERUN_OK) << moerun_last_error();
    EXPECT_EQ(st.seen, std::vector<int32_t>(out, out + n));
    uint32_t len = 0;
    moerun_session_seq_length(s, 0, &len);
    EXPECT_EQ(len, 4 + n - 1);  // every generated token but the last is in the cache
    moerun_sampler_destroy(smp);
    moerun_session_destroy(s);
    return std::vector<int32_t>(out, out + n);
  };
  const auto a = run(7, 1000), b = run(7, 1000), c = run(8, 1000);
  EXPECT_EQ(a, b);
  EXPECT_EQ(a.size(), 10u);
  EXPECT_NE(a, c);
  EXPECT_EQ(run(7, 3).size(), 3u);  // the callback stops generation
}

struct LogState {
  int calls = 0;
  std::string all;  // every message, one per line
};

void OnLog(void* user, moerun_log_level, const char* msg) {
  auto* st = static_cast<LogState*>(user);
  st->calls++;
  st->all += std::string(msg) + "\n";
}

TEST(CApiLog, CallbackReceivesMessages) {
  LogState st;
  moerun_set_log_callback(OnLog, &st, MOERUN_LOG_DEBUG);
  std::ifstream f(ModelPath(), std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(f)), {});
  std::vector<char> shifted(bytes.size() + 1);
  std::memcpy(shifted.data() + 1, bytes.data(), bytes.size());
  moerun_model* m = nullptr;
  ASSERT_EQ(moerun_model_load_from_memory(shifted.data() + 1, bytes.size(), nullptr, &m), MOERUN_OK);
  moerun_model_destroy(m);
  moerun_set_log_callback(nullptr, nullptr, MOERUN_LOG_WARNING);
  EXPECT_GE(st.calls, 1);
  // The copy of the misaligned buffer is reported (other messages may come too: the backend's view
  // of the CPU, on one without AVX-512).
  EXPECT_NE(st.all.find("aligned"), std::string::npos) << st.all;
}

}  // namespace
