// Linear on the CPU: which kernel runs a given call, the bf16 weight copies and e4m3 block flags
// that PrepareWeights makes, and the scalar fallback (oneDNN glue: onednn_matmul.cc).
//
//   f32 precision:  M <= 4 → own kernel for every dtype (weights widened to f32 in registers, fp32
//                   FMAs; it streams decode weights at memory bandwidth, oneDNN 2.6 does not).
//                   F32 weights, M > 4 → oneDNN f32 matmul on the mapping.
//                   BF16/F16/F8 weights: oneDNN 2.6 has no f32 GEMM with narrow weights, so M < 32
//                   → own kernel; M >= 32 → panels of rows dequantised to f32, each run by oneDNN.
//   q8_panel weights (either precision): q8_kernels.h, see LinearQ8.
//   bf16 precision: x rounded to bf16. M > 4 with bf16 weights (zero-copy from the mapping, or the
//                   copy PrepareWeights made) → oneDNN bf16 matmul with f32 output. Otherwise the own
//                   kernel, which rounds dequantised weights to bf16 in registers: same products,
//                   fp32 accumulation, the same numbers as the reference.
// oneDNN failures are logged and the call falls back to the own kernel, so Linear always produces,
// except out of memory: a scratch buffer that cannot be allocated throws std::bad_alloc to the caller
// (a session turns it into MOERUN_ERR_OUT_OF_MEMORY and retries give the same numbers), rather than
// a fallback path that would make the results depend on memory pressure.
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>

#include "backends/cpu/cpu_backend_impl.h"
#include "backends/cpu/q8_kernels.h"
#include "runtime/core/aligned_buffer.h"
#include "runtime/core/log.h"
#include "runtime/core/parallel_errors.h"

namespace moerun::cpu {

namespace {

// Up to this many rows run on the own kernel even where oneDNN could: at decode shapes it streams
// the weights at memory bandwidth, where oneDNN 2.6's matmul (f32 and bf16) was 2-3x slower here.
constexpr int64_t kOwnKernelMaxM = 4;
// From this many rows on, f32 precision with bf16/f16/e4m3 weights dequantises panels of rows and
// hands them to oneDNN's f32 GEMM (~1.6x the own kernel's rate at M=64 here); below, the conversion
// and per-panel calls cost more than they save.
constexpr int64_t kPanelMinM = 32;

void ZeroRows(float* y, int64_t M, int64_t n, int64_t ldy) {
  for (int64_t m = 0; m < M; ++m) std::memset(y + m * ldy, 0, static_cast<size_t>(n) * sizeof(float));
}

// Rate-limited: a bad call in a decode loop must not flood the log.
void LogLimited(std::atomic<int>& budget, LogLevel level, const std::string& message) {
  if (budget.fetch_sub(1, std::memory_order_relaxed) > 0) Log(level, message);
}

inline float RoundBf16(float v) { return Bf16ToF32(F32ToBf16(v)); }

// MemAvailable from /proc/meminfo in bytes; 0 when unknown.
int64_t AvailableMemoryBytes() {
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line)) {
    long long kb = 0;
    if (std::sscanf(line.c_str(), "MemAvailable: %lld kB", &kb) == 1) return kb * 1024;
  }
  return 0;
}

}  // namespace

// ---- dispatch -------------------------------------------------------------------------------------

bool ValidWeight(const WeightView& w) {
  if (!w.data || w.rows <= 0 || w.cols < 0 || static_cast<int>(w.dtype) > kMaxDType) return false;
  if (w.dtype == DType::kQ8Panel) return w.scale && w.scale_cols >= ::moerun::q8::Groups(w.cols);
  if (w.dtype == DType::kF8E4M3) {
    if (!w.scale || w.block_rows <= 0 || w.block_cols <= 0) return false;
    if (w.scale_cols < static_cast<int64_t>(CeilDiv(static_cast<uint64_t>(w.cols), w.block_cols))) return false;
  }
  return true;
}

bool ValidLinearArgs(const WeightView& w, const float* x, int64_t ldx, int64_t M, const float* y, int64_t ldy) {
  if (!ValidWeight(w) || !x || !y) return false;
  return M <= 1 || (ldx >= w.cols && ldy >= w.rows);
}

void CpuBackend::Linear(const WeightView& w, const float* x, int64_t ldx, int64_t M, float* y, int64_t ldy) const {
  static std::atomic<int> log_budget{20};
  if (M <= 0 || w.rows == 0) return;
  if (!ValidLinearArgs(w, x, ldx, M, y, ldy)) {
    LogLimited(log_budget, LogLevel::kError, "cpu backend: Linear called with an invalid weight view or strides; "
                                             "output set to zero");
    if (y && w.rows > 0 && (M == 1 || ldy >= w.rows)) ZeroRows(y, M, w.rows, ldy);
    return;
  }
  if (M == 1) {  // strides are meaningless for one row; normalising them lets oneDNN share primitives
    ldx = w.cols;
    ldy = w.rows;
  }
  if (w.cols == 0) {
    ZeroRows(y, M, w.rows, ldy);
    return;
  }
  try {
    if (w.dtype == DType::kQ8Panel) {
      LinearQ8(w, x, ldx, M, y, ldy);
      return;
    }
    if (precision_ == Precision::kBF16) {
      LinearBf16(w, x, ldx, M, y, ldy);
      return;
    }
    if (w.dtype == DType::kF32 && M > kOwnKernelMaxM && OnednnF32(w, x, ldx, M, y, ldy)) return;
    if (w.dtype != DType::kF32 && M >= kPanelMinM && OnednnF32Panels(w, x, ldx, M, y, ldy)) return;
    LinearOwn(w, x, ldx, M, y, ldy, false);
  } catch (const std::bad_alloc&) {
    throw;
  } catch (const std::exception& ex) {
    LogLimited(log_budget, LogLevel::kError, std::string("cpu backend: Linear failed: ") + ex.what());
    ZeroRows(y, M, w.rows, ldy);
  }
}

// Small items (decode: per-head 512x128 matrices) run one per thread in a single parallel region:
// one fork/join per batch instead of one per item, which matters most when a core is busy and every
// join waits for a descheduled thread. Large items (prefill) keep their own row-parallel kernels.
namespace {
q8::ActivationBuffers ThreadActivations(int slot, int64_t M, int64_t K);  // below

// Per-thread list of n int8 jobs (LinearBatch, LinearSameInput, MoeExpertsAsJobs; none of them
// calls another while it holds the list), so that a decode step does not allocate one per call.
// Throws std::bad_alloc.
std::vector<q8::Int8Job>& ThreadJobs(int64_t n) {
  thread_local std::vector<q8::Int8Job> jobs;
  jobs.resize(static_cast<size_t>(n));
  return jobs;
}
}  // namespace

void CpuBackend::LinearBatch(const WeightView* w, int64_t count, const float* x, int64_t x_step, int64_t ldx,
                             int64_t M, float* y, int64_t y_step, int64_t ldy) const {
  // Items run concurrently, one per thread, when they are small or when there are enough of them to
  // keep every thread busy (MLA's 16+ heads at prefill: each item then runs its kernels without
  // splitting a few panels between threads, which cost more than it gained here).
  constexpr int64_t kMaxParallelItemWork = int64_t{1} << 22;  // M·rows·cols of one item
  const bool across = count > 1 && (M * w[0].rows * w[0].cols <= kMaxParallelItemWork ||
                                    count >= 2 * static_cast<int64_t>(omp_get_max_threads()));
  // One x for every item (MLA's key expansion at prefill): the int8 path quantises it once and the
  // items read the same bytes, which is what each would have made.
  bool int8 = SharesInt8Input(w, count, M, x, ldx);
  for (int64_t i = 0; int8 && i < count; ++i) int8 = M == 1 || ldy >= w[i].rows;
  // Few rows (decode: MLA's per-head matrices, 64 KiB each), every item with its own input: all the
  // inputs quantised into one buffer (per row, as each Linear would), then the items as one set of
  // jobs. Per item, the quantisation and the kernel's own region cost about as much as streaming
  // its bytes did on the AMD EPYC host (~3 us of ~6 per head on one thread).
  if (int8 && x_step != 0 && M < q8::amx::kMinRows) {
    const int64_t K = w[0].cols, G = q8::Groups(K), stride = q8::XqStride(K);
    const q8::ActivationBuffers a = ThreadActivations(2, count * M, K);
    std::vector<q8::Int8Job>& jobs = ThreadJobs(count);
    for (int64_t i = 0; i < count; ++i) {
      const q8::ActivationBuffers b{a.xq + i * M * stride, a.xs + i * M * G, a.xsum + i * M * G};
      QuantizeInt8(x + i * x_step, ldx, M, K, b);
      jobs[i] = {w[i], b.xq, b.xs, b.xsum, M, y + i * y_step, M == 1 ? w[i].rows : ldy};
    }
    q8::LinearInt8JobsOn(Int8Kernel(), jobs.data(), count);
    return;
  }
  if (int8 && x_step == 0) {
    const q8::ActivationBuffers a = ThreadActivations(2, M, w[0].cols);
    QuantizeInt8(x, ldx, M, w[0].cols, a);
#pragma omp parallel for schedule(dynamic, 1) if (across)
    for (int64_t i = 0; i < count; ++i)
      q8::LinearInt8On(Int8Kernel(), w[i], a.xq, a.xs, a.xsum, M, y + i * y_step, M == 1 ? w[i].rows : ldy);
    return;
  }
  ParallelErrors errors;
#pragma omp parallel for schedule(dynamic, 1) if (across)
  for (int64_t i = 0; i < count; ++i) {
    if (!errors.failed()) errors.Capture([&] { Linear(w[i], x + i * x_step, ldx, M, y + i * y_step, ldy); });
  }
  errors.Rethrow();
}

void CpuBackend::LinearOwn(const WeightView& w, const float* x, int64_t ldx, int64_t M, float* y, int64_t ldy,
                           bool round_bf16) const {
  if (features_.avx512) {
    avx512::Linear(w, FindF8Flags(w), x, ldx, M, y, ldy, round_bf16);
  } else {
    LinearScalar(w, x, ldx, M, y, ldy, round_bf16, false);
  }
}

namespace {

// Per-thread int8 activation scratch, 64-byte aligned, grown to the largest call seen: slot 0 for
// LinearQ8 / LinearSameInput, slot 1 for an expert's gathered rows (held while its down projection
// uses slot 0), slot 2 for MoeExperts' or LinearBatch's shared quantised input (read by every
// thread while the calling thread holds it), slot 3 for the shared experts' down input in
// MoeExpertsAsJobs (held with slot 0). Throws std::bad_alloc.
q8::ActivationBuffers ThreadActivations(int slot, int64_t M, int64_t K) {
  constexpr size_t kAlign = 64;
  struct Free {
    void operator()(void* p) const { AlignedFree(p, kAlign); }
  };
  thread_local std::unique_ptr<void, Free> scratch[4];
  thread_local int64_t scratch_bytes[4] = {0, 0, 0, 0};
  const int64_t need = q8::ActivationBytes(M, K);
  if (scratch_bytes[slot] < need) {
    const int64_t bytes = (need + 63) / 64 * 64;
    scratch[slot].reset(AlignedAlloc(kAlign, static_cast<size_t>(bytes)));
    scratch_bytes[slot] = scratch[slot] ? bytes : 0;
    if (!scratch[slot]) throw std::bad_alloc();
  }
  return q8::CarveActivations(scratch[slot].get(), M, K);
}

}  // namespace

// The int8 kernels this backend may use: all of them with AVX-512 (LinearInt8 then picks AMX, VNNI or
// AVX2 by M and the CPU), the AVX2 one without, the portable one without either (or in tests that
// switch the features off).
q8::Int8Path CpuBackend::Int8Kernel() const {
  return features_.avx512 ? q8::Int8Path::kAuto : features_.avx2 ? q8::Int8Path::kAvx2 : q8::Int8Path::kScalar;
}

// q8_panel weights: f32 precision widens them exactly (q8::LinearF32); bf16 precision runs the int8
// path (activations quantised per 128-column group, runtime/core/q8_panel.h) on AMX / VNNI / AVX2.
void CpuBackend::LinearQ8(const WeightView& w, const float* x, int64_t ldx, int64_t M, float* y, int64_t ldy) const {
  // Without AVX-512 (or in tests that switch it off) the exact mode runs the portable kernel, and the
  // quantisation the AVX2 or the portable one: the same bytes on every path.
  if (precision_ == Precision::kF32) {
    (features_.avx512 ? q8::LinearF32 : q8::LinearF32Scalar)(w, x, ldx, M, y, ldy);
    return;
  }
  const q8::ActivationBuffers a = ThreadActivations(0, M, w.cols);
  QuantizeInt8(x, ldx, M, w.cols, a);
  q8::LinearInt8On(Int8Kernel(), w, a.xq, a.xs, a.xsum, M, y, ldy);
}

void CpuBackend::QuantizeInt8(const float* x, int64_t ldx, int64_t M, int64_t K, const q8::ActivationBuffers& b) const {
  (features_.avx512 ? q8::QuantizeActivations
   : features_.avx2 ? q8::avx2::QuantizeActivations
                    : q8::QuantizeActivationsScalar)(x, ldx, M, K, b.xq, b.xs, b.xsum);
}

// True when Linear would run these weights on the int8 SIMD path with x quantised the same way for
// each: then the quantisation can be shared.
bool CpuBackend::SharesInt8Input(const WeightView* w, int64_t count, int64_t M, const float* x, int64_t ldx) const {
  if (precision_ != Precision::kBF16 || Int8Kernel() == q8::Int8Path::kScalar || M <= 0 || count <= 0) return false;
  for (int64_t i = 0; i < count; ++i)
    if (w[i].dtype != DType::kQ8Panel || w[i].cols != w[0].cols || w[i].cols == 0 || w[i].rows == 0 ||
        !ValidLinearArgs(w[i], x, ldx, M, x, w[i].rows))
      return false;
  return true;
}

void CpuBackend::LinearSameInput(const WeightView* w, int64_t count, const float* x, int64_t ldx, int64_t M,
                                 float* const* y, const int64_t* ldy) const {
  bool shared = SharesInt8Input(w, count, M, x, ldx);
  for (int64_t i = 0; shared && i < count; ++i) shared = y[i] && (M == 1 || ldy[i] >= w[i].rows);
  if (!shared) {
    Backend::LinearSameInput(w, count, x, ldx, M, y, ldy);
    return;
  }
  // One quantisation of x for all of them: the same bytes each Linear would have made. The matrices
  // then run as one set of jobs (one parallel region).
  const q8::ActivationBuffers a = ThreadActivations(0, M, w[0].cols);
  QuantizeInt8(x, ldx, M, w[0].cols, a);
  std::vector<q8::Int8Job>& jobs = ThreadJobs(count);
  for (int64_t i = 0; i < count; ++i) jobs[i] = {w[i], a.xq, a.xs, a.xsum, M, y[i], M == 1 ? w[i].rows : ldy[i]};
  q8::LinearInt8JobsOn(Int8Kernel(), jobs.data(), count);
}

namespace {

// Up to this many (token, expert) slots, MoeExperts runs its matrices as jobs (MoeExpertsAsJobs):
// decode batches of up to ~10 tokens, whose gate and up outputs stay in L2 between the two phases.
constexpr int64_t kExpertJobsMaxSlots = 64;

// Slots [first, first + m)'s quantised rows of x (all: every token's) into b.
void GatherRows(const MoeExpertsArgs& a, const q8::ActivationBuffers& all, const q8::ActivationBuffers& b,
                int64_t first, int64_t m) {
  const int64_t G = q8::Groups(a.D), stride = q8::XqStride(a.D);
  for (int64_t r = 0; r < m; ++r) {
    const int64_t t = a.slot_token[first + r];
    std::memcpy(b.xq + r * stride, all.xq + t * stride, static_cast<size_t>(stride));
    std::memcpy(b.xs + r * G, all.xs + t * G, static_cast<size_t>(G) * sizeof(float));
    std::memcpy(b.xsum + r * G, all.xsum + t * G, static_cast<size_t>(G) * sizeof(int32_t));
  }
}

}  // namespace

// Int8 path: each token's row is quantised once for the layer, not once per selected expert and
// matrix (gate and up); an expert gathers its rows' quantised bytes (a quarter of the f32 row).
// Every number is the same as the default's: quantisation is per row.
void CpuBackend::MoeExperts(const MoeExpertsArgs& a) const {
  bool int8 = a.n_active > 0 && a.T > 0, down_int8 = true;
  int64_t S = 0, slots_end = 0;
  for (int64_t i = 0; int8 && i < a.n_active; ++i) {
    const WeightView w[2] = {a.gate[i], a.up[i]};
    int8 = SharesInt8Input(w, 2, a.T, a.x, a.D);
    down_int8 = down_int8 && SharesInt8Input(&a.down[i], 1, a.count[i], a.g, a.I);
    S += a.count[i];
    slots_end = std::max(slots_end, a.begin[i] + a.count[i]);
  }
  const bool jobs = int8 && down_int8 && S <= kExpertJobsMaxSlots;
  bool shared_jobs = false;
  if (a.shared && jobs) {
    const SharedMlpArgs& m = *a.shared;
    const WeightView w[2] = {m.gate, m.up};
    shared_jobs = SharesInt8Input(w, 2, a.T, a.x, a.D) && m.gate.cols == a.D &&
                  SharesInt8Input(&m.down, 1, a.T, m.g, m.I);
  }
  if (a.shared && !shared_jobs) {  // the shared MLP on its own, then the routed experts
    RunSharedMlp(a);
    MoeExpertsArgs routed = a;
    routed.shared = nullptr;
    MoeExperts(routed);
    return;
  }
  if (!int8) {
    Backend::MoeExperts(a);
    return;
  }
  const int64_t D = a.D, I = a.I;
  const q8::ActivationBuffers all = ThreadActivations(2, a.T, D);
  QuantizeInt8(a.x, D, a.T, D, all);
  if (jobs) {
    MoeExpertsAsJobs(a, all, slots_end);
    return;
  }
  ForEachExpert(a.n_active, [&](int64_t i) {
    const int64_t o = a.begin[i], m = a.count[i];
    const q8::ActivationBuffers b = ThreadActivations(1, m, D);
    GatherRows(a, all, b, o, m);
    q8::LinearInt8On(Int8Kernel(), a.gate[i], b.xq, b.xs, b.xsum, m, a.g + o * I, I);
    q8::LinearInt8On(Int8Kernel(), a.up[i], b.xq, b.xs, b.xsum, m, a.u + o * I, I);
    SiluMul(a.g + o * I, a.u + o * I, a.g + o * I, m * I);
    Linear(a.down[i], a.g + o * I, I, m, a.y + o * D, D);
  });
}

// Few slots (decode): every expert's gate and up as one set of jobs, then every down projection as
// another, each in one parallel region where the threads claim runs of panels across the experts.
// One expert per thread instead leaves a thread idle while the other finishes its last expert, and
// a matrix per region pays a fork and join for each. The shared experts' gate and up join the first
// set (on every token's row of `all`), their down projection the second: a decode step of the 8-layer
// V2-Lite file enters 64 parallel regions instead of 78. The same numbers: the kernels and the
// per-row quantisation of the down projections' inputs are those of the per-expert path and of
// RunSharedMlp.
void CpuBackend::MoeExpertsAsJobs(const MoeExpertsArgs& a, const q8::ActivationBuffers& all,
                                  int64_t slots_end) const {
  const int64_t D = a.D, I = a.I, G = q8::Groups(D), stride = q8::XqStride(D);
  const SharedMlpArgs* sh = a.shared;
  const q8::ActivationBuffers rows = ThreadActivations(1, slots_end, D);
  std::vector<q8::Int8Job>& jobs = ThreadJobs(2 * a.n_active + 2);
  int64_t n = 0;
  if (sh) {
    jobs[n++] = {sh->gate, all.xq, all.xs, all.xsum, a.T, sh->g, sh->I};
    jobs[n++] = {sh->up, all.xq, all.xs, all.xsum, a.T, sh->u, sh->I};
  }
  for (int64_t i = 0; i < a.n_active; ++i) {
    const int64_t o = a.begin[i], m = a.count[i];
    const q8::ActivationBuffers b{rows.xq + o * stride, rows.xs + o * G, rows.xsum + o * G};
    GatherRows(a, all, b, o, m);
    jobs[n++] = {a.gate[i], b.xq, b.xs, b.xsum, m, a.g + o * I, I};
    jobs[n++] = {a.up[i], b.xq, b.xs, b.xsum, m, a.u + o * I, I};
  }
  q8::LinearInt8JobsOn(Int8Kernel(), jobs.data(), n);
  n = 0;
  if (sh) {
    SiluMul(sh->g, sh->u, sh->g, a.T * sh->I);
    const q8::ActivationBuffers b = ThreadActivations(3, a.T, sh->I);
    QuantizeInt8(sh->g, sh->I, a.T, sh->I, b);
    jobs[n++] = {sh->down, b.xq, b.xs, b.xsum, a.T, sh->y, D};
  }
  const q8::ActivationBuffers h = ThreadActivations(0, slots_end, I);
  const int64_t Gi = q8::Groups(I), stride_i = q8::XqStride(I);
  for (int64_t i = 0; i < a.n_active; ++i) {
    const int64_t o = a.begin[i], m = a.count[i];
    SiluMul(a.g + o * I, a.u + o * I, a.g + o * I, m * I);
    const q8::ActivationBuffers b{h.xq + o * stride_i, h.xs + o * Gi, h.xsum + o * Gi};
    QuantizeInt8(a.g + o * I, I, m, I, b);
    jobs[n++] = {a.down[i], b.xq, b.xs, b.xsum, m, a.y + o * D, D};
  }
  q8::LinearInt8JobsOn(Int8Kernel(), jobs.data(), n);
}

void CpuBackend::LinearBf16(const WeightView& w, const float* x, int64_t ldx, int64_t M, float* y,
                            int64_t ldy) const {
  const int64_t N = w.rows, K = w.cols;
  const size_t elems = static_cast<size_t>(M * K);
  const uint16_t* wb = w.dtype == DType::kBF16 ? static_cast<const uint16_t*>(w.data) : FindBf16Copy(w);
  // Rounded activations live in per-thread buffers that grow to the largest call seen.
  if (wb && onednn_ && M > kOwnKernelMaxM) {
    thread_local std::vector<uint16_t> xb;
    if (xb.size() < elems) xb.resize(elems);
    uint16_t* xbp = xb.data();
    const bool avx = features_.avx512;
#pragma omp parallel for schedule(static) if (M * K >= (1 << 16))
    for (int64_t m = 0; m < M; ++m) {
      if (avx) {
        avx512::RoundToBf16Bits(x + m * ldx, K, xbp + m * K);
      } else {
        for (int64_t c = 0; c < K; ++c) xbp[m * K + c] = F32ToBf16(x[m * ldx + c]);
      }
    }
    if (OnednnBf16(wb, N, K, xbp, M, y, ldy)) return;
  }
  // Own kernel; a bf16 copy (exact already) beats rounding the dequantised weights again.
  WeightView v = w;
  if (wb && w.dtype != DType::kBF16) {
    v.dtype = DType::kBF16;
    v.data = wb;
    v.scale = nullptr;
  }
  const bool round_w = v.dtype != DType::kBF16;
  if (features_.avx512) {
    thread_local std::vector<float> xr;
    if (xr.size() < elems) xr.resize(elems);
    for (int64_t m = 0; m < M; ++m) avx512::RoundToBf16Floats(x + m * ldx, K, xr.data() + m * K);
    avx512::Linear(v, FindF8Flags(v), xr.data(), K, M, y, ldy, round_w);
    return;
  }
  LinearScalar(v, x, ldx, M, y, ldy, round_w, true);
}

// ---- bf16 weight copies -----------------------------------------------------------------------------
//
// Memory cost: 2 bytes per parameter of every non-bf16 linear weight, held for the backend's lifetime
// on top of the mapping (whose pages the kernel may drop once untouched). For an FP8 file that is
// twice its weight bytes: ~31 GB for DeepSeek-V2-Lite, more than this 24 GB machine has. The copies
// are therefore limited to 3/4 of MemAvailable at the time of the call; weights beyond that (or whose
// allocation fails) stay uncopied and run on the own kernel, which rounds their dequantised values to
// bf16 in registers: same numbers, only slower at large M. Copies are keyed by WeightView::data, so a
// backend must not outlive the mapping of the model it prepared (a new mapping at the same address
// with the same shape would be served stale copies).

Status CpuBackend::PrepareWeights(const std::vector<WeightView>& weights) {
  try {
    if (precision_ == Precision::kF32) {
      for (const WeightView& w : weights) PrepareF8Flags(w);
      return Status::Ok();
    }
    const int64_t available = AvailableMemoryBytes();
    const int64_t budget = available > 0 ? available / 4 * 3 : INT64_MAX;
    int64_t used = 0, skipped = 0, skipped_bytes = 0;
    for (const WeightView& w : weights) {
      if (w.dtype == DType::kBF16 || w.dtype == DType::kQ8Panel || w.rows <= 0 || w.cols <= 0) continue;
      if (!ValidWeight(w)) continue;  // Linear reports it when called
      if (FindBf16Copy(w)) continue;
      const int64_t elems = w.rows * w.cols, bytes = elems * 2;
      std::unique_ptr<uint16_t[]> data;
      if (used + bytes <= budget) data.reset(new (std::nothrow) uint16_t[static_cast<size_t>(elems)]);
      if (!data) {
        ++skipped;
        skipped_bytes += bytes;
        PrepareF8Flags(w);  // the own kernel will decode it on the fly
        continue;
      }
      const int64_t chunks = (w.rows + 15) / 16;
#pragma omp parallel for schedule(static)
      for (int64_t b = 0; b < chunks; ++b) {
        const int64_t r0 = b * 16, r1 = std::min(w.rows, r0 + 16);
        if (features_.avx512) {
          avx512::WeightRowsToBf16(w, r0, r1, data.get() + r0 * w.cols);
        } else {
          for (int64_t r = r0; r < r1; ++r)
            for (int64_t c = 0; c < w.cols; ++c) data[r * w.cols + c] = F32ToBf16(w.At(r, c));
        }
      }
      std::unique_lock lock(prepared_mu_);
      copies_[w.data] = Bf16Copy{w.rows, w.cols, w.dtype, std::move(data)};
      used += bytes;
    }
    if (skipped > 0) {
      Log(LogLevel::kWarning, "cpu backend: " + std::to_string(skipped) + " weights (" +
                                  std::to_string(skipped_bytes >> 20) +
                                  " MiB as bf16) left unconverted to stay within memory; they are rounded on the fly");
    }
  } catch (const std::exception& ex) {
    Log(LogLevel::kWarning, std::string("cpu backend: bf16 weight copies incomplete (") + ex.what() +
                                "); the rest are rounded on the fly");
  }
  return Status::Ok();
}

// One byte per 4 rows × 128 columns: 0.2% of an e4m3 weight's size.
void CpuBackend::PrepareF8Flags(const WeightView& w) {
  if (!features_.avx512 || w.dtype != DType::kF8E4M3 || !ValidWeight(w) || w.cols == 0 || FindF8Flags(w)) return;
  F8Flags f{w.rows, w.cols, w.block_cols, {}};
  const int64_t groups = (w.rows + 3) / 4, blocks = avx512::F8BlocksPerRow(w);
  f.special.resize(static_cast<size_t>(groups * blocks));
  constexpr int64_t kGroupsPerTask = 64;
#pragma omp parallel for schedule(static)
  for (int64_t g0 = 0; g0 < groups; g0 += kGroupsPerTask) {
    avx512::F8SpecialFlags(w, g0, std::min(groups, g0 + kGroupsPerTask), f.special.data() + g0 * blocks);
  }
  std::unique_lock lock(prepared_mu_);
  f8_flags_.emplace(w.data, std::move(f));
}

const uint8_t* CpuBackend::FindF8Flags(const WeightView& w) const {
  if (w.dtype != DType::kF8E4M3) return nullptr;
  std::shared_lock lock(prepared_mu_);
  auto it = f8_flags_.find(w.data);
  if (it == f8_flags_.end() || it->second.rows != w.rows || it->second.cols != w.cols ||
      it->second.block_cols != w.block_cols)
    return nullptr;
  return it->second.special.data();
}

const uint16_t* CpuBackend::FindBf16Copy(const WeightView& w) const {
  std::shared_lock lock(prepared_mu_);
  auto it = copies_.find(w.data);
  if (it == copies_.end() || it->second.rows != w.rows || it->second.cols != w.cols || it->second.source != w.dtype)
    return nullptr;
  return it->second.data.get();
}

int64_t CpuBackend::PreparedBytes() const {
  std::shared_lock lock(prepared_mu_);
  int64_t total = 0;
  for (const auto& [key, copy] : copies_) total += copy.rows * copy.cols * 2;
  for (const auto& [key, flags] : f8_flags_) total += static_cast<int64_t>(flags.special.size());
  return total;
}

// ---- scalar fallback ----------------------------------------------------------------------------------

void LinearScalar(const WeightView& w, const float* x, int64_t ldx, int64_t M, float* y, int64_t ldy, bool round_w,
                  bool round_x) {
  const int64_t N = w.rows, K = w.cols;
  constexpr int64_t kRows = 8;
  const int64_t blocks = (N + kRows - 1) / kRows;
  ParallelErrors errors;
#pragma omp parallel if (N * K >= (1 << 16))
  {
    // Dequantised rows and rounded activations, per thread, grown to the largest call seen.
    thread_local std::vector<float> wbuf, xbuf;
    errors.Capture([&] {
      if (wbuf.size() < static_cast<size_t>(kRows * K)) wbuf.resize(static_cast<size_t>(kRows * K));
      if (xbuf.size() < static_cast<size_t>(K)) xbuf.resize(static_cast<size_t>(K));
    });
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      if (errors.failed()) continue;
      const int64_t r0 = b * kRows, nr = std::min(kRows, N - r0);
      for (int64_t i = 0; i < nr; ++i)
        for (int64_t c = 0; c < K; ++c) {
          const float v = w.At(r0 + i, c);
          wbuf[i * K + c] = round_w ? RoundBf16(v) : v;
        }
      for (int64_t m = 0; m < M; ++m) {
        const float* xm = x + m * ldx;
        if (round_x) {
          for (int64_t c = 0; c < K; ++c) xbuf[c] = RoundBf16(xm[c]);
          xm = xbuf.data();
        }
        for (int64_t i = 0; i < nr; ++i) {
          const float* wr = wbuf.data() + i * K;
          float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
          for (int64_t c = 0; c < K; ++c) acc += wr[c] * xm[c];
          y[m * ldy + r0 + i] = acc;
        }
      }
    }
  }
  errors.Rethrow();
}

}  // namespace moerun::cpu
