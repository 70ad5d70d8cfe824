// The values path of MLA attention (MlaAttentionArgs::values): per-key values V[j, h] = W_UV^h ĉ_j
// instead of the latent weighted sum followed by W_UV. Checks that both backends' values path equals
// the latent path with W_UV applied afterwards (in double), over mixed batches of sequences with and
// without cached keys, paged caches, head counts and value widths that leave SIMD tails; the path
// choice; and a session whose prefill takes the values path against token-by-token decode (latent).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backends/cpu/cpu_backend_impl.h"
#include "backends/reference/reference_backend.h"
#include "runtime/exec/session.h"
#include "runtime/format/model_file.h"
#include "runtime/model/model.h"
#include "tests/unit/tiny_model.h"
#include "tests/unit/numeric_test_util.h"

namespace moerun {
namespace {

constexpr float kSentinel = 12345.0f;

using test::RandomVector;
using test::RelL2;

struct CpuVariant {
  std::string name;
  cpu::CpuFeatures features;
};

std::vector<CpuVariant> CpuVariants() {
  const cpu::CpuFeatures detected = cpu::CpuFeatures::Detect();
  std::vector<CpuVariant> v{{"detected", detected}};
  cpu::CpuFeatures scalar = detected;
  scalar.avx512 = false;
  v.push_back({"no_avx512", scalar});
  return v;
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

ValuesCase MakeValuesCase(int64_t H, int64_t R, int64_t P, int64_t dv, int64_t page_size,
                          const std::vector<int64_t>& cached, const std::vector<int32_t>& order, bool shuffle_pages,
                          std::mt19937& rng) {
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
  c.values.assign(static_cast<size_t>(H * c.K * dv), 0.0f);
  const LatentCacheView view{c.pool.data(), page_size, R, P};
  for (int64_t s = 0; s < n_seq; ++s)
    for (int64_t j = 0; j < c.seq_keys[s]; ++j) {
      const float* row = view.Row(c.tables[s].data(), j);
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < dv; ++i) {
          double acc = 0.0;
          for (int64_t r = 0; r < R; ++r) acc += static_cast<double>(c.uv[(h * dv + i) * R + r]) * row[r];
          c.values[(h * c.K + c.seq_first[s] + j) * dv + i] = static_cast<float>(acc);
        }
    }
  for (int64_t t = 0; t < c.T; ++t) c.token_values.push_back(c.values.data() + c.seq_first[c.seq_of[t]] * dv);
  return c;
}

// The latent path of the reference backend, then W_UV per head in double: [T, H, dv].
std::vector<float> LatentThenUv(const ValuesCase& c) {
  const reference::ReferenceBackend ref(Precision::kF32);
  std::vector<float> latent(c.T * c.H * c.R);
  MlaAttentionArgs a = c.Args();
  a.out = latent.data();
  ref.MlaAttention(a);
  std::vector<float> want(c.T * c.H * c.dv);
  for (int64_t th = 0; th < c.T * c.H; ++th) {
    const int64_t h = th % c.H;
    for (int64_t i = 0; i < c.dv; ++i) {
      double acc = 0.0;
      for (int64_t r = 0; r < c.R; ++r) acc += static_cast<double>(c.uv[(h * c.dv + i) * c.R + r]) * latent[th * c.R + r];
      want[th * c.dv + i] = static_cast<float>(acc);
    }
  }
  return want;
}

std::vector<float> RunValues(const Backend& be, const ValuesCase& c) {
  std::vector<float> got(c.T * c.H * c.dv + 64, kSentinel);  // 64 past the end: nothing may write there
  MlaAttentionArgs a = c.Args();
  a.values = c.token_values.data();
  a.v_dim = c.dv;
  a.v_head_stride = c.K * c.dv;
  a.out = got.data();
  be.MlaAttention(a);
  for (size_t i = c.T * c.H * c.dv; i < got.size(); ++i) EXPECT_EQ(got[i], kSentinel) << "wrote past the output";
  got.resize(c.T * c.H * c.dv);
  return got;
}

// Both compute the same convex combinations of the same value vectors in float32, in other orders
// (values: Σ_j p_j (W ĉ_j); latent: W Σ_j p_j ĉ_j), from the same float32 scores: per element the
// difference is a few float32 roundings of the sum's magnitude, far below 1e-5 relative. The bound is
// per token, so that a token with few keys cannot hide behind the others.
void CheckValuesCase(const ValuesCase& c, const std::string& what) {
  const std::vector<float> want = LatentThenUv(c);
  const reference::ReferenceBackend ref(Precision::kF32);
  std::vector<std::pair<std::string, std::vector<float>>> runs;
  runs.emplace_back("reference", RunValues(ref, c));
  for (const CpuVariant& v : CpuVariants()) runs.emplace_back(v.name, RunValues(cpu::CpuBackend(Precision::kF32, v.features), c));
  const int64_t n = c.H * c.dv;
  for (const auto& [name, got] : runs)
    for (int64_t t = 0; t < c.T; ++t)
      EXPECT_LT(RelL2(got.data() + t * n, want.data() + t * n, n), 1e-5)
          << what << ", " << name << ", token " << t << " (sequence " << c.seq_of[t] << ", " << c.n_keys[t] << " keys)";
}

TEST(MlaValuesPath, FreshPrefillMatchesLatentPath) {
  std::mt19937 rng(21);
  std::vector<int32_t> order(150, 0);
  // DeepSeek's shapes: rows of 576 in pages of 64 (the contiguous-rows kernels), several key blocks.
  CheckValuesCase(MakeValuesCase(16, 512, 64, 128, 64, {0}, order, false, rng), "V2-Lite shapes");
  // Shuffled pages of 16 rows: blocks of keys spread over several pages.
  CheckValuesCase(MakeValuesCase(16, 512, 64, 128, 16, {0}, order, true, rng), "shuffled pages");
}

TEST(MlaValuesPath, MixedBatchWithCachedKeysMatchesLatentPath) {
  std::mt19937 rng(22);
  // Sequence 0 fresh, sequence 1 continuing after 70 cached keys, sequence 2 after 3: interleaved
  // one by one, then in runs (tiles of one sequence), in one batch.
  std::vector<int32_t> order;
  for (int i = 0; i < 10; ++i) order.insert(order.end(), {0, 1});
  for (int i = 0; i < 30; ++i) order.push_back(1);
  for (int i = 0; i < 17; ++i) order.push_back(0);
  for (int i = 0; i < 5; ++i) order.push_back(2);
  CheckValuesCase(MakeValuesCase(16, 512, 64, 128, 64, {0, 70, 3}, order, true, rng), "mixed, V2-Lite shapes");
  // Heads that do not fill a group of 16, value widths with a masked tail (40 = 16 + 16 + 8), odd
  // latent and rope widths, pages of 16.
  CheckValuesCase(MakeValuesCase(5, 48, 16, 40, 16, {0, 70, 3}, order, true, rng), "mixed, small shapes");
  CheckValuesCase(MakeValuesCase(20, 96, 32, 64, 16, {0, 70, 3}, order, true, rng), "mixed, 20 heads");
}

TEST(MlaValuesPath, LongCachedContext) {
  std::mt19937 rng(23);
  // 40 new tokens after 300 cached keys: the running maxima of the online softmax are rescaled
  // across many blocks.
  CheckValuesCase(MakeValuesCase(16, 512, 64, 128, 64, {300}, std::vector<int32_t>(40, 0), false, rng), "long");
}

TEST(MlaValuesPath, TokenWithoutKeysGivesZeros) {
  std::mt19937 rng(24);
  ValuesCase c = MakeValuesCase(3, 48, 16, 24, 16, {0, 0}, {0, 0, 1, 1}, false, rng);
  c.n_keys[2] = 0;  // as if token 2 saw nothing
  for (const CpuVariant& v : CpuVariants()) {
    const std::vector<float> got = RunValues(cpu::CpuBackend(Precision::kF32, v.features), c);
    for (int64_t i = 0; i < c.H * c.dv; ++i) ASSERT_EQ(got[2 * c.H * c.dv + i], 0.0f) << v.name;
    for (float x : got) ASSERT_TRUE(std::isfinite(x)) << v.name;
  }
}

TEST(MlaValuesPath, PathChoice) {
  // Decode: one token, however long its context.
  EXPECT_FALSE(MlaAttentionArgs::PreferValues(1, 1));
  EXPECT_FALSE(MlaAttentionArgs::PreferValues(1, 4000));
  // A few tokens: the latent path, whose output W_UV costs the same.
  EXPECT_FALSE(MlaAttentionArgs::PreferValues(8, 8));
  // Fresh prefill: as many keys as tokens.
  EXPECT_TRUE(MlaAttentionArgs::PreferValues(16, 16));
  EXPECT_TRUE(MlaAttentionArgs::PreferValues(512, 512));
  // A chunk continuing a sequence: values while the cached keys are at most as many as the new ones.
  EXPECT_TRUE(MlaAttentionArgs::PreferValues(512, 1024));
  EXPECT_FALSE(MlaAttentionArgs::PreferValues(512, 1025));
  EXPECT_FALSE(MlaAttentionArgs::PreferValues(64, 4064));
}

// Session level: a batch that takes the values path (a fresh sequence and a continued one, mixed)
// against the same tokens decoded one at a time, which takes the latent path.
std::shared_ptr<Model> LoadTiny(const std::string& backend) {
  testing::TinyModelOptions o;
  o.linear_dtype = DType::kF32;
  const std::string path = testing::TempDir("mla_values") + "/tiny_" + backend + ".moerun";
  Status st = testing::WriteTinyModel(path, o);
  EXPECT_TRUE(st.ok()) << st.message();
  auto f = ModelFile::Open(path, VerifyOptions{});
  EXPECT_TRUE(f.ok()) << f.status().message();
  auto m = Model::Create(f.value(), backend, Precision::kF32, 0);
  EXPECT_TRUE(m.ok()) << m.status().message();
  return m.ok() ? m.value() : nullptr;
}

std::vector<int32_t> Ids(int n, int seed) {
  std::vector<int32_t> v(n);
  for (int i = 0; i < n; ++i) v[i] = (i * 37 + seed * 11 + 5) % 96;
  return v;
}

void CheckSessionAgainstDecode(const std::string& backend) {
  auto m = LoadTiny(backend);
  ASSERT_TRUE(m);
  const int64_t V = m->config().vocab_size;
  const auto a = Ids(30, 4), b = Ids(40, 5);
  SessionOptions so;
  so.kv_capacity = 256;
  so.max_sequences = 2;
  so.max_batch_tokens = 128;
  // Token by token (T = 1: the latent path): logits of every position of a (sequence 0) and b (1).
  std::vector<std::vector<float>> one_by_one[2];
  {
    auto s = Session::Create(m, so).value();
    for (int seq = 0; seq < 2; ++seq)
      for (int32_t id : seq == 0 ? a : b) {
        Batch one;
        one.n_tokens = 1;
        one.tokens = &id;
        one.seq_ids = &seq;
        ASSERT_TRUE(s->Decode(one).ok());
        one_by_one[seq].emplace_back(s->Logits(0).value(), s->Logits(0).value() + V);
      }
  }
  // b's first 24 tokens alone, then one batch: all of a (fresh) interleaved with b's other 16
  // (continuing after 24 cached keys). 46 tokens, 30 + 40 keys to expand: the values path.
  auto s = Session::Create(m, so).value();
  {
    Batch first;
    first.n_tokens = 24;
    first.tokens = b.data();
    const std::vector<int32_t> seq1(24, 1);
    first.seq_ids = seq1.data();
    ASSERT_TRUE(s->Decode(first).ok());
  }
  std::vector<int32_t> toks, seqs, pos;
  size_t ia = 0, ib = 24;
  while (ia < a.size() || ib < b.size()) {
    for (int k = 0; k < 3 && ia < a.size(); ++k) toks.push_back(a[ia]), seqs.push_back(0), pos.push_back(ia++);
    if (ib < b.size()) toks.push_back(b[ib]), seqs.push_back(1), pos.push_back(ib++);
  }
  const int64_t T = static_cast<int64_t>(toks.size());
  ASSERT_TRUE(MlaAttentionArgs::PreferValues(T, 30 + 40));
  ASSERT_FALSE(MlaAttentionArgs::PreferValues(1, 1 + 1));
  const std::vector<uint8_t> all(T, 1);
  Batch batch;
  batch.n_tokens = T;
  batch.tokens = toks.data();
  batch.seq_ids = seqs.data();
  batch.logits = all.data();
  ASSERT_TRUE(s->Decode(batch).ok());
  for (int64_t t = 0; t < T; ++t) {
    const std::vector<float>& want = one_by_one[seqs[t]][pos[t]];
    EXPECT_LT(RelL2(s->Logits(t).value(), want.data(), V), 1e-5)
        << backend << ": batch token " << t << ", sequence " << seqs[t] << " position " << pos[t];
  }
}

TEST(MlaValuesPath, SessionBatchMatchesTokenByTokenDecode) {
  CheckSessionAgainstDecode("cpu");
  CheckSessionAgainstDecode("reference");
}

}  // namespace
}  // namespace moerun
