// Q8_PANEL kernels (backends/cpu/q8_kernels.h) against straightforward implementations of their
// semantics written here from the format's definition (runtime/core/q8_panel.h).
#include <gtest/gtest.h>
#include <omp.h>


#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "backends/cpu/q8_kernels.h"
#include "tests/unit/q8_test_util.h"

namespace moerun::cpu::q8 {
namespace {

using test::Pack;
using test::Q8Weight;
using test::RandomWeight;

constexpr float kGuard = -7.25e30f;

// A float matrix quantised as the converter does (absmax / 127 per row and group).
Q8Weight QuantizeWeight(const std::vector<float>& f, int64_t N, int64_t K) {
  Q8Weight w;
  w.N = N;
  w.K = K;
  const int64_t G = Groups(K);
  w.q.resize(N * K);
  w.s.resize(N * G);
  for (int64_t r = 0; r < N; ++r)
    for (int64_t g = 0; g < G; ++g) {
      const int64_t c0 = g * 128, c1 = std::min(K, c0 + 128);
      float a = 0.0f;
      for (int64_t c = c0; c < c1; ++c) a = std::max(a, std::fabs(f[r * K + c]));
      const float s = a / 127.0f;
      w.s[r * G + g] = s;
      for (int64_t c = c0; c < c1; ++c)
        w.q[r * K + c] = static_cast<int8_t>(s == 0.0f ? 0 : std::clamp(std::nearbyint(f[r * K + c] / s), -127.0f, 127.0f));
    }
  Pack(w);
  return w;
}

std::vector<float> RandomActivations(int64_t M, int64_t ld, std::mt19937& rng) {
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> x(M * ld);
  for (float& v : x) v = d(rng);
  // An all-zero first group in row 1, a large outlier in row 2.
  if (M > 1)
    for (int64_t c = 0; c < std::min<int64_t>(ld, 128); ++c) x[ld + c] = 0.0f;
  if (M > 2) x[2 * ld] = 40.0f;
  return x;
}

struct Quantized {
  std::vector<uint8_t> buffer;
  ActivationBuffers b;
};

using QuantizeFn = void (*)(const float*, int64_t, int64_t, int64_t, int8_t*, float*, int32_t*);

Quantized Quantize(const std::vector<float>& x, int64_t ldx, int64_t M, int64_t K, QuantizeFn fn) {
  Quantized out;
  out.buffer.assign(ActivationBytes(M, K) + 64, 0xab);  // garbage where padding must be written
  void* base = out.buffer.data() + (64 - reinterpret_cast<uintptr_t>(out.buffer.data()) % 64) % 64;
  out.b = CarveActivations(base, M, K);
  fn(x.data(), ldx, M, K, out.b.xq, out.b.xs, out.b.xsum);
  return out;
}

Quantized Quantize(const std::vector<float>& x, int64_t ldx, int64_t M, int64_t K, bool scalar) {
  return Quantize(x, ldx, M, K, scalar ? QuantizeActivationsScalar : QuantizeActivations);
}

// Every vectorised quantiser this CPU can run (each is checked against the scalar one).
std::vector<std::pair<const char*, QuantizeFn>> SimdQuantizers() {
  std::vector<std::pair<const char*, QuantizeFn>> q;
  if (DetectSupport().avx2) q.emplace_back("avx2", avx2::QuantizeActivations);
  if (DetectSupport().avx512) q.emplace_back("avx512", avx512::QuantizeActivations);
  return q;
}

// The int8 mode from its definition: exact integer group sums, then fmaf in group order.
std::vector<float> ReferenceInt8(const Q8Weight& w, const ActivationBuffers& a, int64_t M) {
  const int64_t G = Groups(w.K), stride = XqStride(w.K);
  std::vector<float> y(M * w.N);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t r = 0; r < w.N; ++r) {
      float acc = 0.0f;
      for (int64_t g = 0; g < G; ++g) {
        int32_t isum = 0;
        for (int64_t c = g * 128; c < std::min(w.K, g * 128 + 128); ++c)
          isum += static_cast<int32_t>(w.q[r * w.K + c]) * a.xq[m * stride + c];
        acc = std::fma(static_cast<float>(isum), w.s[r * G + g] * a.xs[m * G + g], acc);
      }
      y[m * w.N + r] = acc;
    }
  return y;
}

// y with row stride N + 5 and one extra row, all guard values, so stray writes show.
struct Output {
  int64_t N, M, ld;
  std::vector<float> y;
  Output(int64_t n, int64_t m) : N(n), M(m), ld(n + 5), y((m + 1) * (n + 5), kGuard) {}
  float At(int64_t m, int64_t r) const { return y[m * ld + r]; }
  void ExpectGuardsIntact() const {
    for (int64_t m = 0; m <= M; ++m)
      for (int64_t r = m < M ? N : 0; r < ld; ++r) ASSERT_EQ(y[m * ld + r], kGuard) << "stray write at " << m << "," << r;
  }
};

std::vector<Int8Path> AvailablePaths() {
  const Support s = DetectSupport();
  std::vector<Int8Path> paths = {Int8Path::kScalar, Int8Path::kAuto};
  if (s.avx2) paths.push_back(Int8Path::kAvx2);
  if (s.vnni) paths.push_back(Int8Path::kVnni);
  if (s.amx) paths.push_back(Int8Path::kAmx);
  return paths;
}

const char* PathName(Int8Path p) {
  switch (p) {
    case Int8Path::kScalar: return "scalar";
    case Int8Path::kAvx2: return "avx2";
    case Int8Path::kVnni: return "vnni";
    case Int8Path::kAmx: return "amx";
    default: return "auto";
  }
}

TEST(Q8Kernels, ReportsSupport) {
  const Support s = DetectSupport();
  std::printf("q8 kernels: avx2 %d, avx512 %d, vnni %d, amx %d\n", s.avx2, s.avx512, s.vnni, s.amx);
  EXPECT_TRUE(!s.vnni || s.avx512);
  EXPECT_TRUE(!s.amx || s.vnni);
}

// One vectorised quantiser's output against the scalar one and the definition; x row 3 holds ties.
void CheckQuantized(const Quantized& simd, const Quantized& scalar, const std::vector<float>& x, int64_t ldx, int64_t M,
                    int64_t K) {
  const int64_t G = Groups(K), stride = XqStride(K);
  ASSERT_EQ(0, std::memcmp(simd.b.xq, scalar.b.xq, M * stride)) << "K " << K;
  ASSERT_EQ(0, std::memcmp(simd.b.xs, scalar.b.xs, M * G * 4)) << "K " << K;
  ASSERT_EQ(0, std::memcmp(simd.b.xsum, scalar.b.xsum, M * G * 4)) << "K " << K;
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t c = K; c < stride; ++c) ASSERT_EQ(simd.b.xq[m * stride + c], 0) << "padding " << K;
    for (int64_t g = 0; g < G; ++g) {
      const int64_t c0 = g * 128, c1 = std::min(K, c0 + 128);
      float a = 0.0f;
      for (int64_t c = c0; c < c1; ++c) a = std::max(a, std::fabs(x[m * ldx + c]));
      ASSERT_EQ(simd.b.xs[m * G + g], a / 127.0f);
      int32_t sum = 0;
      for (int64_t c = c0; c < c1; ++c) {
        const float v = x[m * ldx + c] * (a == 0.0f ? 0.0f : 127.0f / a);
        const int q = static_cast<int>(std::clamp(std::nearbyint(v), -127.0f, 127.0f));
        ASSERT_EQ(simd.b.xq[m * stride + c], q) << "m " << m << " c " << c << " x " << x[m * ldx + c];
        sum += q;
      }
      ASSERT_EQ(simd.b.xsum[m * G + g], sum);
    }
  }
  if (K > 5) {  // half-way cases round to even
    const int8_t* q3 = simd.b.xq + 3 * stride;
    EXPECT_EQ(q3[1], -2);    // -1.5
    EXPECT_EQ(q3[3], 0);     // -0.5
    EXPECT_EQ(q3[4], 0);     // 0
    EXPECT_EQ(q3[5], -126);  // -126.5
  }
  if (K > 7) {
    EXPECT_EQ(simd.b.xq[3 * stride + 6], 1);  // 1.0
    EXPECT_EQ(simd.b.xq[3 * stride + 7], 2);  // 1.5 → 2
  }
  EXPECT_EQ(simd.b.xs[1 * G], 0.0f);  // row 1's first group is zero
  EXPECT_EQ(simd.b.xsum[1 * G], 0);
}

TEST(Q8Kernels, QuantizeMatchesDefinitionAndScalar) {
  std::mt19937 rng(1);
  for (int64_t K : {1, 3, 4, 5, 64, 100, 127, 128, 129, 200, 256, 300, 1000}) {
    const int64_t M = 4, ldx = K + 3;
    std::vector<float> x = RandomActivations(M, ldx, rng);
    // Row 3: exact ties. a = 127 makes inv exactly 1, so x · inv is the tie itself.
    for (int64_t c = 0; c < K; ++c) x[3 * ldx + c] = 0.5f * static_cast<float>(static_cast<int>(c % 9) - 4);
    x[3 * ldx] = 127.0f;
    if (K > 5) x[3 * ldx + 5] = -126.5f;
    const Quantized scalar = Quantize(x, ldx, M, K, true);
    for (const auto& [name, fn] : SimdQuantizers()) {
      SCOPED_TRACE(name);
      CheckQuantized(Quantize(x, ldx, M, K, fn), scalar, x, ldx, M, K);
    }
  }
}

TEST(Q8Kernels, QuantizeNonFiniteAgrees) {
  const int64_t K = 300;
  std::vector<float> x(3 * K, 0.25f);
  x[5] = std::numeric_limits<float>::quiet_NaN();
  x[K + 7] = std::numeric_limits<float>::infinity();
  x[2 * K + 9] = 1e-42f;  // subnormal maximum: 127 / a overflows
  const Quantized scalar = Quantize(x, K, 3, K, true);
  for (const auto& [name, fn] : SimdQuantizers()) {
    SCOPED_TRACE(name);
    const Quantized simd = Quantize(x, K, 3, K, fn);
    EXPECT_EQ(0, std::memcmp(simd.b.xq, scalar.b.xq, 3 * XqStride(K)));
    EXPECT_EQ(0, std::memcmp(simd.b.xs, scalar.b.xs, 3 * Groups(K) * 4));
    EXPECT_EQ(0, std::memcmp(simd.b.xsum, scalar.b.xsum, 3 * Groups(K) * 4));
  }
}

TEST(Q8Kernels, Int8PathsMatchDefinition) {
  std::mt19937 rng(2);
  const std::vector<Int8Path> paths = AvailablePaths();
  for (int64_t N : {1, 16, 17, 33, 60, 100})  // 60: four panels, the last partial
    for (int64_t K : {1, 3, 64, 100, 128, 129, 200, 300, 1000}) {
      const Q8Weight w = RandomWeight(N, K, rng);
      for (int64_t M : {1, 2, 3, 4, 5, 8, 13, 16, 17, 33, 64, 100}) {
        const int64_t ldx = K + 1;
        const std::vector<float> x = RandomActivations(M, ldx, rng);
        const Quantized a = Quantize(x, ldx, M, K, false);
        const std::vector<float> want = ReferenceInt8(w, a.b, M);
        for (Int8Path path : paths) {
          SCOPED_TRACE(std::string(PathName(path)) + " N " + std::to_string(N) + " K " + std::to_string(K) + " M " +
                       std::to_string(M));
          Output out(N, M);
          LinearInt8On(path, w.view(), a.b.xq, a.b.xs, a.b.xsum, M, out.y.data(), out.ld);
          out.ExpectGuardsIntact();
          for (int64_t m = 0; m < M; ++m)
            for (int64_t r = 0; r < N; ++r) {
              const float got = out.At(m, r), ref = want[m * N + r];
              // Every path is built to give the definition's bits; 1e-5 is the contract.
              ASSERT_LE(std::fabs(got - ref), 1e-5f * std::fabs(ref)) << m << "," << r;
              ASSERT_EQ(got, ref) << "not bit-identical at " << m << "," << r;
            }
        }
      }
    }
}

// Matrices of many claimed runs of panels (SplitPanels: shares of what is left, at least 128 KiB of
// weights each, an odd panel last), split between two threads: every output computed once, from the
// right panels, on every path that splits (AVX2, VNNI) and the others alike.
TEST(Q8Kernels, PanelRunsSplitBetweenThreadsMatchDefinition) {
  std::mt19937 rng(12);
  const int64_t N = 4100, K = 256;  // 257 panels of ~4 KiB
  const Q8Weight w = RandomWeight(N, K, rng);
  for (int64_t M : {1, 3}) {
    const std::vector<float> x = RandomActivations(M, K, rng);
    const Quantized a = Quantize(x, K, M, K, false);
    const std::vector<float> want = ReferenceInt8(w, a.b, M);
    for (Int8Path path : AvailablePaths()) {
      SCOPED_TRACE(std::string(PathName(path)) + " M " + std::to_string(M));
      Output out(N, M);
      const int threads = omp_get_max_threads();
      omp_set_num_threads(2);
      LinearInt8On(path, w.view(), a.b.xq, a.b.xs, a.b.xsum, M, out.y.data(), out.ld);
      omp_set_num_threads(threads);
      out.ExpectGuardsIntact();
      for (int64_t m = 0; m < M; ++m)
        for (int64_t r = 0; r < N; ++r) ASSERT_EQ(out.At(m, r), want[m * N + r]) << m << "," << r;
    }
  }
}

// Several matrices as one set of jobs (MoE decode's experts): each job's own weight, input and row
// count; runs of panels claimed by two threads cover the end of one job and the start of the next
// (the jobs here are smaller than a run). Every output as the definition, guards intact.
TEST(Q8Kernels, JobsMatchDefinition) {
  std::mt19937 rng(13);
  struct Case {
    int64_t N, K, M;
  };
  const Case cases[] = {{33, 256, 1}, {100, 300, 3}, {16, 256, 1}, {1, 128, 2}, {4100, 256, 2}, {47, 4, 1}};
  std::vector<Q8Weight> w;
  std::vector<Quantized> x;
  std::vector<std::vector<float>> want;
  for (const Case& c : cases) {
    w.push_back(RandomWeight(c.N, c.K, rng));
    x.push_back(Quantize(RandomActivations(c.M, c.K, rng), c.K, c.M, c.K, false));
    want.push_back(ReferenceInt8(w.back(), x.back().b, c.M));
  }
  for (Int8Path path : AvailablePaths()) {
    SCOPED_TRACE(PathName(path));
    std::vector<Output> out;
    std::vector<Int8Job> jobs;
    for (size_t i = 0; i < w.size(); ++i) out.emplace_back(cases[i].N, cases[i].M);
    for (size_t i = 0; i < w.size(); ++i)
      jobs.push_back({w[i].view(), x[i].b.xq, x[i].b.xs, x[i].b.xsum, cases[i].M, out[i].y.data(), out[i].ld});
    const int threads = omp_get_max_threads();
    omp_set_num_threads(2);
    LinearInt8JobsOn(path, jobs.data(), static_cast<int64_t>(jobs.size()));
    omp_set_num_threads(threads);
    for (size_t i = 0; i < w.size(); ++i) {
      out[i].ExpectGuardsIntact();
      for (int64_t m = 0; m < cases[i].M; ++m)
        for (int64_t r = 0; r < cases[i].N; ++r)
          ASSERT_EQ(out[i].At(m, r), want[i][m * cases[i].N + r]) << "job " << i << " at " << m << "," << r;
    }
  }
}

// Largest products: every activation ±127 and weight bytes at both ends, including byte 0 (q = -128,
// which the converter never writes but a file may hold). A kernel that adds byte products in 16 bits
// (the AVX2 kernels) must not saturate, and every path must still give the definition's bits.
TEST(Q8Kernels, Int8PathsExactAtExtremeBytes) {
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> pick(0, 3);
  const int8_t extremes[] = {-128, -127, 127, 126};
  for (int64_t K : {4, 128, 300}) {
    Q8Weight w;
    w.N = 33;
    w.K = K;
    w.q.resize(w.N * K);
    for (int8_t& v : w.q) v = extremes[pick(rng)];
    w.s.assign(w.N * Groups(K), 0.01f);
    Pack(w);
    for (int64_t M : {1, 2, 3, 4, 7}) {
      std::vector<float> x(M * K);
      for (float& v : x) v = pick(rng) < 2 ? -1.0f : 1.0f;  // quantises to ±127 exactly
      const Quantized a = Quantize(x, K, M, K, false);
      const std::vector<float> want = ReferenceInt8(w, a.b, M);
      for (Int8Path path : AvailablePaths()) {
        SCOPED_TRACE(std::string(PathName(path)) + " K " + std::to_string(K) + " M " + std::to_string(M));
        Output out(w.N, M);
        LinearInt8On(path, w.view(), a.b.xq, a.b.xs, a.b.xsum, M, out.y.data(), out.ld);
        out.ExpectGuardsIntact();
        for (int64_t m = 0; m < M; ++m)
          for (int64_t r = 0; r < w.N; ++r) ASSERT_EQ(out.At(m, r), want[m * w.N + r]) << m << "," << r;
      }
    }
  }
}

TEST(Q8Kernels, AmxFromSeveralThreads) {
  if (!DetectSupport().amx) GTEST_SKIP() << "no AMX";
  std::mt19937 rng(3);
  const int64_t N = 96, K = 384, M = 48;
  const Q8Weight w = RandomWeight(N, K, rng);
  const std::vector<float> x = RandomActivations(M, K, rng);
  const Quantized a = Quantize(x, K, M, K, false);
  const std::vector<float> want = ReferenceInt8(w, a.b, M);
  std::vector<std::thread> threads;
  std::vector<int> ok(4, 0);
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      bool same = true;
      for (int rep = 0; rep < 20; ++rep) {
        std::vector<float> y(M * N);
        LinearInt8On(Int8Path::kAmx, w.view(), a.b.xq, a.b.xs, a.b.xsum, M, y.data(), N);
        same = same && y == want;
      }
      ok[t] = same;
    });
  for (std::thread& t : threads) t.join();
  for (int t = 0; t < 4; ++t) EXPECT_TRUE(ok[t]) << "thread " << t;
}

// Called from inside an OpenMP team the kernels run on the calling thread, each of which then sets
// up its own tile configuration.
TEST(Q8Kernels, InsideParallelRegion) {
  std::mt19937 rng(6);
  const int64_t N = 200, K = 640, M = 40;
  const Q8Weight w = RandomWeight(N, K, rng);
  const std::vector<float> x = RandomActivations(M, K, rng);
  const Quantized a = Quantize(x, K, M, K, false);
  const std::vector<float> want = ReferenceInt8(w, a.b, M);
  std::vector<int> same(8, 0);
#pragma omp parallel for num_threads(2)
  for (int i = 0; i < 8; ++i) {
    std::vector<float> y(M * N);
    LinearInt8On(i % 2 ? Int8Path::kAmx : Int8Path::kVnni, w.view(), a.b.xq, a.b.xs, a.b.xsum, M, y.data(), N);
    same[i] = y == want;
  }
  for (int i = 0; i < 8; ++i) EXPECT_TRUE(same[i]) << i;
}

// Matrices of many panel chunks (8 panels each from 64 panels on), an odd panel last: each thread
// claims its next chunk before finishing the current one (to prefetch across the boundary). Every
// output is computed once, from the right panel, with two threads splitting the chunks and with one
// thread (inside a parallel region) taking them all.
// (Without AMX the request runs the VNNI kernel, which must give the same bits.)
TEST(Q8Kernels, AmxChunksMatchDefinition) {
  std::mt19937 rng(7);
  for (int64_t N : {1024, 1100}) {
    const int64_t K = 256, M = 32;
    const Q8Weight w = RandomWeight(N, K, rng);
    const std::vector<float> x = RandomActivations(M, K, rng);
    const Quantized a = Quantize(x, K, M, K, false);
    const std::vector<float> want = ReferenceInt8(w, a.b, M);
    Output out(N, M);
    LinearInt8On(Int8Path::kAmx, w.view(), a.b.xq, a.b.xs, a.b.xsum, M, out.y.data(), out.ld);
    out.ExpectGuardsIntact();
    std::vector<float> inside(M * N, -1.0f);
#pragma omp parallel num_threads(2)
    {
#pragma omp single
      LinearInt8On(Int8Path::kAmx, w.view(), a.b.xq, a.b.xs, a.b.xsum, M, inside.data(), N);
    }
    for (int64_t m = 0; m < M; ++m)
      for (int64_t r = 0; r < N; ++r) {
        ASSERT_EQ(out.At(m, r), want[m * N + r]) << "N " << N << " at " << m << "," << r;
        ASSERT_EQ(inside[m * N + r], want[m * N + r]) << "N " << N << ", one thread, at " << m << "," << r;
      }
  }
}

TEST(Q8Kernels, F32MatchesDoubleReference) {
  std::mt19937 rng(4);
  std::normal_distribution<float> d(0.0f, 0.05f);
  for (int64_t N : {1, 16, 17, 40})
    for (int64_t K : {1, 3, 5, 64, 128, 130, 259, 1000})
      for (int64_t M : {1, 2, 3, 4, 5, 9, 17}) {
        std::vector<float> f(N * K);
        for (float& v : f) v = d(rng);
        const Q8Weight w = QuantizeWeight(f, N, K);
        const int64_t ldx = K + 2;
        const std::vector<float> x = RandomActivations(M, ldx, rng);
        for (bool scalar : {false, true}) {
          SCOPED_TRACE(std::string(scalar ? "scalar" : "dispatch") + " N " + std::to_string(N) + " K " +
                       std::to_string(K) + " M " + std::to_string(M));
          Output out(N, M);
          (scalar ? LinearF32Scalar : LinearF32)(w.view(), x.data(), ldx, M, out.y.data(), out.ld);
          out.ExpectGuardsIntact();
          for (int64_t m = 0; m < M; ++m)
            for (int64_t r = 0; r < N; ++r) {
              double ref = 0.0, mag = 0.0;
              for (int64_t c = 0; c < K; ++c) {
                const double p = static_cast<double>(w.At(r, c)) * x[m * ldx + c];
                ref += p;
                mag += std::fabs(p);
              }
              // Relative to Σ|w·x|: cancellation makes a plain relative error meaningless near 0.
              ASSERT_LE(std::fabs(out.At(m, r) - ref), 1e-5 * mag + 1e-30) << m << "," << r;
            }
        }
      }
}

// The dequantised weights are what the packer was given, to quantisation accuracy.
TEST(Q8Kernels, PackerRoundTrips) {
  std::mt19937 rng(5);
  std::normal_distribution<float> d(0.0f, 1.0f);
  const int64_t N = 19, K = 150;
  std::vector<float> f(N * K);
  for (float& v : f) v = d(rng);
  const Q8Weight w = QuantizeWeight(f, N, K);
  for (int64_t r = 0; r < N; ++r)
    for (int64_t c = 0; c < K; ++c) {
      const float got = Dequant(w.data.data(), w.scale.data(), r, c, K);
      ASSERT_EQ(got, w.At(r, c));
      ASSERT_LE(std::fabs(got - f[r * K + c]), 0.5f * w.s[r * Groups(K) + c / 128] * 1.0001f);
    }
}

}  // namespace
}  // namespace moerun::cpu::q8
