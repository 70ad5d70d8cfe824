// Conformance of the CPU backend against the scalar reference backend, for both precisions and for
// each kernel family the machine can run (oneDNN + AVX-512, own AVX-512 kernels only, scalar).
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "tests/unit/numeric_test_util.h"
#include "backends/cpu/cpu_backend.h"
#include "backends/cpu/cpu_backend_impl.h"
#include "backends/reference/reference_backend.h"
#include "converters/q8_pack.h"

namespace moerun::cpu {
namespace {

constexpr float kSentinel = 12345.0f;

struct Variant {
  std::string name;
  CpuFeatures features;
};

std::vector<Variant> Variants() {
  const CpuFeatures detected = CpuFeatures::Detect();
  std::vector<Variant> v;
  v.push_back({"detected", detected});
  CpuFeatures no_avx = detected;
  no_avx.avx512 = false;
  v.push_back({"no_avx512", no_avx});
  if (detected.avx512) {
    CpuFeatures own = detected;
    own.onednn = false;
    v.push_back({"own_avx512", own});
  }
  CpuFeatures scalar;
  scalar.avx512 = false;
  scalar.onednn = false;
  v.push_back({"scalar", scalar});
  return v;
}

const char* PrecisionName(Precision p) { return p == Precision::kF32 ? "f32" : "bf16"; }

using test::RandomVector;
using test::RelL2;

// A weight in its file dtype with the bytes it points at (move-only: a copy would point at the
// original's bytes).
struct TestWeight {
  TestWeight() = default;
  TestWeight(TestWeight&&) = default;
  TestWeight& operator=(TestWeight&&) = default;
  std::vector<uint8_t> bytes;
  std::vector<float> scale;
  WeightView view;
};

// q8_panel: normal weights packed by the converter's quantiser.
TestWeight MakeQ8Weight(int64_t rows, int64_t cols, std::mt19937& rng) {
  TestWeight t;
  std::normal_distribution<float> normal(0.0f, 0.05f);
  std::vector<float> w(static_cast<size_t>(rows * cols));
  for (float& v : w) v = normal(rng);
  t.bytes.resize(static_cast<size_t>(q8::MatrixBytes(rows, cols)));
  t.scale.resize(static_cast<size_t>(q8::MatrixScales(rows, cols)));
  EXPECT_TRUE(convert::PackQ8Panels(w.data(), rows, cols, t.bytes.data(), t.scale.data()));
  t.view.dtype = DType::kQ8Panel;
  t.view.data = t.bytes.data();
  t.view.rows = rows;
  t.view.cols = cols;
  t.view.scale = t.scale.data();
  t.view.scale_cols = q8::Groups(cols);
  t.view.block_rows = 1;
  t.view.block_cols = static_cast<int32_t>(q8::kGroupCols);
  return t;
}

TestWeight MakeWeight(DType dtype, int64_t rows, int64_t cols, std::mt19937& rng) {
  if (dtype == DType::kQ8Panel) return MakeQ8Weight(rows, cols, rng);
  TestWeight t;
  const size_t n = static_cast<size_t>(rows * cols);
  t.bytes.resize(n * DTypeSize(dtype));
  std::normal_distribution<float> normal(0.0f, 0.05f);
  std::uniform_int_distribution<int> byte(0, 255), coin(0, 99);
  for (size_t i = 0; i < n; ++i) {
    switch (dtype) {
      case DType::kF32: {
        const float v = normal(rng);
        std::memcpy(t.bytes.data() + 4 * i, &v, 4);
        break;
      }
      case DType::kBF16: {
        const uint16_t v = F32ToBf16(normal(rng));
        std::memcpy(t.bytes.data() + 2 * i, &v, 2);
        break;
      }
      case DType::kF16: {  // random finite patterns, some subnormal
        const uint16_t exp = coin(rng) < 5 ? 0 : static_cast<uint16_t>(8 + byte(rng) % 8);
        const uint16_t v = static_cast<uint16_t>((byte(rng) & 1) << 15 | exp << 10 | ((byte(rng) << 2) & 0x3ff));
        std::memcpy(t.bytes.data() + 2 * i, &v, 2);
        break;
      }
      case DType::kF8E4M3: {  // every non-NaN pattern, subnormals included
        int v;
        do v = byte(rng);
        while ((v & 0x7f) == 0x7f);
        t.bytes[i] = static_cast<uint8_t>(v);
        break;
      }
      case DType::kQ8Panel:
        break;  // MakeQ8Weight
    }
  }
  t.view.dtype = dtype;
  t.view.data = t.bytes.data();
  t.view.rows = rows;
  t.view.cols = cols;
  if (dtype == DType::kF8E4M3) {
    t.view.block_rows = 128;
    t.view.block_cols = 128;
    const int64_t sr = (rows + 127) / 128, sc = (cols + 127) / 128;
    t.view.scale_cols = sc + 1;  // a row stride wider than the grid
    std::uniform_real_distribution<float> s(0.5e-2f, 2e-2f);
    t.scale.resize(static_cast<size_t>(sr * t.view.scale_cols));
    for (float& v : t.scale) v = s(rng);
    t.view.scale = t.scale.data();
  }
  return t;
}

constexpr DType kDTypes[] = {DType::kF32, DType::kBF16, DType::kF16, DType::kF8E4M3, DType::kQ8Panel};

// Runs Linear on M rows with padded strides; checks the result and that padding was not touched.
void CheckLinear(const Backend& be, const Backend& ref, const WeightView& w, int64_t M, double tol,
                 const std::string& what) {
  std::mt19937 rng(static_cast<uint32_t>(M * 7919 + w.rows * 31 + w.cols));
  const int64_t ldx = w.cols + 5, ldy = w.rows + 3;
  const std::vector<float> x = RandomVector(static_cast<size_t>(M * ldx), rng);
  std::vector<float> y(static_cast<size_t>(M * ldy), kSentinel), y_ref(y);
  ref.Linear(w, x.data(), ldx, M, y_ref.data(), ldy);
  be.Linear(w, x.data(), ldx, M, y.data(), ldy);
  std::vector<float> got, want;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t c = 0; c < ldy; ++c) {
      const float v = y[m * ldy + c];
      if (c >= w.rows) {
        ASSERT_EQ(v, kSentinel) << what << ": wrote past row " << m << "'s outputs";
      } else {
        got.push_back(v);
        want.push_back(y_ref[m * ldy + c]);
      }
    }
  EXPECT_LT(RelL2(got, want), tol) << what;
}

TEST(CpuBackendLinear, MatchesReference) {
  std::mt19937 rng(1);
  const std::pair<int64_t, int64_t> shapes[] = {{200, 300}, {64, 256}, {33, 17}};
  for (Precision p : {Precision::kF32, Precision::kBF16}) {
    const reference::ReferenceBackend ref(p);
    // Both paths accumulate in fp32; bf16 matches the reference's rounding exactly, so only the
    // accumulation order differs there too.
    const double tol = p == Precision::kF32 ? 2e-6 : 1e-5;
    for (DType dt : kDTypes)
      for (auto [rows, cols] : shapes) {
        const TestWeight w = MakeWeight(dt, rows, cols, rng);
        for (const Variant& v : Variants()) {
          const CpuBackend be(p, v.features);
          for (int64_t M : {1, 3, 17, 64})
            CheckLinear(be, ref, w.view, M, tol,
                        std::string(PrecisionName(p)) + " " + v.name + " " + DTypeName(dt) + " " +
                            std::to_string(rows) + "x" + std::to_string(cols) + " M=" + std::to_string(M));
        }
      }
  }
}

TEST(CpuBackendLinear, Bf16PreparedCopiesMatchReference) {
  std::mt19937 rng(2);
  const reference::ReferenceBackend ref(Precision::kBF16);
  for (const Variant& v : Variants()) {
    CpuBackend be(Precision::kBF16, v.features);
    std::vector<TestWeight> weights;
    for (DType dt : kDTypes) weights.push_back(MakeWeight(dt, 200, 300, rng));
    std::vector<WeightView> views;
    for (const TestWeight& w : weights) views.push_back(w.view);
    ASSERT_TRUE(be.PrepareWeights(views).ok());
    EXPECT_EQ(be.PreparedBytes(), 3 * 200 * 300 * 2) << v.name;  // all but the bf16 weight
    for (const TestWeight& w : weights)
      for (int64_t M : {1, 3, 17, 64})
        CheckLinear(be, ref, w.view, M, 1e-5,
                    v.name + " prepared " + DTypeName(w.view.dtype) + " M=" + std::to_string(M));
  }
}

TEST(CpuBackendLinear, F32PrecisionKeepsNoCopies) {
  std::mt19937 rng(3);
  const TestWeight w8 = MakeWeight(DType::kF8E4M3, 40, 300, rng), w16 = MakeWeight(DType::kF16, 40, 300, rng);
  CpuBackend be(Precision::kF32, CpuFeatures::Detect());
  ASSERT_TRUE(be.PrepareWeights({w8.view, w16.view}).ok());
  // At most the e4m3 block flags: one byte per 4 rows × 128 columns.
  EXPECT_LE(be.PreparedBytes(), 10 * 3);
}

// Prepared e4m3 weights decode blocks of normal numbers on a faster path; blocks with zeros,
// subnormals or NaN must still take the exact one, block by block.
TEST(CpuBackendLinear, F8PreparedBlocksMixFastAndExactDecoding) {
  std::mt19937 rng(12);
  const int64_t rows = 37, cols = 700;
  TestWeight w = MakeWeight(DType::kF8E4M3, rows, cols, rng);
  for (size_t i = 0; i < w.bytes.size(); ++i)  // normal numbers only...
    if ((w.bytes[i] & 0x78) == 0) w.bytes[i] |= 0x08;
  w.bytes[5 * cols + 130] = 0x00;   // ...except a zero,
  w.bytes[9 * cols + 300] = 0x83;   // a subnormal,
  w.bytes[36 * cols + 699] = 0x80;  // a negative zero in the last row's tail block
  for (Precision p : {Precision::kF32, Precision::kBF16}) {
    const reference::ReferenceBackend ref(p);
    CpuBackend be(p, CpuFeatures::Detect());
    for (int64_t M : {1, 3, 17}) {
      CheckLinear(be, ref, w.view, M, p == Precision::kF32 ? 2e-6 : 1e-5, "unprepared M=" + std::to_string(M));
    }
    ASSERT_TRUE(be.PrepareWeights({w.view}).ok());
    for (int64_t M : {1, 3, 17}) {
      CheckLinear(be, ref, w.view, M, p == Precision::kF32 ? 2e-6 : 1e-5, "prepared M=" + std::to_string(M));
    }
  }
  // A NaN weight must reach the outputs of its row, prepared or not.
  w.bytes[2 * cols + 10] = 0x7f;
  CpuBackend be(Precision::kF32, CpuFeatures::Detect());
  ASSERT_TRUE(be.PrepareWeights({w.view}).ok());
  std::vector<float> x(cols, 1.0f), y(rows);
  be.Linear(w.view, x.data(), cols, 1, y.data(), rows);
  EXPECT_TRUE(std::isnan(y[2]));
  EXPECT_FALSE(std::isnan(y[3]));
}

TEST(CpuBackendLinear, LargeKUsesSeveralColumnBlocks) {
  // K above the kernel's 4096-column block, M in the buffered range.
  std::mt19937 rng(4);
  const reference::ReferenceBackend ref(Precision::kF32);
  const CpuBackend be(Precision::kF32, CpuFeatures::Detect());
  const TestWeight w = MakeWeight(DType::kBF16, 20, 4500, rng);
  CheckLinear(be, ref, w.view, 9, 3e-6, "bf16 20x4500 M=9");
}

TEST(CpuBackendLinear, InvalidViewsDoNotCrash) {
  const CpuBackend be(Precision::kF32, CpuFeatures::Detect());
  std::vector<float> x(8, 1.0f), y(8, kSentinel);
  WeightView w;
  w.rows = 4;
  w.cols = 2;
  be.Linear(w, x.data(), 2, 2, y.data(), 4);  // null data
  for (float v : y) EXPECT_EQ(v, 0.0f);
  std::vector<uint8_t> bytes(8, 0x38);  // 1.0 in e4m3
  w.dtype = DType::kF8E4M3;
  w.data = bytes.data();
  be.Linear(w, x.data(), 2, 2, y.data(), 4);  // no scale grid
  for (float v : y) EXPECT_EQ(v, 0.0f);
}

TEST(CpuBackendLinear, ConcurrentCallsAgree) {
  std::mt19937 rng(5);
  for (Precision p : {Precision::kF32, Precision::kBF16}) {
    CpuBackend be(p, CpuFeatures::Detect());
    std::vector<TestWeight> weights;
    weights.push_back(MakeWeight(DType::kF8E4M3, 200, 300, rng));
    weights.push_back(MakeWeight(DType::kF32, 256, 512, rng));
    ASSERT_TRUE(be.PrepareWeights({weights[0].view}).ok());
    struct Call {
      const WeightView* w;
      int64_t M;
      std::vector<float> x, expected;
    };
    std::vector<Call> calls;
    for (const TestWeight& w : weights)
      for (int64_t M : {1, 3, 17, 64}) {
        Call c{&w.view, M, RandomVector(static_cast<size_t>(M * w.view.cols), rng), {}};
        c.expected.resize(static_cast<size_t>(M * w.view.rows));
        be.Linear(w.view, c.x.data(), w.view.cols, M, c.expected.data(), w.view.rows);
        calls.push_back(std::move(c));
      }
    std::vector<double> worst(4, 0.0);
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
      threads.emplace_back([&, t] {
        std::vector<float> y;
        for (int iter = 0; iter < 10; ++iter)
          for (size_t i = 0; i < calls.size(); ++i) {
            const Call& c = calls[(i + t) % calls.size()];
            y.assign(c.expected.size(), 0.0f);
            be.Linear(*c.w, c.x.data(), c.w->cols, c.M, y.data(), c.w->rows);
            worst[t] = std::max(worst[t], RelL2(y, c.expected));
          }
      });
    for (auto& th : threads) th.join();
    for (int t = 0; t < 4; ++t) EXPECT_LE(worst[t], 1e-6) << PrecisionName(p) << " thread " << t;
  }
}

TEST(CpuBackendKernels, F8E4M3ConversionIsBitExact) {
  if (!CpuFeatures::Detect().avx512) GTEST_SKIP() << "no AVX-512";
  std::vector<uint8_t> in(256 + 7);
  for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<uint8_t>(i);  // masked tail too
  std::vector<float> out(in.size()), fast(in.size());
  avx512::F8E4M3ToF32(in.data(), static_cast<int64_t>(in.size()), out.data());
  avx512::F8E4M3ToF32(in.data(), static_cast<int64_t>(in.size()), fast.data(), /*normal_only=*/true);
  for (size_t i = 0; i < in.size(); ++i) {
    const float want = F8E4M3ToF32(in[i]);
    uint32_t a, b, c;
    std::memcpy(&a, &out[i], 4);
    std::memcpy(&b, &want, 4);
    std::memcpy(&c, &fast[i], 4);
    EXPECT_EQ(a, b) << "byte 0x" << std::hex << static_cast<int>(in[i]);
    const bool normal = (in[i] & 0x78) != 0 && (in[i] & 0x7f) != 0x7f;
    if (normal) {
      EXPECT_EQ(c, b) << "normal_only, byte 0x" << std::hex << static_cast<int>(in[i]);
    }
  }
}

TEST(CpuBackendKernels, Bf16RoundingIsBitExact) {
  if (!CpuFeatures::Detect().avx512) GTEST_SKIP() << "no AVX-512";
  std::mt19937 rng(6);
  std::vector<float> x = RandomVector(1000, rng);
  for (uint32_t bits : {0x3f808000u, 0x3f818000u, 0x3f80ffffu, 0x00000001u, 0x807fffffu, 0x7f7fffffu, 0x7f800000u,
                        0xff800000u, 0x7fc00001u, 0xff812345u, 0x80000000u}) {
    float f;
    std::memcpy(&f, &bits, 4);
    x.push_back(f);
  }
  std::vector<uint16_t> out(x.size());
  std::vector<float> outf(x.size());
  avx512::RoundToBf16Bits(x.data(), static_cast<int64_t>(x.size()), out.data());
  avx512::RoundToBf16Floats(x.data(), static_cast<int64_t>(x.size()), outf.data());
  for (size_t i = 0; i < x.size(); ++i) {
    EXPECT_EQ(out[i], F32ToBf16(x[i])) << i;
    uint32_t b;
    std::memcpy(&b, &outf[i], 4);
    EXPECT_EQ(b, static_cast<uint32_t>(F32ToBf16(x[i])) << 16) << i;
  }
}

TEST(CpuBackendOps, RmsNormMatchesReference) {
  std::mt19937 rng(7);
  const int64_t M = 5, n = 300, ldx = 310, ldy = 305;
  const std::vector<float> x = RandomVector(M * ldx, rng, 3.0f), w = RandomVector(n, rng);
  const reference::ReferenceBackend ref(Precision::kF32);
  std::vector<float> want(M * ldy, kSentinel);
  ref.RmsNorm(x.data(), ldx, w.data(), n, M, 1e-6f, want.data(), ldy);
  for (const Variant& v : Variants()) {
    const CpuBackend be(Precision::kF32, v.features);
    std::vector<float> got(M * ldy, kSentinel);
    be.RmsNorm(x.data(), ldx, w.data(), n, M, 1e-6f, got.data(), ldy);
    for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], 1e-6 * std::fabs(want[i])) << v.name << " " << i;
  }
}

TEST(CpuBackendOps, RopeMatchesReference) {
  std::mt19937 rng(8);
  const reference::ReferenceBackend ref(Precision::kF32);
  for (int64_t half : {32, 5}) {
    const int64_t T = 3, n_vec = 4, stride_vec = 2 * half + 8, stride_token = n_vec * stride_vec + 16;
    std::vector<float> inv_freq(half);
    for (int64_t i = 0; i < half; ++i) inv_freq[i] = std::pow(10000.0f, -2.0f * i / (2 * half));
    const int32_t positions[T] = {0, 7, 4095};
    const std::vector<float> x = RandomVector(T * stride_token, rng);
    std::vector<float> want = x;
    ref.Rope(want.data(), T, n_vec, stride_token, stride_vec, positions, inv_freq.data(), half, 1.1f);
    for (const Variant& v : Variants()) {
      const CpuBackend be(Precision::kF32, v.features);
      std::vector<float> got = x;
      be.Rope(got.data(), T, n_vec, stride_token, stride_vec, positions, inv_freq.data(), half, 1.1f);
      for (size_t i = 0; i < got.size(); ++i)
        ASSERT_NEAR(got[i], want[i], 1e-6 * std::fabs(want[i]) + 1e-7) << v.name << " half " << half << " " << i;
    }
  }
}

TEST(CpuBackendOps, SiluMulMatchesReference) {
  std::mt19937 rng(9);
  std::vector<float> gate = RandomVector(40000, rng, 4.0f), up = RandomVector(40000, rng);
  for (float g : {0.0f, -0.0f, 1e-30f, -80.0f, -100.0f, 50.0f, 100.0f, -1e30f, 1e30f}) {
    gate.push_back(g);
    up.push_back(1.5f);
  }
  const int64_t n = static_cast<int64_t>(gate.size());
  const reference::ReferenceBackend ref(Precision::kF32);
  std::vector<float> want(n);
  ref.SiluMul(gate.data(), up.data(), want.data(), n);
  for (const Variant& v : Variants()) {
    const CpuBackend be(Precision::kF32, v.features);
    std::vector<float> got(n);
    be.SiluMul(gate.data(), up.data(), got.data(), n);
    for (int64_t i = 0; i < n; ++i)
      ASSERT_NEAR(got[i], want[i], 1e-6 * std::fabs(want[i])) << v.name << " gate " << gate[i];
  }
}

// A paged latent cache with its own page table per token.
struct AttentionCase {
  int64_t T, H, page_size, n_pages;
  std::vector<int32_t> n_keys;
  std::vector<float> pool, q_latent, q_rope;
  std::vector<std::vector<int32_t>> tables;
  std::vector<const int32_t*> table_ptrs;

  MlaAttentionArgs Args(float* out) const {
    MlaAttentionArgs a;
    a.n_tokens = T;
    a.n_heads = H;
    a.q_latent = q_latent.data();
    a.q_rope = q_rope.data();
    a.cache = {pool.data(), page_size, 512, 64};
    a.token_pages = table_ptrs.data();
    a.n_keys = n_keys.data();
    a.scale = 0.072f;
    a.out = out;
    return a;
  }
};

AttentionCase MakeAttention(int64_t H, int64_t page_size, std::vector<int32_t> n_keys, std::mt19937& rng) {
  AttentionCase c;
  c.T = static_cast<int64_t>(n_keys.size());
  c.H = H;
  c.page_size = page_size;
  const int32_t most = *std::max_element(n_keys.begin(), n_keys.end());
  c.n_pages = (most + page_size - 1) / page_size + 3;
  c.n_keys = std::move(n_keys);
  c.pool = RandomVector(c.n_pages * page_size * 576, rng, 0.5f);
  c.q_latent = RandomVector(c.T * H * 512, rng);
  c.q_rope = RandomVector(c.T * H * 64, rng);
  for (int64_t t = 0; t < c.T; ++t) {
    std::vector<int32_t> table(c.n_pages);
    std::iota(table.begin(), table.end(), 0);
    std::shuffle(table.begin(), table.end(), rng);
    c.tables.push_back(std::move(table));
  }
  for (const auto& table : c.tables) c.table_ptrs.push_back(table.data());
  return c;
}

void CheckAttention(const AttentionCase& c) {
  const reference::ReferenceBackend ref(Precision::kF32);
  std::vector<float> want(c.T * c.H * 512);
  ref.MlaAttention(c.Args(want.data()));
  for (const Variant& v : Variants()) {
    const CpuBackend be(Precision::kF32, v.features);
    std::vector<float> got(want.size(), kSentinel);
    be.MlaAttention(c.Args(got.data()));
    for (int64_t t = 0; t < c.T; ++t) {
      const auto off = t * c.H * 512;
      const std::vector<float> g(got.begin() + off, got.begin() + off + c.H * 512);
      const std::vector<float> w(want.begin() + off, want.begin() + off + c.H * 512);
      EXPECT_LT(RelL2(g, w), 1e-5) << v.name << " token " << t << " n_keys " << c.n_keys[t];
    }
  }
}

TEST(CpuBackendOps, MlaAttentionMatchesReference) {
  std::mt19937 rng(10);
  CheckAttention(MakeAttention(5, 16, {1, 17, 100, 300}, rng));
  CheckAttention(MakeAttention(3, 16, {65}, rng));
  CheckAttention(MakeAttention(13, 16, {40}, rng));  // register tiles of 6, 6 and 1 heads (AVX2)
  CheckAttention(MakeAttention(4, 16, {600, 1}, rng));  // decode-sized: keys split into merged spans
}

// One token over fewer keys than make two spans, on more threads than tokens: the heads are split
// among the threads (groups of 8 on the AVX2 kernel, 16 on the AVX-512 one, any on the scalar one),
// which must give the same bits as one thread taking them all, and the reference's values.
TEST(CpuBackendOps, MlaAttentionHeadGroupsEqualOneThread) {
  std::mt19937 rng(14);
  const int threads = omp_get_max_threads();
  for (int64_t H : {3, 16, 17, 24, 32})
    for (int32_t n : {1, 40, 127}) {
      const AttentionCase c = MakeAttention(H, 16, {n}, rng);
      omp_set_num_threads(std::max(threads, 2));
      CheckAttention(c);
      for (Precision p : {Precision::kF32, Precision::kBF16})
        for (const Variant& v : Variants()) {
          const CpuBackend be(p, v.features);
          std::vector<float> one(H * 512, kSentinel), two(H * 512, kSentinel), three(H * 512, kSentinel);
          omp_set_num_threads(1);
          be.MlaAttention(c.Args(one.data()));
          omp_set_num_threads(2);
          be.MlaAttention(c.Args(two.data()));
          omp_set_num_threads(3);
          be.MlaAttention(c.Args(three.data()));
          const std::string what = std::string(v.name) + " " + PrecisionName(p) + " H " + std::to_string(H) +
                                   " n_keys " + std::to_string(n);
          EXPECT_EQ(std::memcmp(one.data(), two.data(), one.size() * sizeof(float)), 0) << what << ", 2 threads";
          EXPECT_EQ(std::memcmp(one.data(), three.data(), one.size() * sizeof(float)), 0) << what << ", 3 threads";
        }
      omp_set_num_threads(threads);
    }
}

TEST(CpuBackendOps, MlaAttentionWithoutKeysGivesZeros) {
  std::mt19937 rng(13);
  AttentionCase c = MakeAttention(2, 16, {0, 40}, rng);
  for (const Variant& v : Variants()) {
    const CpuBackend be(Precision::kF32, v.features);
    std::vector<float> got(c.T * c.H * 512, kSentinel);
    be.MlaAttention(c.Args(got.data()));
    for (int64_t i = 0; i < c.H * 512; ++i) ASSERT_EQ(got[i], 0.0f) << v.name;
    for (int64_t i = c.H * 512; i < 2 * c.H * 512; ++i) ASSERT_TRUE(std::isfinite(got[i])) << v.name;
  }
}

TEST(CpuBackendOps, MlaAttentionLongContext) {
  std::mt19937 rng(11);
  CheckAttention(MakeAttention(16, 64, {4500}, rng));
}

TEST(CpuBackendFactory, CreatesBothPrecisions) {
  for (Precision p : {Precision::kF32, Precision::kBF16}) {
    auto be = CreateCpuBackend(p);
    ASSERT_TRUE(be.ok()) << be.status().message();
    EXPECT_STREQ((*be)->name(), "cpu");
    EXPECT_EQ((*be)->precision(), p);
  }
}

}  // namespace
}  // namespace moerun::cpu
