// Linear kernels for Q8_PANEL weights (runtime/core/q8_panel.h), in two modes:
//
// int8 activations (fast): each activation row is quantised per 128-column group g (a = max|x|;
// q = round_half_even(x · (127/a)) clamped to ±127; xs = a/127; a = 0 gives q = 0, xs = 0), then
//   y[m, r] = Σ_g fmaf(float(isum[m, r, g]), sw[r, g] · xs[m, g], ·)   from 0, in group order,
// with isum the exact int32 dot product of the group. Every path (scalar, AVX-512 VNNI, AMX) gives
// bit-identical results: the integer sums are exact and the f32 steps are the same operations.
//
// exact f32: y[m, r] = Σ_c w[r, c] · x[m, c] with w dequantised, accumulated in f32 (per group
// Σ q·x, then times the row's scale).
//
// Activation scratch: xq is [M][XqStride(K)] int8, zero beyond column K (AMX reads whole 64-byte
// rows of K); xs and xsum are [M][Groups(K)] (xsum = Σ q per group, for the +128 of the weight
// bytes: Σ (q_w + 128)·q_x = Σ q_w·q_x + 128·Σ q_x).
// Weights are read in place: nothing here allocates or repacks them.
//
// Threading: the Linear kernels split panels between OpenMP threads when the matrix is big enough
// (VNNI and AVX2: contiguous runs claimed in turn; f32: contiguous per-thread ranges; AMX: chunks
// taken in turn); called inside an outer parallel region they run on the calling thread (nested
// parallelism stays off).
#pragma once

#include <cstdint>

#include "backends/backend.h"
#include "runtime/core/q8_panel.h"

namespace moerun::cpu::q8 {

// The format's names, so that q8::Groups and the like keep meaning the format's helpers in code
// inside moerun::cpu, where this namespace hides ::moerun::q8.
using ::moerun::q8::ByteIndex;
using ::moerun::q8::Dequant;
using ::moerun::q8::Groups;
using ::moerun::q8::kGroupCols;
using ::moerun::q8::kPanelRows;
using ::moerun::q8::kQuadBytes;
using ::moerun::q8::kQuadCols;
using ::moerun::q8::MatrixBytes;
using ::moerun::q8::MatrixScales;
using ::moerun::q8::PanelBytes;
using ::moerun::q8::Panels;
using ::moerun::q8::Quads;
using ::moerun::q8::ScaleIndex;

struct Support {
  bool avx2 = false;    // AVX2 and FMA: q8_avx2.cc and mla_attention_avx2.cc may run
  bool avx512 = false;  // F, BW, VL, DQ and FMA: quantisation and the exact f32 kernel
  bool vnni = false;    // avx512 plus AVX512_VNNI: the int8 kernel
  bool amx = false;     // vnni plus AMX-TILE and AMX-INT8, and Linux granted the tile state
  bool avx512_bf16 = false;  // avx512 plus AVX512_BF16: the latent attention's vdpbf16ps kernel
  bool amx_bf16 = false;  // avx512 plus AVX512_BF16, AMX-TILE and AMX-BF16, and the tile state
};
// Probes the CPU (and asks Linux for AMX tile state) once; thread-safe.
Support DetectSupport();

// Bytes of one xq row: K rounded up to whole 64-byte AMX tile rows, an odd number of them.
int64_t XqStride(int64_t K);

// One buffer holding xq, xs and xsum for M rows, each part 64-byte aligned when `scratch` is.
int64_t ActivationBytes(int64_t M, int64_t K);
struct ActivationBuffers {
  int8_t* xq = nullptr;
  float* xs = nullptr;
  int32_t* xsum = nullptr;
};
ActivationBuffers CarveActivations(void* scratch, int64_t M, int64_t K);

// x[m, 0:K] (row stride ldx floats) → xq, xs, xsum as above. Vectorised with AVX-512 or AVX2.
void QuantizeActivations(const float* x, int64_t ldx, int64_t M, int64_t K, int8_t* xq, float* xs, int32_t* xsum);

// y[m, 0:N] for m < M (row stride ldy floats; columns from N on are not touched), N = w.rows,
// K = w.cols, w.data the panels and w.scale the panel scales. Picks VNNI for small M, AMX for large
// M, AVX2 without VNNI, scalar code without AVX2.
void LinearInt8(const WeightView& w, const int8_t* xq, const float* xs, const int32_t* xsum, int64_t M, float* y,
                int64_t ldy);

// The exact mode: y[m, 0:N] from f32 activations.
void LinearF32(const WeightView& w, const float* x, int64_t ldx, int64_t M, float* y, int64_t ldy);

// Portable versions: the fallback without AVX-512, and a second opinion for tests.
void QuantizeActivationsScalar(const float* x, int64_t ldx, int64_t M, int64_t K, int8_t* xq, float* xs,
                               int32_t* xsum);
void LinearInt8Scalar(const WeightView& w, const int8_t* xq, const float* xs, const int32_t* xsum, int64_t M,
                      float* y, int64_t ldy);
void LinearF32Scalar(const WeightView& w, const float* x, int64_t ldx, int64_t M, float* y, int64_t ldy);

// LinearInt8 on a chosen path (the CPU backend, tests, benchmarks). kAvx2 needs Support::avx2, kVnni
// Support::vnni, kAmx Support::amx and M >= 16; otherwise the call falls back as LinearInt8 would.
enum class Int8Path { kAuto, kScalar, kAvx2, kVnni, kAmx };
void LinearInt8On(Int8Path path, const WeightView& w, const int8_t* xq, const float* xs, const int32_t* xsum,
                  int64_t M, float* y, int64_t ldy);

// One matrix of LinearInt8JobsOn: y[m, 0:w.rows] = w · x[m] for m < M (x as xq, xs, xsum; row
// stride ldy), what LinearInt8On gives for it.
struct Int8Job {
  WeightView w;
  const int8_t* xq = nullptr;
  const float* xs = nullptr;
  const int32_t* xsum = nullptr;
  int64_t M = 0;
  float* y = nullptr;
  int64_t ldy = 0;
};
// Every job, with the bits LinearInt8On(path, job) gives. Where each job would run on the VNNI or the
// AVX2 kernel, all of them run in one parallel region: the threads claim runs of panels over the
// jobs' panels in order (SplitPanelsJobs), so there is one fork and join for all and no thread waits
// at the end of each matrix. Otherwise the jobs run one after another.
void LinearInt8JobsOn(Int8Path path, const Int8Job* jobs, int64_t n);

// One LinearInt8 call as the SIMD kernels see it (a plain struct: no inline code crosses the files
// built with different -m flags).
struct Int8Args {
  const uint8_t* data;  // panels
  const float* scale;   // panel scales
  int64_t N, K, G, quads, panel_bytes;
  const int8_t* xq;
  int64_t xstride;  // XqStride(K)
  const float* xs;
  const int32_t* xsum;
  float* y;
  int64_t ldy;
};
Int8Args MakeInt8Args(const WeightView& w, const int8_t* xq, const float* xs, const int32_t* xsum, float* y,
                      int64_t ldy);
// Runs range(a, M, p0, p1) on contiguous panel ranges [p0, p1) that the OpenMP threads claim in turn
// (each a share of what is left, at least 128 KiB of weights), so that every panel is streamed exactly
// once and a faster thread takes more; on the calling thread alone below 64 KiB of weights (waking
// the team would cost more). For the VNNI and AVX2 kernels.
using PanelRangeFn = void (*)(const Int8Args& a, int64_t M, int64_t p0, int64_t p1);
void SplitPanels(const Int8Args& a, int64_t M, PanelRangeFn range);
// The same over several matrices: job j's panels follow job j - 1's in the order the runs are
// claimed, and a run may cover the end of one job and the start of the next.
struct PanelJob {
  Int8Args a;
  int64_t M;
};
void SplitPanelsJobs(const PanelJob* jobs, int64_t n, PanelRangeFn range);

// The SIMD kernels, each in a file built with its own -m flags; call only when DetectSupport() has
// said yes (LinearInt8 / LinearF32 / QuantizeActivations do that). K >= 1 and M >= 1; the AMX
// kernel needs M >= amx::kMinRows.
namespace avx512 {
void QuantizeActivations(const float* x, int64_t ldx, int64_t M, int64_t K, int8_t* xq, float* xs, int32_t* xsum);
void LinearF32(const WeightView& w, const float* x, int64_t ldx, int64_t M, float* y, int64_t ldy);
}  // namespace avx512
namespace avx2 {
PanelRangeFn PanelRange();  // the kernel's range function, for SplitPanelsJobs
void QuantizeActivations(const float* x, int64_t ldx, int64_t M, int64_t K, int8_t* xq, float* xs, int32_t* xsum);
void LinearInt8(const WeightView& w, const int8_t* xq, const float* xs, const int32_t* xsum, int64_t M, float* y,
                int64_t ldy);
}  // namespace avx2
namespace vnni {
PanelRangeFn PanelRange();  // the kernel's range function, for SplitPanelsJobs
void LinearInt8(const WeightView& w, const int8_t* xq, const float* xs, const int32_t* xsum, int64_t M, float* y,
                int64_t ldy);
}  // namespace vnni
namespace amx {
inline constexpr int64_t kMinRows = 16;  // one full A tile of activation rows
void LinearInt8(const WeightView& w, const int8_t* xq, const float* xs, const int32_t* xsum, int64_t M, float* y,
                int64_t ldy);
}  // namespace amx

}  // namespace moerun::cpu::q8
