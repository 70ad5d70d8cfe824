// The AMX-BF16 values path of MLA attention (mla_values_amx.cc), taken by a bf16 CpuBackend where the
// CPU has AMX-BF16. Checks it against a double-precision model of its own rounding points (bf16
// queries, keys, values; probabilities rounded to bf16 relative to the running maximum of each
// 64-key block), against the exact f32 values path, over mixed batches (fresh and continuing
// sequences, pages of 7 and 64 rows, 16 and 5 heads, key counts and widths with tails, a token that
// sees no keys); and which path each precision takes. Without AMX-BF16 the kernel cannot run: the
// tests then say so on stdout and in a test property, and bf16 is the AVX2 (or scalar) kernel, which
// rounds the same inputs (MlaValuesAvx2 checks it against the same model).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "backends/cpu/cpu_backend_impl.h"
#include "backends/cpu/mla_attention_impl.h"
#include "backends/cpu/q8_kernels.h"
#include "tests/unit/mla_test_util.h"
#include "tests/unit/numeric_test_util.h"

namespace moerun {
namespace {

using test::MakeValuesCase;
using test::RelL2;
using test::RunValues;
using test::ValuesCase;

bool HaveAmxBf16() { return test::HaveAmxBf16("mla values amx"); }

using test::Bf16;
using test::Bf16Neighbours;

// Expected output of one (token, head) in double, and how far the kernel may be from it.
struct Expected {
  std::vector<double> out;  // [dv]
  double slack = 0.0;       // L2 allowance for probabilities too close to a bf16 rounding midpoint
};

// rounded: the AMX path's model. Queries, keys and values rounded to bf16; scores in double; per
// block of kKeyBlock keys the running maximum m_b and p = bf16(exp(s − m_b)), weighted by
// exp(m_b − m_last) (the rescaling of O); out = Σ w V / Σ w. The kernel's f32 scores differ from
// double by ~1e-6 in the exponent, which can round a probability within that distance of a bf16
// midpoint the other way: such keys add their possible effect to the slack. Not rounded: exact
// softmax of the f32 inputs.
Expected Model(const ValuesCase& c, int64_t t, int64_t h, bool rounded) {
  const int64_t R = c.R, P = c.P, dv = c.dv, n = std::max<int32_t>(c.n_keys[t], 0);
  auto r = [&](float x) { return rounded ? Bf16(x) : x; };
  Expected e;
  e.out.assign(dv, 0.0);
  if (n == 0) return e;
  const LatentCacheView view{c.pool.data(), c.page_size, R, P};
  const float* ql = c.q_latent.data() + (t * c.H + h) * R;
  const float* qr = c.q_rope.data() + (t * c.H + h) * P;
  const float* v = c.token_values[t] + h * c.K * dv;
  std::vector<double> s(n);
  for (int64_t j = 0; j < n; ++j) {
    const float* row = view.Row(c.token_pages[t], j);
    double acc = 0.0;
    for (int64_t i = 0; i < R; ++i) acc += static_cast<double>(r(ql[i])) * r(row[i]);
    for (int64_t i = 0; i < P; ++i) acc += static_cast<double>(r(qr[i])) * r(row[R + i]);
    s[j] = static_cast<double>(c.Args().scale) * acc;
  }
  const int64_t block = rounded ? cpu::mla::amx::kKeyBlock : n;
  std::vector<double> w(n), wide(n), m_of(n);  // wide: the weight's rounding interval, when ambiguous
  double m = -INFINITY;
  for (int64_t j0 = 0; j0 < n; j0 += block) {
    const int64_t j1 = std::min(n, j0 + block);
    for (int64_t j = j0; j < j1; ++j) m = std::max(m, s[j]);
    for (int64_t j = j0; j < j1; ++j) {
      const double p = std::exp(s[j] - m);
      m_of[j] = m;
      w[j] = rounded ? Bf16(static_cast<float>(p)) : p;
      wide[j] = 0.0;
      if (rounded) {
        float lo, hi;
        Bf16Neighbours(static_cast<float>(p), &lo, &hi);
        if (std::fabs(p - 0.5 * (static_cast<double>(lo) + hi)) <= 5e-5 * p) wide[j] = static_cast<double>(hi) - lo;
      }
    }
  }
  double sum = 0.0;
  for (int64_t j = 0; j < n; ++j) {
    const double f = std::exp(m_of[j] - m);
    w[j] *= f;
    wide[j] *= f;
    sum += w[j];
  }
  for (int64_t j = 0; j < n; ++j)
    for (int64_t i = 0; i < dv; ++i) e.out[i] += w[j] * r(v[j * dv + i]);
  for (double& x : e.out) x /= sum;
  for (int64_t j = 0; j < n; ++j) {
    if (wide[j] == 0.0) continue;
    double d2 = 0.0;
    for (int64_t i = 0; i < dv; ++i) {
      const double d = r(v[j * dv + i]) - e.out[i];
      d2 += d * d;
    }
    e.slack += wide[j] * std::sqrt(d2) / sum;
  }
  return e;
}

double Norm(const std::vector<double>& x) {
  double s = 0.0;
  for (double v : x) s += v * v;
  return std::sqrt(s);
}

// got vs the model, per (token, head): ||got − want|| <= tol·||want|| + slack. Returns the largest
// relative error seen.
double CheckAgainstModel(const ValuesCase& c, const std::vector<float>& got, bool rounded, double tol,
                         const std::string& what) {
  double worst = 0.0;
  for (int64_t t = 0; t < c.T; ++t)
    for (int64_t h = 0; h < c.H; ++h) {
      const Expected e = Model(c, t, h, rounded);
      const float* g = got.data() + (t * c.H + h) * c.dv;
      double d2 = 0.0;
      for (int64_t i = 0; i < c.dv; ++i) d2 += (g[i] - e.out[i]) * (g[i] - e.out[i]);
      const double err = std::sqrt(d2), ref = Norm(e.out);
      if (ref > 0.0) worst = std::max(worst, err / ref);
      EXPECT_LE(err, tol * ref + e.slack) << what << ": token " << t << " (sequence " << c.seq_of[t] << ", "
                                          << c.n_keys[t] << " keys), head " << h << ", rel " << err / ref;
    }
  return worst;
}

std::vector<float> RunAmx(const ValuesCase& c) {
  return RunValues(cpu::CpuBackend(Precision::kBF16, cpu::CpuFeatures::Detect()), c);
}

// The AMX path against its rounding model (observed: at most 2.4e-7 relative per (token, head)
// where no probability lies near a bf16 midpoint, up to 6e-4 within the slack where one does) and
// against the exact f32 path (observed: 2.4e-3 to 3.7e-3 relative per token, bf16's 2^-9 over a
// few roundings).
void CheckCase(const ValuesCase& c, const std::string& what) {
  const std::vector<float> got = RunAmx(c);
  const double worst = CheckAgainstModel(c, got, true, 1e-5, what + ", bf16 model");
  const std::vector<float> exact = RunValues(cpu::CpuBackend(Precision::kF32, cpu::CpuFeatures::Detect()), c);
  double far = 0.0;
  const int64_t n = c.H * c.dv;
  for (int64_t t = 0; t < c.T; ++t) {
    const double rel = RelL2(got.data() + t * n, exact.data() + t * n, n);
    far = std::max(far, rel);
    EXPECT_LE(rel, 1e-2) << what << ", vs f32: token " << t << " (" << c.n_keys[t] << " keys)";
  }
  std::printf("%s: vs bf16 model %.2e, vs f32 path %.2e\n", what.c_str(), worst, far);
}

// The values kernel for CPUs without AVX-512 (AVX2), through the backend: at bf16 precision
// against the same rounding model (it rounds in the AMX kernel's blocks), at f32 against the exact
// softmax.
void CheckAvx2(const ValuesCase& c, const std::string& what) {
  cpu::CpuFeatures avx2;
  avx2.avx2 = true;
  const double rounded = CheckAgainstModel(c, RunValues(cpu::CpuBackend(Precision::kBF16, avx2), c), true, 1e-5,
                                           "avx2 bf16, " + what);
  const double exact = CheckAgainstModel(c, RunValues(cpu::CpuBackend(Precision::kF32, avx2), c), false, 1e-5,
                                         "avx2 f32, " + what);
  std::printf("avx2 %s: bf16 vs model %.2e, f32 vs exact %.2e\n", what.c_str(), rounded, exact);
}

template <typename Check>
void FreshPrefillCases(Check&& CheckCase) {
  std::mt19937 rng(31);
  // 150 tokens: 9 blocks of 16 and one of 6; keys in blocks of 64, 64 and 22.
  const std::vector<int32_t> order(150, 0);
  CheckCase(MakeValuesCase(16, 512, 64, 128, 64, {0}, order, false, rng), "V2-Lite shapes, pages of 64");
  CheckCase(MakeValuesCase(16, 512, 64, 128, 7, {0}, order, true, rng), "V2-Lite shapes, shuffled pages of 7");
}

template <typename Check>
void MixedBatchCases(Check&& CheckCase) {
  std::mt19937 rng(32);
  // Sequence 0 fresh, 1 after 70 cached keys, 2 after 3: interleaved token by token (blocks of one
  // row), then in runs (blocks of up to 16).
  std::vector<int32_t> order;
  for (int i = 0; i < 10; ++i) order.insert(order.end(), {0, 1});
  for (int i = 0; i < 30; ++i) order.push_back(1);
  for (int i = 0; i < 17; ++i) order.push_back(0);
  for (int i = 0; i < 5; ++i) order.push_back(2);
  CheckCase(MakeValuesCase(16, 512, 64, 128, 64, {0, 70, 3}, order, true, rng), "mixed, V2-Lite shapes");
  // 5 heads; rows of 64 (two steps); dv = 40: the ones column in the padding of the last tile.
  CheckCase(MakeValuesCase(5, 48, 16, 40, 7, {0, 70, 3}, order, true, rng), "mixed, 5 heads, dv 40");
  // Rows of 48 (padded to 64), no rope of a multiple of 16, dv = 16 (the ones column a tile of its own).
  CheckCase(MakeValuesCase(3, 40, 8, 16, 64, {0, 70, 3}, order, false, rng), "mixed, rows of 48, dv 16");
  CheckCase(MakeValuesCase(20, 96, 32, 24, 7, {0, 70, 3}, order, true, rng), "mixed, 20 heads, dv 24");
}

template <typename Check>
void LongContextCases(Check&& CheckCase) {
  std::mt19937 rng(33);
  // 40 new tokens after 300 cached keys: running maxima across six blocks of keys, the last partial.
  CheckCase(MakeValuesCase(16, 512, 64, 128, 64, {300}, std::vector<int32_t>(40, 0), false, rng), "long");
  // Keys that grow along the blocks (a later block holds the maximum): the rescaling of O matters.
  ValuesCase c = MakeValuesCase(4, 64, 16, 32, 64, {200}, std::vector<int32_t>(20, 0), false, rng);
  const int64_t W = c.R + c.P;
  for (size_t i = 0; i < c.pool.size(); ++i) c.pool[i] *= 1.0f + 0.02f * static_cast<float>(i / W);
  CheckCase(c, "growing scores");
}

TEST(MlaValuesAmx, FreshPrefill) {
  if (HaveAmxBf16()) FreshPrefillCases(CheckCase);
}
TEST(MlaValuesAmx, MixedBatch) {
  if (HaveAmxBf16()) MixedBatchCases(CheckCase);
}
TEST(MlaValuesAmx, LongCachedContext) {
  if (HaveAmxBf16()) LongContextCases(CheckCase);
}
TEST(MlaValuesAvx2, MatchesModel) {
  if (!cpu::q8::DetectSupport().avx2) GTEST_SKIP() << "no AVX2";
  FreshPrefillCases(CheckAvx2);
  MixedBatchCases(CheckAvx2);
  LongContextCases(CheckAvx2);
}

// The AVX2 values path on tiles of 2 to kValuesTileTokens tokens (one to four register tiles of 2-6
// tokens, split evenly) gives every token the bits it gets alone (its own scores, softmax and
// rounding; the keys the tile's tokens share weighed together in key order, the rest per token):
// f32 rows in place (f32), packed rows rounded (bf16 on an f32 cache) and bf16 rows in place (bf16
// on a bf16 cache), value rows (and the keys form's K) rounded or not, key counts that differ within
// a tile (a token with none, counts out of order, a count on a 64-key block boundary), and dv with a
// partial 16-wide slice. Where the CPU has AVX-512, the tiles also run on the keys form's AVX-512
// kernels (avx512k; wide), which must give the same bits as the AVX2 kernels alone.
// The case's values and expanded keys rounded to bf16, with its token pointers moved into them: what
// values_bf16_exact and keys_bf16_exact promise.
struct RoundedInputs {
  std::vector<float> values, keys;
  std::vector<const float*> token_values, token_keys;
  explicit RoundedInputs(const ValuesCase& c) : values(c.values), keys(c.keys) {
    RoundToBf16InPlace(values.data(), static_cast<int64_t>(values.size()));
    RoundToBf16InPlace(keys.data(), static_cast<int64_t>(keys.size()));
    for (const float* v : c.token_values) token_values.push_back(values.data() + (v - c.values.data()));
    for (const float* k : c.token_keys) token_keys.push_back(keys.data() + (k - c.keys.data()));
  }
};

// The kernels of a tile run: the AVX2 ones, the AVX-512 ones (wide), and with AVX512_BF16 the scores of
// the keys form at bf16 precision on vdpbf16ps (wide with the key pairs).
enum class TileKernels { kAvx2, kAvx512, kDpBf16 };

void ExpectTilesEqualTokensAlone(std::vector<ValuesCase>& cases) {
  std::vector<TileKernels> kernels{TileKernels::kAvx2};
  if (cpu::CpuFeatures::Detect().avx512) kernels.push_back(TileKernels::kAvx512);
  if (cpu::q8::DetectSupport().avx512_bf16) kernels.push_back(TileKernels::kDpBf16);
  cases[1].n_keys[3] = 0;
  std::swap(cases[1].n_keys[6], cases[1].n_keys[9]);
  cases[2].n_keys[4] = 64;  // ends on a block boundary among counts of 121-129
  for (size_t ci = 0; ci < cases.size(); ++ci) {
    const ValuesCase& c = cases[ci];
    const RoundedInputs rounded(c);
    std::vector<uint16_t> bf16_rows(c.pool.size());
    for (size_t i = 0; i < c.pool.size(); ++i) bf16_rows[i] = F32ToBf16(c.pool[i]);
    for (int form = 0; form < 3; ++form)
      for (bool exact_values : {false, true}) {
        const bool round = form > 0;
        MlaAttentionArgs a = test::ValuesArgs(c, nullptr);
        if (form == 2) {
          a.cache.pool = nullptr;
          a.cache.pool_bf16 = bf16_rows.data();
        }
        a.values_bf16_exact = exact_values;
        a.keys_bf16_exact = exact_values && c.dk > 0;
        if (exact_values) {
          a.values = rounded.token_values.data();
          if (c.dk > 0) a.keys = rounded.token_keys.data();
        }
        const std::string what = "case " + std::to_string(ci) + ", form " + std::to_string(form) +
                                 (exact_values ? ", values as bf16" : "") + (c.dk > 0 ? ", keys form" : "");
        std::vector<float> alone(c.T * c.H * c.dv, test::kSentinel);
        a.out = alone.data();
        for (int64_t t = 0; t < c.T; ++t) ASSERT_TRUE(cpu::mla::avx2::AttendValues(a, t, 1, round, false)) << what;
        for (TileKernels k : kernels) {
          const bool wide = k != TileKernels::kAvx2;
          cpu::mla::KeyPairs pairs;
          if (k == TileKernels::kDpBf16) {
            if (!(c.dk > 0 && cpu::mla::avx512k::DpScores(a, round))) continue;  // the AVX-512 run covers it
            cpu::mla::avx512k::PackKeyPairsOf(a, !a.keys_bf16_exact, false, &pairs);
          }
          const std::string kind = k == TileKernels::kAvx2     ? ""
                                   : k == TileKernels::kAvx512 ? ", AVX-512 kernels"
                                                               : ", AVX-512 kernels, scores on vdpbf16ps";
          for (int64_t nt = 2; nt <= cpu::mla::avx2::kValuesTileTokens; ++nt) {
            std::vector<float> tiled(alone.size() + 64, test::kSentinel);
            a.out = tiled.data();
            for (int64_t t0 = 0; t0 < c.T; t0 += nt)
              ASSERT_TRUE(cpu::mla::avx2::AttendValues(a, t0, std::min(nt, c.T - t0), round, wide,
                                                       k == TileKernels::kDpBf16 ? &pairs : nullptr))
                  << what << kind;
            EXPECT_EQ(std::memcmp(tiled.data(), alone.data(), alone.size() * sizeof(float)), 0)
                << what << ", tiles of " << nt << kind;
            for (size_t i = alone.size(); i < tiled.size(); ++i) ASSERT_EQ(tiled[i], test::kSentinel) << what;
          }
        }
      }
  }
  MlaAttentionArgs a = cases[0].Args();
  EXPECT_FALSE(cpu::mla::avx2::AttendValues(a, 0, 0, true, false));
  EXPECT_FALSE(cpu::mla::avx2::AttendValues(a, 0, cpu::mla::avx2::kValuesTileTokens + 1, true, false));
  const cpu::mla::KeyPairs none;
  EXPECT_FALSE(cpu::mla::avx2::AttendValues(a, 0, 1, true, true, &none));  // key pairs without the keys form
}

std::vector<ValuesCase> TileCases(std::mt19937& rng) {
  // Moved in, not copied: a case's token pointers point into its own vectors.
  std::vector<ValuesCase> cases;
  cases.push_back(MakeValuesCase(16, 512, 64, 128, 64, {70}, std::vector<int32_t>(13, 0), true, rng));
  cases.push_back(MakeValuesCase(5, 48, 16, 40, 7, {0}, std::vector<int32_t>(20, 0), false, rng));
  cases.push_back(MakeValuesCase(20, 64, 16, 24, 16, {120}, std::vector<int32_t>(9, 0), true, rng));
  return cases;
}

TEST(MlaValuesAvx2, TilesEqualTokensAlone) {
  if (!cpu::q8::DetectSupport().avx2) GTEST_SKIP() << "no AVX2";
  std::mt19937 rng(36);
  std::vector<ValuesCase> cases = TileCases(rng);
  ExpectTilesEqualTokensAlone(cases);
}

// The same for the keys form (mla_keys_avx2.cc, mla_keys_avx512.cc): tiles of 1-3 vectors of tokens,
// register tiles of 12, 6 or 4 keys (AVX-512: 12 or 10) and single keys at a block's end; k_dim 128,
// 40 and 7.
TEST(MlaValuesAvx2, KeysFormTilesEqualTokensAlone) {
  if (!cpu::q8::DetectSupport().avx2) GTEST_SKIP() << "no AVX2";
  std::mt19937 rng(37);
  std::vector<ValuesCase> cases = TileCases(rng);
  const int64_t dk[3] = {128, 40, 7};
  for (size_t i = 0; i < cases.size(); ++i) test::AddKeysForm(cases[i], dk[i], rng);
  ExpectTilesEqualTokensAlone(cases);
}

TEST(MlaValuesAmx, TokenWithoutKeysGivesZeros) {
  const bool amx = HaveAmxBf16();
  std::mt19937 rng(34);
  ValuesCase c = MakeValuesCase(3, 48, 16, 24, 16, {0, 0}, {0, 0, 1, 1, 1}, false, rng);
  c.n_keys[2] = 0;  // as if token 2 saw nothing; token 3 is then a block's second row
  const std::vector<float> got = RunAmx(c);
  for (int64_t i = 0; i < c.H * c.dv; ++i) ASSERT_EQ(got[2 * c.H * c.dv + i], 0.0f);
  for (float x : got) ASSERT_TRUE(std::isfinite(x));
  if (amx) CheckAgainstModel(c, got, true, 1e-5, "no keys");
}

// Which path each precision takes: bf16 gives exactly what the AMX kernel gives where there is
// AMX-BF16, else the rounded result of the AVX2 or scalar kernel (measurably off the exact result
// either way); f32 always the exact path.
TEST(MlaValuesAmx, PrecisionChoosesPath) {
  const bool amx = HaveAmxBf16();
  std::mt19937 rng(35);
  const ValuesCase c = MakeValuesCase(16, 512, 64, 128, 64, {10}, std::vector<int32_t>(40, 0), false, rng);
  const cpu::CpuFeatures detected = cpu::CpuFeatures::Detect();
  const std::vector<float> bf16 = RunValues(cpu::CpuBackend(Precision::kBF16, detected), c);
  const std::vector<float> f32 = RunValues(cpu::CpuBackend(Precision::kF32, detected), c);
  // f32: the exact softmax of the f32 inputs (the AMX path is ~1e-3 away from it).
  const double f32_err = CheckAgainstModel(c, f32, false, 1e-5, "f32 precision");
  EXPECT_LT(f32_err, 1e-5);
  const double bf16_err = CheckAgainstModel(c, bf16, false, 1e-1, "bf16 precision vs exact");
  if (amx) {
    std::vector<float> direct(bf16.size(), 0.0f);
    MlaAttentionArgs a = c.Args();
    a.values = c.token_values.data();
    a.v_dim = c.dv;
    a.v_head_stride = c.K * c.dv;
    a.out = direct.data();
    cpu::mla::amx::AttendValues(a, true);
    EXPECT_EQ(std::memcmp(direct.data(), bf16.data(), bf16.size() * sizeof(float)), 0) << "bf16 took another path";
    EXPECT_GT(bf16_err, 1e-4) << "bf16 as exact as f32: not the AMX path";
  } else {
    EXPECT_GT(bf16_err, 1e-4) << "no AMX-BF16: bf16 as exact as f32, not a rounding kernel";
  }
  // Without AVX-512 (the scalar kernels) bf16 never reaches the AMX kernel: the scalar kernel rounds
  // the same inputs as the model of the AMX kernel (whose blocks of kKeyBlock keys are one block here:
  // every token sees fewer keys), and f32 stays exact.
  cpu::CpuFeatures scalar = detected;
  scalar.avx512 = false;
  static_assert(cpu::mla::amx::kKeyBlock >= 50, "the case's tokens see up to 50 keys");
  CheckAgainstModel(c, RunValues(cpu::CpuBackend(Precision::kBF16, scalar), c), true, 1e-5, "scalar bf16");
  EXPECT_LT(CheckAgainstModel(c, RunValues(cpu::CpuBackend(Precision::kF32, scalar), c), false, 1e-5, "scalar f32"),
            1e-5);
}

// Several threads calling at once, each with its own tile configuration and scratch: the same
// results as one call alone.
TEST(MlaValuesAmx, ConcurrentCallers) {
  HaveAmxBf16();
  std::mt19937 rng(36);
  const ValuesCase c = MakeValuesCase(16, 512, 64, 128, 64, {20}, std::vector<int32_t>(60, 0), false, rng);
  const std::vector<float> want = RunAmx(c);
  std::vector<std::vector<float>> got(3);
  std::vector<std::thread> threads;
  for (auto& g : got)
    threads.emplace_back([&c, &g] {
      for (int i = 0; i < 3; ++i) g = RunAmx(c);
    });
  for (auto& th : threads) th.join();
  for (const auto& g : got) EXPECT_EQ(std::memcmp(g.data(), want.data(), want.size() * sizeof(float)), 0);
}

}  // namespace
}  // namespace moerun
