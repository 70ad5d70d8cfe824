// End-to-end runtime behaviour on small random models built with ModelWriter: backends agree,
// batching and sequences do not change results, and the session's bookkeeping is exact.
#include <gtest/gtest.h>

#include <cmath>
#include <sstream>
#include <vector>

#include "runtime/exec/session.h"
#include "runtime/format/model_file.h"
#include "runtime/model/model.h"
#include "tests/unit/numeric_test_util.h"
#include "tests/unit/tiny_model.h"

namespace moerun {
namespace {

using test::RelL2;

std::shared_ptr<Model> LoadTiny(const testing::TinyModelOptions& o, const std::string& backend, Precision p) {
  const std::string path = testing::TempDir("runtime") + "/tiny_" + std::to_string(o.seed) + "_" +
                           DTypeName(o.linear_dtype) + (o.q_lora ? "_q" : "") +
                           (o.architecture == Architecture::kDeepseekV2 ? "_v2" : "_v3") + ".moerun";
  Status st = testing::WriteTinyModel(path, o);
  EXPECT_TRUE(st.ok()) << st.message();
  auto f = ModelFile::Open(path, VerifyOptions{});
  EXPECT_TRUE(f.ok()) << f.status().message();
  auto m = Model::Create(f.value(), backend, p, 0);
  EXPECT_TRUE(m.ok()) << m.status().message();
  return m.ok() ? m.value() : nullptr;
}

// Logits of every position of `ids` decoded as one batch into sequence 0.
std::vector<float> PrefillLogits(const std::shared_ptr<Model>& m, const std::vector<int32_t>& ids) {
  SessionOptions so;
  so.kv_capacity = 256;
  so.max_batch_tokens = 256;
  auto s = Session::Create(m, so);
  EXPECT_TRUE(s.ok());
  std::vector<uint8_t> all(ids.size(), 1);
  Batch b;
  b.n_tokens = static_cast<int64_t>(ids.size());
  b.tokens = ids.data();
  b.logits = all.data();
  EXPECT_TRUE(s.value()->Decode(b).ok());
  const int64_t V = m->config().vocab_size;
  std::vector<float> out;
  for (size_t t = 0; t < ids.size(); ++t) {
    const float* l = s.value()->Logits(t).value();
    out.insert(out.end(), l, l + V);
  }
  return out;
}

std::vector<int32_t> Ids(int n, int seed) {
  std::vector<int32_t> v(n);
  for (int i = 0; i < n; ++i) v[i] = (i * 37 + seed * 11 + 5) % 96;
  return v;
}

struct Variant {
  DType dtype;
  bool q_lora;
  Architecture arch;
};

void PrintTo(const Variant& v, std::ostream* os) {
  *os << DTypeName(v.dtype) << (v.q_lora ? "_q_lora" : "_q_proj")
      << (v.arch == Architecture::kDeepseekV2 ? "_v2" : "_v3");
}

class BackendAgreementTest : public ::testing::TestWithParam<Variant> {};

TEST_P(BackendAgreementTest, CpuMatchesReference) {
  testing::TinyModelOptions o;
  o.linear_dtype = GetParam().dtype;
  o.q_lora = GetParam().q_lora;
  o.architecture = GetParam().arch;
  const auto ids = Ids(70, 3);  // crosses a KV page boundary (64)
  const auto ref = PrefillLogits(LoadTiny(o, "reference", Precision::kF32), ids);
  const auto cpu = PrefillLogits(LoadTiny(o, "cpu", Precision::kF32), ids);
  EXPECT_LE(RelL2(cpu, ref), 1e-5);
  const auto ref16 = PrefillLogits(LoadTiny(o, "reference", Precision::kBF16), ids);
  const auto cpu16 = PrefillLogits(LoadTiny(o, "cpu", Precision::kBF16), ids);
  EXPECT_LE(RelL2(cpu16, ref16), 1e-2);  // f32 vs double accumulation, re-rounded to bf16 at every layer
  EXPECT_LE(RelL2(cpu16, ref), 3e-2);
}

INSTANTIATE_TEST_SUITE_P(Variants, BackendAgreementTest,
                         ::testing::Values(Variant{DType::kBF16, true, Architecture::kDeepseekV3},
                                           Variant{DType::kF8E4M3, true, Architecture::kDeepseekV3},
                                           Variant{DType::kQ8Panel, true, Architecture::kDeepseekV3},
                                           Variant{DType::kF32, false, Architecture::kDeepseekV2},
                                           Variant{DType::kBF16, false, Architecture::kDeepseekV2}),
                         [](const ::testing::TestParamInfo<Variant>& i) {
                           std::ostringstream os;
                           PrintTo(i.param, &os);
                           return os.str();
                         });

TEST(Session, IncrementalDecodeEqualsPrefill) {
  auto m = LoadTiny({}, "cpu", Precision::kF32);
  const auto ids = Ids(20, 1);
  const auto full = PrefillLogits(m, ids);
  SessionOptions so;
  so.kv_capacity = 64;
  auto s = Session::Create(m, so).value();
  const int64_t V = m->config().vocab_size;
  // 7 tokens, then one at a time.
  Batch b;
  b.n_tokens = 7;
  b.tokens = ids.data();
  ASSERT_TRUE(s->Decode(b).ok());
  std::vector<float> got(s->Logits(6).value(), s->Logits(6).value() + V);
  std::vector<float> want(full.begin() + 6 * V, full.begin() + 7 * V);
  EXPECT_LE(RelL2(got, want), 1e-5);
  for (size_t t = 7; t < ids.size(); ++t) {
    Batch one;
    one.n_tokens = 1;
    one.tokens = &ids[t];
    ASSERT_TRUE(s->Decode(one).ok());
    got.assign(s->Logits(0).value(), s->Logits(0).value() + V);
    want.assign(full.begin() + t * V, full.begin() + (t + 1) * V);
    EXPECT_LE(RelL2(got, want), 1e-5) << "position " << t;
  }
  EXPECT_EQ(s->SeqLength(0).value(), ids.size());
}

TEST(Session, MixedBatchOfSequencesEqualsSeparateRuns) {
  auto m = LoadTiny({}, "cpu", Precision::kF32);
  const int64_t V = m->config().vocab_size;
  const auto a = Ids(9, 2), b = Ids(5, 7);
  const auto la = PrefillLogits(m, a), lb = PrefillLogits(m, b);
  SessionOptions so;
  so.kv_capacity = 256;
  so.max_sequences = 3;
  auto s = Session::Create(m, so).value();
  // Prefill of a (seq 2) interleaved with prefill of b (seq 0), every position asking for logits.
  std::vector<int32_t> toks, seqs;
  std::vector<uint8_t> want;
  size_t ia = 0, ib = 0;
  while (ia < a.size() || ib < b.size()) {
    if (ia < a.size()) toks.push_back(a[ia++]), seqs.push_back(2), want.push_back(1);
    if (ib < b.size()) toks.push_back(b[ib++]), seqs.push_back(0), want.push_back(1);
  }
  Batch batch;
  batch.n_tokens = static_cast<int64_t>(toks.size());
  batch.tokens = toks.data();
  batch.seq_ids = seqs.data();
  batch.logits = want.data();
  ASSERT_TRUE(s->Decode(batch).ok());
  ia = ib = 0;
  for (size_t t = 0; t < toks.size(); ++t) {
    const std::vector<float> got(s->Logits(t).value(), s->Logits(t).value() + V);
    const auto& ref = seqs[t] == 2 ? la : lb;
    const size_t pos = seqs[t] == 2 ? ia++ : ib++;
    const std::vector<float> exp(ref.begin() + pos * V, ref.begin() + (pos + 1) * V);
    EXPECT_LE(RelL2(got, exp), 1e-5) << "batch token " << t;
  }
  EXPECT_EQ(s->SeqLength(2).value(), a.size());
  EXPECT_EQ(s->SeqLength(0).value(), b.size());
  EXPECT_EQ(s->SeqLength(1).value(), 0u);
}

TEST(Session, KvCacheFullLeavesStateUnchanged) {
  auto m = LoadTiny({}, "cpu", Precision::kF32);
  SessionOptions so;
  so.kv_capacity = 64;
  so.max_batch_tokens = 128;
  auto s = Session::Create(m, so).value();
  const auto ids = Ids(60, 4);
  Batch b;
  b.n_tokens = 60;
  b.tokens = ids.data();
  ASSERT_TRUE(s->Decode(b).ok());
  const auto more = Ids(10, 5);
  Batch b2;
  b2.n_tokens = 10;
  b2.tokens = more.data();
  const Status st = s->Decode(b2);
  EXPECT_EQ(st.code(), StatusCode::kKvCacheFull) << st.message();
  EXPECT_EQ(s->SeqLength(0).value(), 60u);
  EXPECT_EQ(s->kv_free_tokens(), 4);
  // Removing the sequence frees its pages.
  ASSERT_TRUE(s->SeqRemove(0).ok());
  EXPECT_EQ(s->kv_free_tokens(), 64);
  EXPECT_TRUE(s->Decode(b2).ok());
}

TEST(Session, RejectsBadBatches) {
  auto m = LoadTiny({}, "cpu", Precision::kF32);
  SessionOptions so;
  so.max_sequences = 2;
  so.max_batch_tokens = 8;
  auto s = Session::Create(m, so).value();
  int32_t bad = 96;
  Batch b;
  b.n_tokens = 1;
  b.tokens = &bad;
  EXPECT_EQ(s->Decode(b).code(), StatusCode::kInvalidArgument);
  int32_t tok = 3, seq = 2, pos = 5;
  b.tokens = &tok;
  b.seq_ids = &seq;
  EXPECT_NE(s->Decode(b).message().find("sequence id 2"), std::string::npos);
  seq = 1;
  b.positions = &pos;
  EXPECT_NE(s->Decode(b).message().find("continues at 0"), std::string::npos);
  b.positions = nullptr;
  b.n_tokens = 9;
  EXPECT_NE(s->Decode(b).message().find("max_batch_tokens"), std::string::npos);
  b.n_tokens = 0;
  EXPECT_EQ(s->Decode(b).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s->SeqLength(1).value(), 0u);
  EXPECT_EQ(s->Logits(0).status().code(), StatusCode::kInvalidArgument);
}

TEST(Session, UnknownBackendIsUnsupported) {
  const std::string path = testing::TempDir("runtime") + "/tiny_backend.moerun";
  ASSERT_TRUE(testing::WriteTinyModel(path, {}).ok());
  auto f = ModelFile::Open(path, VerifyOptions{});
  auto m = Model::Create(f.value(), "tpu", Precision::kF32, 0);
  EXPECT_EQ(m.status().code(), StatusCode::kUnsupported);
  EXPECT_NE(m.status().message().find("available: cpu, reference"), std::string::npos);
}

}  // namespace
}  // namespace moerun
