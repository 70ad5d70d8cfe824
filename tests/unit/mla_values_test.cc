// The values path of MLA attention (MlaAttentionArgs::values): per-key values V[j, h] = W_UV^h ĉ_j
// instead of the latent weighted sum followed by W_UV. Checks that both backends' values path equals
// the latent path with W_UV applied afterwards (in double), over mixed batches of sequences with and
// without cached keys, paged caches, head counts and value widths that leave SIMD tails; the path
// choice; and a session whose prefill takes the values path against token-by-token decode (latent).
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backends/cpu/cpu_backend_impl.h"
#include "backends/reference/reference_backend.h"
#include "runtime/exec/session.h"
#include "runtime/format/model_file.h"
#include "runtime/model/model.h"
#include "tests/unit/mla_test_util.h"
#include "tests/unit/numeric_test_util.h"
#include "tests/unit/q8_test_util.h"
#include "tests/unit/tiny_model.h"

namespace moerun {
namespace {

using test::kSentinel;
using test::MakeValuesCase;
using test::RunValues;
using test::RelL2;
using test::ValuesCase;

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

// The keys form (MlaAttentionArgs::keys): q^N·K instead of the absorbed scores, the same model (the
// case's absorbed queries are W_UKᵀ q^N), on both backends and every CPU variant; k_dim 128 (whole
// 16-wide slices), 40 and 7.
TEST(MlaValuesPath, KeysFormMatchesLatentPath) {
  std::mt19937 rng(27);
  std::vector<int32_t> order;
  for (int i = 0; i < 10; ++i) order.insert(order.end(), {0, 1});
  for (int i = 0; i < 30; ++i) order.push_back(1);
  for (int i = 0; i < 5; ++i) order.push_back(2);
  ValuesCase fresh = MakeValuesCase(16, 512, 64, 128, 64, {0}, std::vector<int32_t>(70, 0), false, rng);
  test::AddKeysForm(fresh, 128, rng);
  CheckValuesCase(fresh, "keys form, V2-Lite shapes");
  ValuesCase mixed = MakeValuesCase(5, 48, 16, 40, 16, {0, 70, 3}, order, true, rng);
  test::AddKeysForm(mixed, 40, rng);
  CheckValuesCase(mixed, "keys form, mixed, small shapes");
  ValuesCase odd = MakeValuesCase(20, 96, 32, 64, 16, {0, 130, 3}, order, true, rng);
  test::AddKeysForm(odd, 7, rng);
  CheckValuesCase(odd, "keys form, 20 heads, k_dim 7");
}

TEST(MlaValuesPath, LongCachedContext) {
  std::mt19937 rng(23);
  // 40 new tokens after 300 cached keys: the running maxima of the online softmax are rescaled
  // across many blocks.
  CheckValuesCase(MakeValuesCase(16, 512, 64, 128, 64, {300}, std::vector<int32_t>(40, 0), false, rng), "long");
}

// At bf16 precision every value is rounded to bf16 where it is used; values that are bf16 numbers
// already (MlaAttentionArgs::values_bf16_exact, as the session passes them) give the same bits when
// the kernels skip that rounding, on every CPU variant and the reference.
TEST(MlaValuesPath, Bf16ExactValuesGiveTheSameBits) {
  std::mt19937 rng(26);
  for (const int64_t dk : {0, 128}) {  // the absorbed form, then the keys form (K as bf16 numbers too)
    ValuesCase c = MakeValuesCase(16, 512, 64, 128, 64, {70}, std::vector<int32_t>(20, 0), false, rng);
    if (dk > 0) test::AddKeysForm(c, dk, rng);
    for (float& v : c.values) v = Bf16ToF32(F32ToBf16(v));
    for (float& v : c.keys) v = Bf16ToF32(F32ToBf16(v));
    auto run = [&](const Backend& be, bool exact) {
      std::vector<float> got(c.T * c.H * c.dv, kSentinel);
      MlaAttentionArgs a = test::ValuesArgs(c, got.data());
      a.values_bf16_exact = exact;
      a.keys_bf16_exact = exact && dk > 0;
      be.MlaAttention(a);
      return got;
    };
    const std::string form = dk > 0 ? "keys form, " : "";
    for (const CpuVariant& v : CpuVariants()) {
      const cpu::CpuBackend be(Precision::kBF16, v.features);
      EXPECT_EQ(run(be, true), run(be, false)) << form << v.name;
    }
    const reference::ReferenceBackend ref(Precision::kBF16);
    EXPECT_EQ(run(ref, true), run(ref, false)) << form << "reference";
  }
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
  // The reference backend (the conformance oracle) agrees, on both paths' precisions.
  for (Precision p : {Precision::kF32, Precision::kBF16}) {
    const std::vector<float> got = RunValues(reference::ReferenceBackend(p), c);
    for (int64_t i = 0; i < c.H * c.dv; ++i) ASSERT_EQ(got[2 * c.H * c.dv + i], 0.0f) << "reference";
    for (float x : got) ASSERT_TRUE(std::isfinite(x)) << "reference";
  }
}

TEST(MlaValuesPath, PathChoice) {
  // DeepSeek-V2-Lite's attention (16 heads, kv_rank 512, v_dim 128); a chunk of n tokens of one
  // sequence after `cached` keys, whose tokens see cached + 1 ... cached + n keys.
  auto prefer = [](int64_t n, int64_t cached) {
    const int64_t pairs = n * cached + n * (n + 1) / 2;
    return MlaAttentionArgs::PreferValues(n, pairs, cached + n, 512, 128);
  };
  struct Case {
    int64_t n, cached;
    bool values;
    const char* why;
  };
  for (const Case& c : {
           Case{1, 0, false, "decode"},
           Case{1, 3999, false, "decode at 4k"},
           Case{8, 0, false, "a few tokens: the latent path"},
           Case{16, 0, true, "fresh prefill: nothing extra to expand"},
           Case{512, 0, true, "fresh prefill"},
           // 512-token chunks of a long prompt expand; at 64 tokens the expansion pays only while
           // the cached keys are few (pairs · 384 >= cached · 65536: up to 19).
           Case{512, 512, true, "chunk 2"},
           Case{512, 3584, true, "chunk 8 of a 4k prompt"},
           Case{512, 7680, true, "chunk 16 of an 8k prompt"},
           Case{64, 19, true, "64 tokens after 19"},
           Case{64, 20, false, "64 tokens after 20"},
           Case{64, 4000, false, "64 tokens at 4k"},
           Case{16, 4080, false, "16 tokens at 4k"},
           Case{512, 31 * 512, true, "chunk 32 of a 16k prompt"},
       })
    EXPECT_EQ(prefer(c.n, c.cached), c.values) << c.why;
  // No gain without a narrower value.
  EXPECT_FALSE(MlaAttentionArgs::PreferValues(512, 512 * 513 / 2, 512, 128, 128));
  // Heads per pass under the 64 MiB budget (key latents of 512 floats, values of 128 per head):
  // all 16 of V2-Lite at 4096 keys (8 + 32 MiB), 12 at 8192 (16 + 48); V3's 128 heads 28 at a time
  // at 4096 keys; one head up to 26214 keys; none once the key latents alone take the budget.
  constexpr int64_t kBudget = MlaAttentionArgs::kMaxValuesBytes;
  EXPECT_EQ(MlaAttentionArgs::ValuesHeadsPerPass(4096, 16, 512, 128, kBudget), 16);
  EXPECT_EQ(MlaAttentionArgs::ValuesHeadsPerPass(8192, 16, 512, 128, kBudget), 12);
  EXPECT_EQ(MlaAttentionArgs::ValuesHeadsPerPass(4096, 128, 512, 128, kBudget), 28);
  EXPECT_EQ(MlaAttentionArgs::ValuesHeadsPerPass(26214, 128, 512, 128, kBudget), 1);
  EXPECT_EQ(MlaAttentionArgs::ValuesHeadsPerPass(26215, 128, 512, 128, kBudget), 0);
  EXPECT_EQ(MlaAttentionArgs::ValuesHeadsPerPass(32768, 16, 512, 128, kBudget), 0);
  EXPECT_EQ(MlaAttentionArgs::ValuesHeadsPerPass(100, 16, 512, 128, 0), 0);
  // The keys form (k_dim 128): the same rule as the values path's for DeepSeek's k_dim = v_dim, and
  // its scratch (values and keys, 256 floats per head and key) 14 heads at a time at 4096 keys.
  for (const auto& [n, cached] : {std::pair<int64_t, int64_t>{1, 0}, {16, 0}, {512, 3584}, {64, 19}, {64, 20}}) {
    const int64_t pairs = n * cached + n * (n + 1) / 2;
    EXPECT_EQ(MlaAttentionArgs::PreferKeys(n, pairs, cached + n, 512, 128), prefer(n, cached))
        << n << " after " << cached;
  }
  EXPECT_FALSE(MlaAttentionArgs::PreferKeys(512, 512 * 513 / 2, 512, 512, 0));  // no no-rope part
  EXPECT_EQ(MlaAttentionArgs::ValuesHeadsPerPass(4096, 16, 512, 256, kBudget), 14);
}

// Where the CPU backend takes the keys form (Backend::MlaKeysForm): wherever the absorbed values path
// would not run on wider tiles, i.e. not at f32 with AVX-512, nor at bf16 with AMX-BF16 (AVX-512 and
// a CPU that has it); the reference backend always.
TEST(MlaValuesPath, KeysFormWhereTheAbsorbedFormHasNoWiderTiles) {
  cpu::CpuFeatures f = cpu::CpuFeatures::Detect();
  f.avx512 = false;
  EXPECT_TRUE(cpu::CpuBackend(Precision::kF32, f).MlaKeysForm());
  EXPECT_TRUE(cpu::CpuBackend(Precision::kBF16, f).MlaKeysForm());
  f.avx512 = true;
  EXPECT_FALSE(cpu::CpuBackend(Precision::kF32, f).MlaKeysForm());
  EXPECT_EQ(cpu::CpuBackend(Precision::kBF16, f).MlaKeysForm(), !cpu::q8::DetectSupport().amx_bf16);
  EXPECT_TRUE(reference::ReferenceBackend(Precision::kBF16).MlaKeysForm());
}

// Backend::ExpandKeys: the CPU backend's AVX-512 and AVX2 kernels give the default's bits (one chain of
// fused multiply-adds per output over kv_rank in order) for int8 and f32 views of W_UKᵀ, keys that
// leave a partial register tile, k_dim 128 (whole 32-wide tiles), 56 (one of 32, one of 16 and a
// partial one), 40 (a partial 16-wide slice) and 7 (none whole), on 1 and 2 threads, and both are
// within float rounding of the sums in double.
void ExpandKeysCases(const cpu::CpuBackend& cpu, const std::string& variant, std::mt19937& rng) {
  struct Shape {
    int64_t H, R, dk, n;
  };
  for (const Shape& sh : {Shape{3, 512, 128, 13}, Shape{2, 64, 56, 9}, Shape{2, 48, 40, 7}, Shape{4, 64, 7, 20},
                          Shape{2, 40, 120, 11}})
    for (bool int8 : {false, true}) {
      std::vector<test::Q8Weight> q8;
      std::vector<std::vector<float>> f32;
      std::vector<WeightView> views;
      for (int64_t h = 0; h < sh.H; ++h) {
        if (int8) {
          q8.push_back(test::RandomWeight(sh.R, sh.dk, rng));
        } else {
          f32.push_back(test::RandomVector(sh.R * sh.dk, rng, 0.1f));
        }
      }
      for (int64_t h = 0; h < sh.H; ++h) {
        WeightView w;
        if (int8) {
          w = q8[h].view();
        } else {
          w.data = f32[h].data();
          w.rows = sh.R;
          w.cols = sh.dk;
        }
        views.push_back(w);
      }
      const int64_t ldl = sh.R + 3, stride = sh.n * sh.dk + 5;
      const std::vector<float> lat = test::RandomVector(sh.n * ldl, rng, 0.5f);
      std::vector<float> want(sh.H * stride, kSentinel);
      cpu.Backend::ExpandKeys(views.data(), sh.H, lat.data(), ldl, sh.n, want.data(), stride);
      for (int threads : {1, 2}) {
        omp_set_num_threads(threads);
        std::vector<float> got(sh.H * stride, kSentinel);
        cpu.ExpandKeys(views.data(), sh.H, lat.data(), ldl, sh.n, got.data(), stride);
        const std::string what = variant + ", H " + std::to_string(sh.H) + ", k_dim " + std::to_string(sh.dk) +
                                 (int8 ? ", int8" : ", f32") + ", " + std::to_string(threads) + " threads";
        EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0) << what;
      }
      for (int64_t h = 0; h < sh.H; ++h)
        for (int64_t j = 0; j < sh.n; ++j) {
          std::vector<double> exact(sh.dk, 0.0);
          for (int64_t d = 0; d < sh.dk; ++d)
            for (int64_t r = 0; r < sh.R; ++r) exact[d] += static_cast<double>(lat[j * ldl + r]) * views[h].At(r, d);
          std::vector<float> e(exact.begin(), exact.end());
          EXPECT_LT(RelL2(want.data() + h * stride + j * sh.dk, e.data(), sh.dk), 1e-5)
              << "head " << h << ", key " << j;
        }
      for (int64_t h = 0; h < sh.H; ++h) EXPECT_EQ(want[h * stride + sh.n * sh.dk], kSentinel);  // gaps untouched
    }
}

TEST(MlaValuesPath, CpuExpandKeysGivesTheDefaultsBits) {
  std::mt19937 rng(28);
  for (const CpuVariant& v : CpuVariants()) ExpandKeysCases(cpu::CpuBackend(Precision::kBF16, v.features), v.name, rng);
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

// values_scratch_bytes picks how many heads go per pass (0: the latent path for the batch too).
void CheckSessionAgainstDecode(const std::string& backend, int64_t values_scratch_bytes, int64_t heads_per_pass) {
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
  // b's first 8 tokens alone, then one batch: all of a (fresh) interleaved with b's other 32
  // (continuing after 8 cached keys). 62 tokens, 30 + 40 keys to expand: the values path.
  so.values_scratch_bytes = values_scratch_bytes;
  auto s = Session::Create(m, so).value();
  {
    Batch first;
    first.n_tokens = 8;
    first.tokens = b.data();
    const std::vector<int32_t> seq1(8, 1);
    first.seq_ids = seq1.data();
    ASSERT_TRUE(s->Decode(first).ok());
  }
  std::vector<int32_t> toks, seqs, pos;
  size_t ia = 0, ib = 8;
  while (ia < a.size() || ib < b.size()) {
    for (int k = 0; k < 3 && ia < a.size(); ++k) toks.push_back(a[ia]), seqs.push_back(0), pos.push_back(ia++);
    if (ib < b.size()) toks.push_back(b[ib]), seqs.push_back(1), pos.push_back(ib++);
  }
  const int64_t T = static_cast<int64_t>(toks.size());
  const ModelConfig& c = m->config();
  int64_t pairs = 0;
  for (int32_t p : pos) pairs += p + 1;
  ASSERT_TRUE(MlaAttentionArgs::PreferValues(T, pairs, 30 + 40, c.kv_lora_rank, c.v_head_dim));
  ASSERT_FALSE(MlaAttentionArgs::PreferValues(1, 2, 1 + 1, c.kv_lora_rank, c.v_head_dim));
  ASSERT_EQ(MlaAttentionArgs::ValuesHeadsPerPass(30 + 40, c.num_heads, c.kv_lora_rank, c.v_head_dim,
                                                values_scratch_bytes),
            heads_per_pass);
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
        << backend << ", " << heads_per_pass << " heads per pass: batch token " << t << ", sequence " << seqs[t]
        << " position " << pos[t];
  }
}

TEST(MlaValuesPath, SessionBatchMatchesTokenByTokenDecode) {
  // The tiny model: 70 keys of 48 latent floats (13440 bytes), 2 heads of 24 values (6720 bytes each).
  for (const std::string backend : {"cpu", "reference"}) {
    CheckSessionAgainstDecode(backend, MlaAttentionArgs::kMaxValuesBytes, 2);
    CheckSessionAgainstDecode(backend, 13440 + 2 * 6720 - 1, 1);  // one head per pass
    CheckSessionAgainstDecode(backend, 13440 + 6720 - 1, 0);      // no room: latent
  }
}

}  // namespace
}  // namespace moerun
