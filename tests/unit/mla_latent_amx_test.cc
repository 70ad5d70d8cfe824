// The AMX-BF16 latent path of MLA attention (mla_latent_amx.cc): decode and chunks at long context
// at bf16 precision, where the CPU has AMX-BF16. Checks one span of keys (AttendLatent) against a
// double-precision model of its rounding points (bf16 queries and cache rows; probabilities rounded
// to bf16 relative to the running maximum of each block of kLatentKeyBlock keys from the span's
// start), over spans that start and end inside pages and blocks, shuffled pages, 5 to 128 heads (one
// or several groups of 16, a partial last one) and row widths with tails; then whole calls of the
// backend (spans merged across threads, several tokens) against the exact f32 path; which path
// each precision takes; tokens without keys; concurrent callers. Without AMX-BF16 the kernel cannot
// run: the tests then say so, and the backend's bf16 is the AVX512_BF16 kernel (the same blocks with
// vdpbf16ps loops, mla_latent_bf16.cc; MlaLatentDpBf16 checks it against the same model) where the
// CPU has AVX512_BF16, else the AVX2 (or scalar) kernel, which rounds the same inputs (MlaLatentAvx2
// checks it against the same model). Tokens of one sequence that the backend groups into a unit
// (their keys converted once) give exactly what each gives alone.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
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

using test::Bf16;
using test::Bf16Neighbours;
using test::MakeValuesCase;
using test::RelL2;
using test::ValuesCase;

bool HaveAmxBf16() { return test::HaveAmxBf16("mla latent amx"); }

// A batch whose tokens attend over a paged cache (the values are not used: dv = 1).
ValuesCase MakeCase(int64_t H, int64_t R, int64_t P, int64_t page_size, const std::vector<int64_t>& cached,
                    const std::vector<int32_t>& order, bool shuffle_pages, std::mt19937& rng) {
  return MakeValuesCase(H, R, P, 1, page_size, cached, order, shuffle_pages, rng);
}

// What one span's pass should leave, in double: the maximum, the sum of the weights and the
// weighted latents relative to that maximum (a Partial), and how far the kernel may be from them.
struct Expected {
  double max = -INFINITY, sum = 0.0;
  std::vector<double> out;  // [R]
  double slack = 0.0;       // L2 allowance of out / sum for probabilities near a bf16 midpoint
  double sum_slack = 0.0;   // the same for sum
};

// Keys [j0, j1) of token t, head h: scores from bf16 queries and rows; per block of
// kLatentKeyBlock keys from j0 the running maximum m_b and p = bf16(exp(s − m_b)), weighted by
// exp(m_b − m_last). The kernel's f32 scores differ from double by ~1e-6 in the exponent, which can
// round a probability within that distance of a bf16 midpoint the other way: such keys add their
// possible effect to the slacks.
// Without rounding (the f32 kernels): exact inputs and probabilities, no slack.
Expected Model(const ValuesCase& c, int64_t t, int64_t h, int64_t j0, int64_t j1, bool rounded = true) {
  const int64_t R = c.R, P = c.P, n = j1 - j0;
  auto in = [rounded](float v) { return rounded ? Bf16(v) : static_cast<double>(v); };
  const LatentCacheView view{c.pool.data(), c.page_size, R, P};
  const float* ql = c.q_latent.data() + (t * c.H + h) * R;
  const float* qr = c.q_rope.data() + (t * c.H + h) * P;
  std::vector<double> s(n), m_of(n), w(n), wide(n);
  for (int64_t j = 0; j < n; ++j) {
    const float* row = view.Row(c.token_pages[t], j0 + j);
    double acc = 0.0;
    for (int64_t i = 0; i < R; ++i) acc += in(ql[i]) * in(row[i]);
    for (int64_t i = 0; i < P; ++i) acc += in(qr[i]) * in(row[R + i]);
    s[j] = static_cast<double>(c.Args().scale) * acc;
  }
  Expected e;
  const int64_t block = cpu::mla::amx::kLatentKeyBlock;
  for (int64_t b0 = 0; b0 < n; b0 += block) {
    const int64_t b1 = std::min(n, b0 + block);
    for (int64_t j = b0; j < b1; ++j) e.max = std::max(e.max, s[j]);
    for (int64_t j = b0; j < b1; ++j) {
      const double p = std::exp(s[j] - e.max);
      m_of[j] = e.max;
      w[j] = rounded ? Bf16(static_cast<float>(p)) : p;
      float lo, hi;
      Bf16Neighbours(static_cast<float>(p), &lo, &hi);
      wide[j] = rounded && std::fabs(p - 0.5 * (static_cast<double>(lo) + hi)) <= 5e-5 * p ? static_cast<double>(hi) - lo
                                                                                            : 0.0;
    }
  }
  e.out.assign(R, 0.0);
  for (int64_t j = 0; j < n; ++j) {
    const double f = std::exp(m_of[j] - e.max);
    w[j] *= f;
    wide[j] *= f;
    e.sum += w[j];
    e.sum_slack += wide[j];
    const float* row = view.Row(c.token_pages[t], j0 + j);
    for (int64_t i = 0; i < R; ++i) e.out[i] += w[j] * in(row[i]);
  }
  for (int64_t j = 0; j < n; ++j) {
    if (wide[j] == 0.0) continue;
    const float* row = view.Row(c.token_pages[t], j0 + j);
    double d2 = 0.0;
    for (int64_t i = 0; i < R; ++i) {
      const double d = in(row[i]) - e.out[i] / e.sum;
      d2 += d * d;
    }
    e.slack += wide[j] * std::sqrt(d2) / e.sum;
  }
  return e;
}

// One span through AttendLatent against the model, every head: the maximum (f32 scores: 1e-5
// relative), the sum and the normalised output (1e-5 relative plus the midpoint slack). Observed
// (normalised output): at most 1.7e-7 relative where no probability lies near a midpoint, 8.7e-5
// within the slack where one does.
// kernel(a, t, j0, j1, partial) runs the span; rounded: bf16 precision's model, else the exact one.
using SpanKernel = bool (*)(const MlaAttentionArgs&, int64_t, int64_t, int64_t, const cpu::mla::Partial&);
void CheckSpanOf(SpanKernel kernel, bool rounded, const ValuesCase& c, int64_t t, int64_t j0, int64_t j1,
                 const std::string& what) {
  const int64_t H = c.H, R = c.R;
  std::vector<float> out(H * R + 16, test::kSentinel), mx(H + 16, test::kSentinel), sum(H + 16, test::kSentinel);
  MlaAttentionArgs a = c.Args();
  ASSERT_TRUE(kernel(a, t, j0, j1, cpu::mla::Partial{out.data(), mx.data(), sum.data()}));
  for (size_t i = H * R; i < out.size(); ++i) ASSERT_EQ(out[i], test::kSentinel) << what << ": wrote past out";
  for (size_t i = H; i < mx.size(); ++i) ASSERT_EQ(mx[i], test::kSentinel) << what << ": wrote past max";
  for (size_t i = H; i < sum.size(); ++i) ASSERT_EQ(sum[i], test::kSentinel) << what << ": wrote past sum";
  double worst = 0.0;
  for (int64_t h = 0; h < H; ++h) {
    const Expected e = Model(c, t, h, j0, j1, rounded);
    EXPECT_NEAR(mx[h], e.max, 1e-5 * std::max(1.0, std::fabs(e.max))) << what << ", head " << h;
    EXPECT_NEAR(sum[h], e.sum, 1e-5 * e.sum + e.sum_slack) << what << ", head " << h;
    double d2 = 0.0, r2 = 0.0;
    for (int64_t i = 0; i < R; ++i) {
      const double want = e.out[i] / e.sum, got = static_cast<double>(out[h * R + i]) / sum[h];
      d2 += (got - want) * (got - want);
      r2 += want * want;
    }
    const double err = std::sqrt(d2), ref = std::sqrt(r2);
    worst = std::max(worst, err / ref);
    EXPECT_LE(err, 1e-5 * ref + e.slack) << what << ", head " << h << ", rel " << err / ref;
  }
  std::printf("%s: keys [%lld, %lld), %lld heads: worst rel %.2e\n", what.c_str(), static_cast<long long>(j0),
              static_cast<long long>(j1), static_cast<long long>(H), worst);
}

bool AmxSpan(const MlaAttentionArgs& a, int64_t t, int64_t j0, int64_t j1, const cpu::mla::Partial& p) {
  return cpu::mla::amx::AttendLatent(a, t, j0, j1, p);
}
void CheckSpan(const ValuesCase& c, int64_t t, int64_t j0, int64_t j1, const std::string& what) {
  CheckSpanOf(AmxSpan, true, c, t, j0, j1, what);
}

// The span cases of every latent kernel, run by check(c, t, j0, j1, what).
template <typename Check>
void SpanCases(Check&& CheckSpan) {
  std::mt19937 rng(41);
  // V2-Lite shapes: 16 heads, rows of 512 + 64. A whole sequence, then spans that start and end
  // inside pages and blocks (the blocks count from the span's start).
  const ValuesCase v2 = MakeCase(16, 512, 64, 64, {300}, {0}, false, rng);
  CheckSpan(v2, 0, 0, 301, "V2-Lite shapes");
  CheckSpan(v2, 0, 37, 290, "V2-Lite shapes, inner span");
  CheckSpan(v2, 0, 100, 101, "V2-Lite shapes, one key");
  const ValuesCase paged = MakeCase(16, 512, 64, 7, {400}, {0}, true, rng);
  CheckSpan(paged, 0, 5, 401, "shuffled pages of 7");
  // 5 heads (a partial group), rows of 40 + 8: kv_rank and row width not multiples of 16 or 32.
  CheckSpan(MakeCase(5, 40, 8, 16, {150}, {0}, true, rng), 0, 3, 151, "5 heads, rows of 48");
  // 3 heads, rows of 29 + 6: kv_rank and row width not multiples of 8 (the AVX2 kernel's packed
  // block ends inside a vector).
  CheckSpan(MakeCase(3, 29, 6, 16, {150}, {0}, true, rng), 0, 2, 151, "3 heads, rows of 35");
  // 20 heads: a whole and a partial group; no rope.
  CheckSpan(MakeCase(20, 96, 0, 16, {200}, {0}, false, rng), 0, 0, 201, "20 heads, no rope");
  // 128 heads (V3's count): eight groups sharing every key tile.
  CheckSpan(MakeCase(128, 64, 16, 64, {140}, {0}, false, rng), 0, 11, 141, "128 heads");
  // Rows that grow along the keys: a later block holds every head's maximum, so O and the sums are
  // rescaled at each block.
  ValuesCase c = MakeCase(16, 128, 32, 64, {600}, {0}, false, rng);
  const int64_t W = c.R + c.P;
  for (size_t i = 0; i < c.pool.size(); ++i) c.pool[i] *= 1.0f + 0.004f * static_cast<float>(i / W);
  CheckSpan(c, 0, 0, 601, "growing scores");
}

TEST(MlaLatentAmx, SpansMatchRoundingModel) {
  if (!HaveAmxBf16()) return;
  SpanCases(CheckSpan);
}

// The AVX2 kernel (CPUs without AVX-512) on the same spans: at bf16 precision against the same
// rounding model (it rounds in the same blocks), at f32 against the exact softmax.
bool Avx2Rounded(const MlaAttentionArgs& a, int64_t t, int64_t j0, int64_t j1, const cpu::mla::Partial& p) {
  return cpu::mla::avx2::AttendLatent(a, t, j0, j1, true, p);
}
bool Avx2Exact(const MlaAttentionArgs& a, int64_t t, int64_t j0, int64_t j1, const cpu::mla::Partial& p) {
  return cpu::mla::avx2::AttendLatent(a, t, j0, j1, false, p);
}
TEST(MlaLatentAvx2, SpansMatchModel) {
  if (!cpu::q8::DetectSupport().avx2) GTEST_SKIP() << "no AVX2";
  SpanCases([](const ValuesCase& c, int64_t t, int64_t j0, int64_t j1, const std::string& what) {
    CheckSpanOf(Avx2Rounded, true, c, t, j0, j1, "avx2 bf16, " + what);
    CheckSpanOf(Avx2Exact, false, c, t, j0, j1, "avx2 f32, " + what);
  });
}

// The block kernels of the latent path at bf16 precision (mla_latent_blocks.h): AMX-BF16 tile
// products and AVX512_BF16 loops, where the CPU has them.
struct BlockKernel {
  const char* name;
  bool available;
  SpanKernel span;
  bool (*tokens)(const MlaAttentionArgs&, int64_t, int64_t, const cpu::mla::Partial*);
};
bool DpSpan(const MlaAttentionArgs& a, int64_t t, int64_t j0, int64_t j1, const cpu::mla::Partial& p) {
  return cpu::mla::dpbf16::AttendLatent(a, t, j0, j1, p);
}
BlockKernel Amx() { return {"amx", cpu::q8::DetectSupport().amx_bf16, AmxSpan, cpu::mla::amx::AttendLatentTokens}; }
BlockKernel Dp() {
  return {"avx512_bf16", cpu::q8::DetectSupport().avx512_bf16, DpSpan, cpu::mla::dpbf16::AttendLatentTokens};
}
// The one the backend runs at bf16 precision here, if either.
BlockKernel Detected() { return Amx().available ? Amx() : Dp(); }

// The AVX512_BF16 loops (AMX's blocks and rounding, vdpbf16ps for the products) against the same
// rounding model.
TEST(MlaLatentDpBf16, SpansMatchRoundingModel) {
  if (!Dp().available) GTEST_SKIP() << "no AVX512_BF16";
  SpanCases([](const ValuesCase& c, int64_t t, int64_t j0, int64_t j1, const std::string& what) {
    CheckSpanOf(DpSpan, true, c, t, j0, j1, "avx512_bf16, " + what);
  });
}

// One token alone through the kernel's span over all its keys, normalised as the backend does: [H, R].
std::vector<float> AloneNormalised(const BlockKernel& k, const ValuesCase& c, int64_t t) {
  std::vector<float> out(c.H * c.R), mx(c.H), sum(c.H);
  const MlaAttentionArgs a = c.Args();
  const int64_t n = std::max<int32_t>(c.n_keys[t], 0);
  if (n > 0) {
    EXPECT_TRUE(k.span(a, t, 0, n, cpu::mla::Partial{out.data(), mx.data(), sum.data()}));
  }
  for (int64_t h = 0; h < c.H; ++h) {
    const float inv = n > 0 && sum[h] > 0.0f ? 1.0f / sum[h] : 0.0f;
    for (int64_t i = 0; i < c.R; ++i) out[h * c.R + i] = n > 0 ? out[h * c.R + i] * inv : 0.0f;
  }
  return out;
}

// Tokens of one sequence in a unit: each token's keys are converted once for all of them, and each
// token gets exactly what it gets alone (its own keys, its own blocks from key 0).
void CheckUnitOfTokens(const BlockKernel& k) {
  std::mt19937 rng(46);
  // 8 tokens after 126 cached keys: their key counts (127-134) straddle the 128-key block.
  for (int64_t H : {16, 20}) {
    const ValuesCase c = MakeCase(H, 512, 64, 7, {126}, std::vector<int32_t>(8, 0), true, rng);
    const int64_t nt = cpu::mla::amx::LatentUnitTokens(H, 8);
    EXPECT_EQ(nt, H <= 16 ? 8 : 4);
    std::vector<float> out(c.T * c.H * c.R), stats(2 * c.H * nt);
    std::vector<cpu::mla::Partial> parts;
    for (int64_t i = 0; i < nt; ++i)
      parts.push_back({out.data() + i * c.H * c.R, stats.data() + 2 * c.H * i, stats.data() + 2 * c.H * i + c.H});
    ASSERT_TRUE(k.tokens(c.Args(), 0, nt, parts.data()));
    for (int64_t i = 0; i < nt; ++i) {
      std::vector<float> got(c.H * c.R);
      for (int64_t h = 0; h < c.H; ++h) {
        const float inv = 1.0f / parts[i].sum[h];
        for (int64_t r = 0; r < c.R; ++r) got[h * c.R + r] = parts[i].out[h * c.R + r] * inv;
      }
      const std::vector<float> want = AloneNormalised(k, c, i);
      EXPECT_EQ(std::memcmp(got.data(), want.data(), want.size() * sizeof(float)), 0)
          << k.name << ", " << H << " heads, token " << i;
    }
    EXPECT_FALSE(k.tokens(c.Args(), 0, cpu::mla::amx::kMaxUnitTokens + 1, parts.data()));
  }
}
TEST(MlaLatentAmx, UnitOfTokensEqualsTokensAlone) {
  if (!HaveAmxBf16()) return;
  CheckUnitOfTokens(Amx());
}
TEST(MlaLatentDpBf16, UnitOfTokensEqualsTokensAlone) {
  if (!Dp().available) GTEST_SKIP() << "no AVX512_BF16";
  CheckUnitOfTokens(Dp());
}

// The backend groups a chunk's tokens into units (and keeps sequences apart): every token's output
// equals that token alone, bit for bit (with whichever block kernel the backend runs here).
TEST(MlaLatentAmx, ChunkThroughBackendEqualsTokensAlone) {
  const BlockKernel k = Detected();
  if (!k.available) GTEST_SKIP() << "no AMX-BF16 or AVX512_BF16: the backend takes a token at a time";
  std::mt19937 rng(47);
  std::vector<int32_t> order(12, 0);
  order.insert(order.end(), {1, 1, 0, 1});
  ValuesCase c = MakeCase(16, 512, 64, 64, {1000, 200}, order, true, rng);
  c.n_keys[3] = 0;  // a token that sees nothing, inside a unit
  std::vector<float> got(c.T * c.H * c.R, test::kSentinel);
  MlaAttentionArgs a = c.Args();
  a.out = got.data();
  cpu::CpuBackend(Precision::kBF16, cpu::CpuFeatures::Detect()).MlaAttention(a);
  for (int64_t t = 0; t < c.T; ++t) {
    const std::vector<float> want = AloneNormalised(k, c, t);
    EXPECT_EQ(std::memcmp(got.data() + t * c.H * c.R, want.data(), want.size() * sizeof(float)), 0)
        << k.name << ", token " << t;
  }
}

// Whole calls at bf16 precision: spans merged across threads (decode) and several tokens, against
// the exact f32 path (observed: 2.2e-3 to 2.5e-3 relative per token, bf16's 2^-9 over a few
// roundings, on AMX and in the AVX2 kernel, which rounds the same inputs). bf16 rounds on every CPU.
void CheckAgainstF32(const ValuesCase& c, const std::string& what) {
  const cpu::CpuFeatures detected = cpu::CpuFeatures::Detect();
  std::vector<float> bf16(c.T * c.H * c.R), f32(bf16.size());
  MlaAttentionArgs a = c.Args();
  a.out = bf16.data();
  cpu::CpuBackend(Precision::kBF16, detected).MlaAttention(a);
  a.out = f32.data();
  cpu::CpuBackend(Precision::kF32, detected).MlaAttention(a);
  const int64_t n = c.H * c.R;
  double lo = INFINITY, hi = 0.0;
  for (int64_t t = 0; t < c.T; ++t) {
    const double rel = RelL2(bf16.data() + t * n, f32.data() + t * n, n);
    lo = std::min(lo, rel);
    hi = std::max(hi, rel);
    EXPECT_LE(rel, 1e-2) << what << ": token " << t << " (" << c.n_keys[t] << " keys)";
    EXPECT_GT(rel, 1e-5) << what << ": token " << t << " as exact as f32: not a rounding path";
  }
  std::printf("%s: bf16 vs f32 path %.2e to %.2e relative per token\n", what.c_str(), lo, hi);
}

TEST(MlaLatentAmx, BackendAgreesWithF32Path) {
  HaveAmxBf16();  // says which kernel runs
  std::mt19937 rng(43);
  // Decode at long context: one token, its keys split into spans across the threads.
  CheckAgainstF32(MakeCase(16, 512, 64, 64, {4500}, {0}, true, rng), "decode at 4501 keys");
  // A chunk of 8 tokens after 1000 cached keys, two sequences interleaved.
  CheckAgainstF32(MakeCase(16, 512, 64, 64, {1000, 30}, {0, 1, 0, 1, 0, 0, 0, 1}, true, rng), "chunk");
}

TEST(MlaLatentAmx, TokenWithoutKeysGivesZeros) {
  HaveAmxBf16();
  std::mt19937 rng(44);
  ValuesCase c = MakeCase(16, 64, 16, 16, {0, 0}, {0, 0, 1}, false, rng);
  c.n_keys[1] = 0;
  std::vector<float> out(c.T * c.H * c.R, test::kSentinel);
  MlaAttentionArgs a = c.Args();
  a.out = out.data();
  cpu::CpuBackend(Precision::kBF16, cpu::CpuFeatures::Detect()).MlaAttention(a);
  for (int64_t i = 0; i < c.H * c.R; ++i) ASSERT_EQ(out[c.H * c.R + i], 0.0f);
  for (float x : out) ASSERT_TRUE(std::isfinite(x));
}

// Several threads calling at once, each with its own tile configuration and scratch: the same
// results as one call alone.
TEST(MlaLatentAmx, ConcurrentCallers) {
  HaveAmxBf16();
  std::mt19937 rng(45);
  const ValuesCase c = MakeCase(16, 512, 64, 64, {2000}, {0, 0}, false, rng);
  const cpu::CpuBackend be(Precision::kBF16, cpu::CpuFeatures::Detect());
  auto run = [&c, &be] {
    std::vector<float> out(c.T * c.H * c.R);
    MlaAttentionArgs a = c.Args();
    a.out = out.data();
    be.MlaAttention(a);
    return out;
  };
  const std::vector<float> want = run();
  std::vector<std::vector<float>> got(3);
  std::vector<std::thread> threads;
  for (auto& g : got)
    threads.emplace_back([&run, &g] {
      for (int i = 0; i < 3; ++i) g = run();
    });
  for (auto& th : threads) th.join();
  for (const auto& g : got) EXPECT_EQ(std::memcmp(g.data(), want.data(), want.size() * sizeof(float)), 0);
}

}  // namespace
}  // namespace moerun
