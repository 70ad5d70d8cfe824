// Q8_PANEL kernels: CPU detection, scratch sizing, the portable kernels and the dispatch to the SIMD
// files (q8_avx2.cc, q8_avx512.cc, q8_vnni.cc, q8_amx.cc).
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "backends/cpu/q8_kernels.h"

namespace moerun::cpu::q8 {
namespace {

// Below this many weight bytes the scalar kernels stay on one thread.
constexpr int64_t kMinParallelBytes = int64_t{1} << 16;

int64_t AlignUp64(int64_t n) { return (n + 63) & ~int64_t{63}; }

// Linux keeps AMX tile data off until a process asks (arch/x86/include/uapi/asm/prctl.h).
bool RequestAmxPermission() {
  constexpr long kArchReqXcompPerm = 0x1023;
  constexpr long kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}

Support Detect() {
  Support s;
  __builtin_cpu_init();
  s.avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  s.avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma");
  s.vnni = s.avx512 && __builtin_cpu_supports("avx512vnni");
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  const bool leaf7 = __get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) != 0;
  const bool amx_tile = leaf7 && (edx & (1u << 24)) != 0, amx_int8 = leaf7 && (edx & (1u << 25)) != 0;
  const bool amx_bf16 = leaf7 && (edx & (1u << 22)) != 0;
  unsigned eax1 = 0, ebx1 = 0, ecx1 = 0, edx1 = 0;
  const bool avx512_bf16 = __get_cpuid_count(7, 1, &eax1, &ebx1, &ecx1, &edx1) != 0 && (eax1 & (1u << 5)) != 0;
  const bool int8_wanted = s.vnni && amx_int8, bf16_wanted = s.avx512 && avx512_bf16 && amx_bf16;
  // One request covers both: it is for the tile data, whatever the tile products.
  const bool tiles = amx_tile && (int8_wanted || bf16_wanted) && RequestAmxPermission();
  s.amx = int8_wanted && tiles;
  s.amx_bf16 = bf16_wanted && tiles;
  s.avx512_bf16 = s.avx512 && avx512_bf16;
  return s;
}

}  // namespace

Support DetectSupport() {
  static const Support support = Detect();
  return support;
}

// Whole 64-byte lines (an A tile row), and an odd number of them: the 16 rows of an A tile then fall
// in 16 different L1 sets. With a power-of-two stride (K = 2048) they share two sets and the tile
// loads thrash L1 (a bare tile-product loop ran ~1.8x slower that way).
int64_t XqStride(int64_t K) { return 64 * (((K + 63) / 64) | 1); }

int64_t ActivationBytes(int64_t M, int64_t K) {
  return AlignUp64(M * XqStride(K)) + 2 * AlignUp64(M * Groups(K) * 4);
}

ActivationBuffers CarveActivations(void* scratch, int64_t M, int64_t K) {
  char* p = static_cast<char*>(scratch);
  ActivationBuffers b;
  b.xq = reinterpret_cast<int8_t*>(p);
  p += AlignUp64(M * XqStride(K));
  b.xs = reinterpret_cast<float*>(p);
  p += AlignUp64(M * Groups(K) * 4);
  b.xsum = reinterpret_cast<int32_t*>(p);
  return b;
}

Int8Args MakeInt8Args(const WeightView& w, const int8_t* xq, const float* xs, const int32_t* xsum, float* y,
                      int64_t ldy) {
  Int8Args a;
  a.data = static_cast<const uint8_t*>(w.data);
  a.scale = w.scale;
  a.N = w.rows;
  a.K = w.cols;
  a.G = Groups(w.cols);
  a.quads = Quads(w.cols);
  a.panel_bytes = PanelBytes(w.cols);
  a.xq = xq;
  a.xstride = XqStride(w.cols);
  a.xs = xs;
  a.xsum = xsum;
  a.y = y;
  a.ldy = ldy;
  return a;
}

void SplitPanels(const Int8Args& a, int64_t M, PanelRangeFn range) {
  const PanelJob job{a, M};
  SplitPanelsJobs(&job, 1, range);
}

void SplitPanelsJobs(const PanelJob* jobs, int64_t n, PanelRangeFn range) {
  auto panels = [&](int64_t j) { return (jobs[j].a.N + kPanelRows - 1) / kPanelRows; };
  int64_t P = 0, bytes = 0;
  for (int64_t j = 0; j < n; ++j) {
    P += panels(j);
    bytes += panels(j) * jobs[j].a.panel_bytes;
  }
  // Threads claim contiguous runs of panels, each a 1/(2T) share of what is left but at least
  // kMinChunkBytes of weights: the cores of a shared host stream at different speeds, and equal
  // halves left the faster one waiting at every matrix's end.
  constexpr int64_t kMinChunkBytes = int64_t{1} << 17;
  // Runs of whole fours of panels (but a job's last ones): the VNNI kernel takes four panels at a time
  // in decode and two in prefill, and a run of another length ended in a narrower tile with fewer
  // weight streams (a decode step's Tile<1, 2>: 2.0% of its samples, 2 threads, Zen 5 host).
  constexpr int64_t kRunMultiple = 4;
  std::atomic<int64_t> next{0};
#pragma omp parallel if (bytes >= kMinParallelBytes)
  {
    const int64_t T = omp_get_num_threads();
    int64_t j = 0, base = 0;  // this thread's job cursor (claims only move forward): job j starts at base
    auto seek = [&](int64_t p) {
      while (j < n && p >= base + panels(j)) base += panels(j++);
    };
    int64_t p0 = next.load(std::memory_order_relaxed), count = 0;
    for (;;) {
      do {
        seek(p0);
        const int64_t panel_bytes = j < n ? std::max<int64_t>(jobs[j].a.panel_bytes, 1) : 1;
        count = std::max<int64_t>(std::max<int64_t>(1, kMinChunkBytes / panel_bytes), (P - p0) / (2 * T));
        count = (count + kRunMultiple - 1) / kRunMultiple * kRunMultiple;
      } while (p0 < P && !next.compare_exchange_weak(p0, p0 + count, std::memory_order_relaxed));
      if (p0 >= P) break;
      for (int64_t p = p0, end = std::min(P, p0 + count); p < end;) {
        seek(p);
        const int64_t stop = std::min(end, base + panels(j));
        range(jobs[j].a, jobs[j].M, p - base, stop - base);
        p = stop;
      }
      p0 = next.load(std::memory_order_relaxed);
    }
  }
}

void QuantizeActivationsScalar(const float* x, int64_t ldx, int64_t M, int64_t K, int8_t* xq, float* xs,
                               int32_t* xsum) {
  const int64_t G = Groups(K), stride = XqStride(K);
  for (int64_t m = 0; m < M; ++m) {
    ::moerun::q8::QuantizeRow(x + m * ldx, K, xq + m * stride, xs + m * G, xsum + m * G);
    std::fill(xq + m * stride + K, xq + m * stride + stride, int8_t{0});
  }
}

namespace {

// The portable kernels' shared walk: for every weight row r (in parallel) and activation row m,
// y[m, r] = Σ_g group_dot(row bytes, scales of r, m, g, c0, c1) accumulated as each kernel defines.
// Row r's bytes are one 4-byte run per quad of its panel: column c is at row[Offset(c)].
inline int64_t Offset(int64_t c) { return (c / kQuadCols) * kQuadBytes + c % kQuadCols; }

template <typename RowFn>
void ForEachRow(const WeightView& w, int64_t M, float* y, int64_t ldy, RowFn&& fn) {
  const int64_t N = w.rows, K = w.cols, G = Groups(K), panel_bytes = PanelBytes(K);
  const auto* data = static_cast<const uint8_t*>(w.data);
#pragma omp parallel for schedule(static) if (N * K >= kMinParallelBytes)
  for (int64_t r = 0; r < N; ++r) {
    const uint8_t* row = data + (r / kPanelRows) * panel_bytes + (r % kPanelRows) * kQuadCols;
    const float* sw = w.scale + (r / kPanelRows) * G * kPanelRows + r % kPanelRows;  // group g at g·16
    for (int64_t m = 0; m < M; ++m) y[m * ldy + r] = fn(row, sw, m, G, K);
  }
}

}  // namespace

void LinearInt8Scalar(const WeightView& w, const int8_t* xq, const float* xs, const int32_t* xsum, int64_t M,
                      float* y, int64_t ldy) {
  const int64_t stride = XqStride(w.cols);
  ForEachRow(w, M, y, ldy, [&](const uint8_t* row, const float* sw, int64_t m, int64_t G, int64_t K) {
    const int8_t* xm = xq + m * stride;
    float acc = 0.0f;
    for (int64_t g = 0; g < G; ++g) {
      const int64_t c0 = g * kGroupCols, c1 = std::min(K, c0 + kGroupCols);
      // Offset-binary bytes times q, less 128·Σq: the same exact integer the SIMD kernels form.
      int32_t isum = -128 * xsum[m * G + g];
      for (int64_t c = c0; c < c1; ++c) isum += static_cast<int32_t>(row[Offset(c)]) * xm[c];
      acc = std::fma(static_cast<float>(isum), sw[g * kPanelRows] * xs[m * G + g], acc);
    }
    return acc;
  });
}

void LinearF32Scalar(const WeightView& w, const float* x, int64_t ldx, int64_t M, float* y, int64_t ldy) {
  ForEachRow(w, M, y, ldy, [&](const uint8_t* row, const float* sw, int64_t m, int64_t G, int64_t K) {
    const float* xm = x + m * ldx;
    float acc = 0.0f;
    for (int64_t g = 0; g < G; ++g) {
      const int64_t c0 = g * kGroupCols, c1 = std::min(K, c0 + kGroupCols);
      float dot = 0.0f;
      for (int64_t c = c0; c < c1; ++c) dot += static_cast<float>(static_cast<int32_t>(row[Offset(c)]) - 128) * xm[c];
      acc += dot * sw[g * kPanelRows];
    }
    return acc;
  });
}

void QuantizeActivations(const float* x, int64_t ldx, int64_t M, int64_t K, int8_t* xq, float* xs, int32_t* xsum) {
  if (M <= 0 || K <= 0) return;
  const Support s = DetectSupport();
  if (s.avx512) {
    avx512::QuantizeActivations(x, ldx, M, K, xq, xs, xsum);
  } else if (s.avx2) {
    avx2::QuantizeActivations(x, ldx, M, K, xq, xs, xsum);
  } else {
    QuantizeActivationsScalar(x, ldx, M, K, xq, xs, xsum);
  }
}

namespace {

// The kernel LinearInt8On runs for M rows on this CPU.
Int8Path Resolve(Int8Path path, int64_t M, const Support& s) {
  // AMX already wins at its minimum of one full A tile (16 rows: ~1.9x VNNI on Sapphire Rapids).
  if (path == Int8Path::kAuto) path = M >= amx::kMinRows ? Int8Path::kAmx : Int8Path::kVnni;
  if (path == Int8Path::kAmx && (!s.amx || M < amx::kMinRows)) path = Int8Path::kVnni;
  if (path == Int8Path::kVnni && !s.vnni) path = Int8Path::kAvx2;
  if (path == Int8Path::kAvx2 && !s.avx2) path = Int8Path::kScalar;
  return path;
}

}  // namespace

void LinearInt8On(Int8Path path, const WeightView& w, const int8_t* xq, const float* xs, const int32_t* xsum,
                  int64_t M, float* y, int64_t ldy) {
  if (M <= 0 || w.rows <= 0) return;
  if (w.cols <= 0) {
    for (int64_t m = 0; m < M; ++m) std::fill(y + m * ldy, y + m * ldy + w.rows, 0.0f);
    return;
  }
  switch (Resolve(path, M, DetectSupport())) {
    case Int8Path::kAmx: amx::LinearInt8(w, xq, xs, xsum, M, y, ldy); break;
    case Int8Path::kVnni: vnni::LinearInt8(w, xq, xs, xsum, M, y, ldy); break;
    case Int8Path::kAvx2: avx2::LinearInt8(w, xq, xs, xsum, M, y, ldy); break;
    default: LinearInt8Scalar(w, xq, xs, xsum, M, y, ldy); break;
  }
}

void LinearInt8JobsOn(Int8Path path, const Int8Job* jobs, int64_t n) {
  const Support s = DetectSupport();
  // One region only where every job with work would run on the same panel-splitting kernel.
  Int8Path common = Int8Path::kAuto;
  bool together = true;
  for (int64_t i = 0; i < n && together; ++i) {
    const Int8Job& j = jobs[i];
    const bool work = j.M > 0 && j.w.rows > 0 && j.w.cols > 0;  // else LinearInt8On: nothing, or zeros
    const Int8Path p = work ? Resolve(path, j.M, s) : Int8Path::kScalar;
    together = (p == Int8Path::kVnni || p == Int8Path::kAvx2) && (i == 0 || p == common);
    common = p;
  }
  if (!together || n <= 0) {
    for (int64_t i = 0; i < n; ++i)
      LinearInt8On(path, jobs[i].w, jobs[i].xq, jobs[i].xs, jobs[i].xsum, jobs[i].M, jobs[i].y, jobs[i].ldy);
    return;
  }
  // Kept per thread, so that a decode step does not allocate it per call; resize may throw bad_alloc,
  // as the callers' scratch may.
  thread_local std::vector<PanelJob> split;
  split.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const Int8Job& j = jobs[i];
    split[i] = PanelJob{MakeInt8Args(j.w, j.xq, j.xs, j.xsum, j.y, j.ldy), j.M};
  }
  SplitPanelsJobs(split.data(), n, common == Int8Path::kVnni ? vnni::PanelRange() : avx2::PanelRange());
}

void LinearInt8(const WeightView& w, const int8_t* xq, const float* xs, const int32_t* xsum, int64_t M, float* y,
                int64_t ldy) {
  LinearInt8On(Int8Path::kAuto, w, xq, xs, xsum, M, y, ldy);
}

void LinearF32(const WeightView& w, const float* x, int64_t ldx, int64_t M, float* y, int64_t ldy) {
  if (M <= 0 || w.rows <= 0) return;
  if (w.cols <= 0) {
    for (int64_t m = 0; m < M; ++m) std::fill(y + m * ldy, y + m * ldy + w.rows, 0.0f);
    return;
  }
  if (DetectSupport().avx512) {
    avx512::LinearF32(w, x, ldx, M, y, ldy);
  } else {
    LinearF32Scalar(w, x, ldx, M, y, ldy);
  }
}

}  // namespace moerun::cpu::q8
