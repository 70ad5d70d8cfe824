// The rest of issue 4's list, through the public C API, where tests/api/c_api_test.cc does not cover
// it already: truncated files at every kind of cut, a full KV cache changing nothing (logits
// included), positions and sequence ids out of range, every NULL handle and out-parameter, struct
// sizes too large and too small for every option struct, and every invalid sampler parameter.
#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <cstring>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "converters/converter.h"
#include "moerun/moerun.h"
#include "tests/fault/alloc_hook.h"

namespace {

const std::string& ModelPath() {
  static const std::string path = [] {
    const std::string p = std::string(::testing::TempDir()) + "/edge_v3.moerun";
    const moerun::Status st =
        moerun::convert::ConvertHfCheckpoint(MOERUN_TEST_DATA_DIR "/golden/v3_bf16", p, moerun::convert::ConvertOptions{});
    EXPECT_TRUE(st.ok()) << st.message();
    return p;
  }();
  return path;
}

std::vector<char> FileBytes() {
  std::ifstream f(ModelPath(), std::ios::binary);
  return std::vector<char>((std::istreambuf_iterator<char>(f)), {});
}

class Edge : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(moerun_model_load(ModelPath().c_str(), nullptr, &model_), MOERUN_OK) << moerun_last_error();
    moerun_model_info_init(&info_);
    ASSERT_EQ(moerun_model_get_info(model_, &info_), MOERUN_OK);
  }
  void TearDown() override { moerun_model_destroy(model_); }

  moerun_session* NewSession(uint32_t capacity, uint32_t max_sequences) {
    moerun_session_options o;
    moerun_session_options_init(&o);
    o.kv_capacity = capacity;
    o.max_sequences = max_sequences;
    o.max_batch_tokens = 32;
    o.n_threads = 1;
    moerun_session* s = nullptr;
    EXPECT_EQ(moerun_session_create(model_, &o, &s), MOERUN_OK) << moerun_last_error();
    return s;
  }

  moerun_model* model_ = nullptr;
  moerun_model_info info_{};
};

moerun_status Decode(moerun_session* s, const std::vector<int32_t>& tokens, int32_t seq,
                     const int32_t* positions = nullptr) {
  std::vector<int32_t> seqs(tokens.size(), seq);
  moerun_batch b;
  moerun_batch_init(&b);
  b.n_tokens = static_cast<uint32_t>(tokens.size());
  b.tokens = tokens.data();
  b.seq_ids = seqs.data();
  b.positions = positions;
  return moerun_session_decode(s, &b);
}

std::vector<float> LastLogits(moerun_session* s, uint32_t row, uint32_t vocab) {
  const float* l = nullptr;
  EXPECT_EQ(moerun_session_get_logits(s, row, &l), MOERUN_OK) << moerun_last_error();
  return l ? std::vector<float>(l, l + vocab) : std::vector<float>();
}

uint32_t Length(moerun_session* s, int32_t seq) {
  uint32_t n = 0xDEAD;
  EXPECT_EQ(moerun_session_seq_length(s, seq, &n), MOERUN_OK);
  return n;
}

// Every prefix of the header and graph, and cuts through the weight area: always a clean
// MOERUN_ERR_CORRUPT_FILE naming the problem, from a file and from memory, nothing leaked.
TEST(EdgeFiles, TruncatedFilesAreCorrupt) {
  const std::vector<char> bytes = FileBytes();
  ASSERT_GT(bytes.size(), 4096u);
  std::vector<size_t> cuts;
  for (size_t n = 0; n < 1024; ++n) cuts.push_back(n);
  for (size_t n = 1024; n < bytes.size(); n += 32749) cuts.push_back(n);
  cuts.push_back(bytes.size() - 1);
  const std::string path = std::string(::testing::TempDir()) + "/edge_truncated.moerun";
  int64_t live = 0;
  for (size_t n : cuts) {
    // Counted after the first round: it sizes the thread's error message and the streams' locale data.
    if (n == 1) live = moerun::fault::Live();
    SCOPED_TRACE("truncated to " + std::to_string(n) + " of " + std::to_string(bytes.size()) + " bytes");
    std::ofstream(path, std::ios::binary | std::ios::trunc).write(bytes.data(), static_cast<std::streamsize>(n));
    auto* const untouched = reinterpret_cast<moerun_model*>(0x10);
    moerun_model* m = untouched;
    EXPECT_EQ(moerun_model_load(path.c_str(), nullptr, &m), MOERUN_ERR_CORRUPT_FILE);
    EXPECT_GT(std::strlen(moerun_last_error()), 10u);
    EXPECT_EQ(m, untouched);
    if (n > 0) {
      std::vector<char> prefix(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(n));
      EXPECT_EQ(moerun_model_load_from_memory(prefix.data(), n, nullptr, &m), MOERUN_ERR_CORRUPT_FILE);
    }
    EXPECT_EQ(m, untouched);
    if (::testing::Test::HasFailure()) break;
  }
  std::remove(path.c_str());
  EXPECT_EQ(moerun::fault::Live(), live) << "a failed load leaked";
}

// The batch does not fit: MOERUN_ERR_KV_CACHE_FULL, and nothing changes: lengths, free space, the
// previous decode's logits, and what later decodes compute.
TEST_F(Edge, KvCacheFullChangesNothing) {
  moerun_session* s = NewSession(16, 2);
  const std::vector<int32_t> first = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  ASSERT_EQ(Decode(s, first, 0), MOERUN_OK);
  const std::vector<float> logits = LastLogits(s, 9, info_.vocab_size);
  uint32_t free_before = 0, free_after = 0;
  ASSERT_EQ(moerun_session_kv_free(s, &free_before), MOERUN_OK);
  EXPECT_EQ(free_before, 6u);
  EXPECT_EQ(Decode(s, {11, 12, 13, 14, 15, 16, 17}, 0), MOERUN_ERR_KV_CACHE_FULL);
  EXPECT_NE(std::string(moerun_last_error()).find("KV cache full"), std::string::npos);
  EXPECT_EQ(Decode(s, {11, 12, 13, 14, 15, 16, 17}, 1), MOERUN_ERR_KV_CACHE_FULL);  // the budget is shared
  ASSERT_EQ(moerun_session_kv_free(s, &free_after), MOERUN_OK);
  EXPECT_EQ(free_after, free_before);
  EXPECT_EQ(Length(s, 0), 10u);
  EXPECT_EQ(Length(s, 1), 0u);
  EXPECT_EQ(LastLogits(s, 9, info_.vocab_size), logits) << "the rejected batch touched the last logits";
  ASSERT_EQ(Decode(s, {11, 12, 13, 14, 15, 16}, 0), MOERUN_OK);  // exactly fills the cache
  const std::vector<float> after = LastLogits(s, 5, info_.vocab_size);
  EXPECT_EQ(Decode(s, {1}, 1), MOERUN_ERR_KV_CACHE_FULL);

  // A session that never saw the rejected batches computes the same.
  moerun_session* clean = NewSession(16, 2);
  ASSERT_EQ(Decode(clean, first, 0), MOERUN_OK);
  ASSERT_EQ(Decode(clean, {11, 12, 13, 14, 15, 16}, 0), MOERUN_OK);
  EXPECT_EQ(LastLogits(clean, 5, info_.vocab_size), after);
  moerun_session_destroy(clean);
  moerun_session_destroy(s);
}

TEST_F(Edge, PositionsAndSequenceIdsOutOfRange) {
  moerun_session* s = NewSession(16, 2);
  const int32_t good[2] = {0, 1};
  ASSERT_EQ(Decode(s, {3, 4}, 0, good), MOERUN_OK);
  const std::vector<float> logits = LastLogits(s, 1, info_.vocab_size);
  for (const std::vector<int32_t>& pos : std::vector<std::vector<int32_t>>{{5}, {1}, {-1}, {100000}, {2, 2}, {3, 4}}) {
    const std::vector<int32_t> toks(pos.size(), 7);
    EXPECT_EQ(Decode(s, toks, 0, pos.data()), MOERUN_ERR_INVALID_ARGUMENT) << "position " << pos[0];
  }
  EXPECT_EQ(Decode(s, {7}, 2), MOERUN_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(Decode(s, {7}, -1), MOERUN_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(Decode(s, {-1}, 0), MOERUN_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(Decode(s, {static_cast<int32_t>(info_.vocab_size) + 5}, 0), MOERUN_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(Decode(s, std::vector<int32_t>(33, 1), 0), MOERUN_ERR_INVALID_ARGUMENT);  // > max_batch_tokens
  moerun_batch b;
  moerun_batch_init(&b);
  EXPECT_EQ(moerun_session_decode(s, &b), MOERUN_ERR_INVALID_ARGUMENT);  // no tokens
  b.n_tokens = 1;
  EXPECT_EQ(moerun_session_decode(s, &b), MOERUN_ERR_INVALID_ARGUMENT);  // tokens NULL
  // None of it changed the sequences or the last logits.
  EXPECT_EQ(Length(s, 0), 2u);
  EXPECT_EQ(Length(s, 1), 0u);
  EXPECT_EQ(LastLogits(s, 1, info_.vocab_size), logits);
  const int32_t next[1] = {2};
  EXPECT_EQ(Decode(s, {5}, 0, next), MOERUN_OK);
  uint32_t n = 0;
  EXPECT_EQ(moerun_session_seq_length(s, 2, &n), MOERUN_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(moerun_session_seq_remove(s, 2), MOERUN_ERR_INVALID_ARGUMENT);
  moerun_session_destroy(s);
}

TEST_F(Edge, NullHandlesAndOutParameters) {
  moerun_session* s = NewSession(16, 1);
  moerun_sampler_options so;
  moerun_sampler_options_init(&so);
  moerun_sampler* smp = nullptr;
  ASSERT_EQ(moerun_sampler_create(&so, &smp), MOERUN_OK);
  const float* l = nullptr;
  uint32_t n = 0;
  int32_t tok = 0;
  const int32_t prompt[2] = {1, 2};
  int32_t out[4];
  const float logits[2] = {0.0f, 1.0f};
  constexpr auto kInvalid = MOERUN_ERR_INVALID_ARGUMENT;
  EXPECT_EQ(moerun_model_load_from_memory(prompt, sizeof(prompt), nullptr, nullptr), kInvalid);
  EXPECT_EQ(moerun_model_get_info(model_, nullptr), kInvalid);
  EXPECT_EQ(moerun_session_create(model_, nullptr, nullptr), kInvalid);
  EXPECT_EQ(moerun_session_get_logits(nullptr, 0, &l), kInvalid);
  EXPECT_EQ(moerun_session_seq_length(nullptr, 0, &n), kInvalid);
  EXPECT_EQ(moerun_session_seq_length(s, 0, nullptr), kInvalid);
  EXPECT_EQ(moerun_session_seq_remove(nullptr, 0), kInvalid);
  EXPECT_EQ(moerun_session_clear(nullptr), kInvalid);
  EXPECT_EQ(moerun_session_kv_free(nullptr, &n), kInvalid);
  EXPECT_EQ(moerun_session_kv_free(s, nullptr), kInvalid);
  EXPECT_EQ(moerun_sampler_create(&so, nullptr), kInvalid);
  EXPECT_EQ(moerun_sampler_sample(nullptr, logits, 2, &tok), kInvalid);
  EXPECT_EQ(moerun_sampler_sample(smp, logits, 2, nullptr), kInvalid);
  EXPECT_EQ(moerun_generate(nullptr, smp, 0, prompt, 2, 4, nullptr, nullptr, out, &n), kInvalid);
  EXPECT_EQ(moerun_generate(s, nullptr, 0, prompt, 2, 4, nullptr, nullptr, out, &n), kInvalid);
  EXPECT_EQ(moerun_generate(s, smp, 0, nullptr, 2, 4, nullptr, nullptr, out, &n), kInvalid);
  EXPECT_EQ(moerun_generate(s, smp, 0, prompt, 0, 4, nullptr, nullptr, out, &n), kInvalid);
  EXPECT_EQ(moerun_generate(s, smp, 0, prompt, 2, 4, nullptr, nullptr, nullptr, &n), kInvalid);
  EXPECT_EQ(moerun_generate(s, smp, 0, prompt, 2, 4, nullptr, nullptr, out, nullptr), kInvalid);
  EXPECT_EQ(moerun_generate(s, smp, 5, prompt, 2, 4, nullptr, nullptr, out, &n), kInvalid);  // bad sequence
  EXPECT_EQ(Length(s, 0), 0u) << "rejected generate calls touched the session";
  moerun_sampler_destroy(smp);
  moerun_session_destroy(s);
}

// struct_size larger than this library knows, or smaller than the size field itself, is rejected for
// every option struct; an older, shorter struct gets defaults for the fields it lacks.
TEST_F(Edge, StructSizes) {
  moerun_model* m = nullptr;
  moerun_session* s = nullptr;
  moerun_sampler* smp = nullptr;
  for (size_t bad : {size_t{0}, size_t{4}, sizeof(moerun_model_options) + 1}) {
    moerun_model_options mo;
    moerun_model_options_init(&mo);
    mo.struct_size = bad;
    EXPECT_EQ(moerun_model_load(ModelPath().c_str(), &mo, &m), MOERUN_ERR_INVALID_ARGUMENT) << bad;
  }
  for (size_t bad : {size_t{0}, size_t{7}, sizeof(moerun_session_options) + 4}) {
    moerun_session_options o;
    moerun_session_options_init(&o);
    o.struct_size = bad;
    EXPECT_EQ(moerun_session_create(model_, &o, &s), MOERUN_ERR_INVALID_ARGUMENT) << bad;
  }
  for (size_t bad : {size_t{0}, sizeof(moerun_sampler_options) + 8}) {
    moerun_sampler_options o;
    moerun_sampler_options_init(&o);
    o.struct_size = bad;
    EXPECT_EQ(moerun_sampler_create(&o, &smp), MOERUN_ERR_INVALID_ARGUMENT) << bad;
  }
  for (size_t bad : {size_t{0}, sizeof(moerun_model_info) + 1}) {
    moerun_model_info info;
    moerun_model_info_init(&info);
    info.struct_size = bad;
    EXPECT_EQ(moerun_model_get_info(model_, &info), MOERUN_ERR_INVALID_ARGUMENT) << bad;
  }
  EXPECT_EQ(m, nullptr);
  EXPECT_EQ(s, nullptr);
  EXPECT_EQ(smp, nullptr);

  // A caller built against a version whose session options ended at kv_capacity.
  moerun_session_options old;
  moerun_session_options_init(&old);
  old.struct_size = offsetof(moerun_session_options, max_sequences);
  old.kv_capacity = 8;
  old.max_sequences = 99;  // beyond struct_size: ignored, the default (1) applies
  ASSERT_EQ(moerun_session_create(model_, &old, &s), MOERUN_OK) << moerun_last_error();
  EXPECT_EQ(Decode(s, {1}, 1), MOERUN_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(Decode(s, std::vector<int32_t>(9, 1), 0), MOERUN_ERR_KV_CACHE_FULL);
  moerun_session_destroy(s);
  // An older info struct is filled up to its size only.
  moerun_model_info info;
  std::memset(&info, 0xAB, sizeof(info));
  info.struct_size = offsetof(moerun_model_info, hidden_size);
  ASSERT_EQ(moerun_model_get_info(model_, &info), MOERUN_OK);
  EXPECT_EQ(info.vocab_size, info_.vocab_size);
  EXPECT_EQ(info.hidden_size, 0xABABABABu);
}

TEST(EdgeSampler, EveryInvalidParameter) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  struct Case {
    float temperature;
    int32_t top_k;
    float top_p, min_p;
    const char* field;
  };
  for (const Case& c : {Case{nan, 0, 1.0f, 0.0f, "temperature"}, Case{inf, 0, 1.0f, 0.0f, "temperature"},
                        Case{-0.5f, 0, 1.0f, 0.0f, "temperature"}, Case{1.0f, -1, 1.0f, 0.0f, "top_k"},
                        Case{1.0f, 0, 1.5f, 0.0f, "top_p"}, Case{1.0f, 0, -0.1f, 0.0f, "top_p"},
                        Case{1.0f, 0, nan, 0.0f, "top_p"}, Case{1.0f, 0, 1.0f, 1.0f, "min_p"},
                        Case{1.0f, 0, 1.0f, -0.1f, "min_p"}, Case{1.0f, 0, 1.0f, nan, "min_p"}}) {
    moerun_sampler_options o;
    moerun_sampler_options_init(&o);
    o.temperature = c.temperature;
    o.top_k = c.top_k;
    o.top_p = c.top_p;
    o.min_p = c.min_p;
    moerun_sampler* s = nullptr;
    EXPECT_EQ(moerun_sampler_create(&o, &s), MOERUN_ERR_INVALID_ARGUMENT) << c.field;
    EXPECT_NE(std::string(moerun_last_error()).find(c.field), std::string::npos) << moerun_last_error();
    EXPECT_EQ(s, nullptr);
  }
  // The edges that are valid.
  moerun_sampler_options o;
  moerun_sampler_options_init(&o);
  o.temperature = 0.0f;
  o.top_p = 1.0f;
  o.min_p = 0.0f;
  o.top_k = 1;
  moerun_sampler* s = nullptr;
  EXPECT_EQ(moerun_sampler_create(&o, &s), MOERUN_OK);
  moerun_sampler_destroy(s);
}

}  // namespace
