// oneDNN glue for Linear: matmul primitives cached per shape and shared by all threads, run on the
// weights in place. W is [N, K] row-major, i.e. the {K, N} weights matrix with strides {1, K} ("ba"),
// so nothing is repacked per call; x and y keep their row strides.
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <oneapi/dnnl/dnnl.hpp>
#include <string>

#include "backends/cpu/cpu_backend_impl.h"
#include "runtime/core/log.h"
#include "runtime/core/parallel_errors.h"

namespace moerun::cpu {

namespace {

// Bound on cached primitives; shapes repeat (one per layer kind and M), so this is rarely reached.
constexpr size_t kMaxCachedPrimitives = 4096;

// oneDNN reports its own allocation failures as dnnl::error; they are out of memory like ours, not a
// reason to give up on the shape for good.
[[noreturn]] void RethrowOutOfMemory() { throw std::bad_alloc(); }
bool IsOutOfMemory(const dnnl::error& e) { return e.status == dnnl_out_of_memory; }

// Rate-limited: a failing shape in a decode loop must not flood the log.
void LogLimited(std::atomic<int>& budget, LogLevel level, const std::string& message) {
  if (budget.fetch_sub(1, std::memory_order_relaxed) > 0) Log(level, message);
}

}  // namespace

struct OnednnState {
  struct Key {
    bool bf16;
    int64_t M, N, K, ldx, ldy;
    bool operator==(const Key&) const = default;
  };
  struct KeyHash {
    size_t operator()(const Key& k) const {
      size_t h = k.bf16 ? 0x9e3779b97f4a7c15ull : 0;
      for (int64_t v : {k.M, k.N, k.K, k.ldx, k.ldy}) h = (h ^ static_cast<size_t>(v)) * 0x100000001b3ull;
      return h;
    }
  };
  struct Entry {
    bool ok = false;  // false: creation failed once; never retried, the own kernel serves the shape
    dnnl::matmul prim;
    dnnl::memory::desc src, wei, dst, scratch;
  };

  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  std::mutex mu;
  std::unordered_map<Key, std::shared_ptr<const Entry>, KeyHash> cache;
  std::atomic<int> log_budget{20};

  std::shared_ptr<const Entry> Get(const Key& key) {
    {
      std::lock_guard<std::mutex> lock(mu);
      auto it = cache.find(key);
      if (it != cache.end()) return it->second;
    }
    using dt = dnnl::memory::data_type;
    auto e = std::make_shared<Entry>();
    try {
      const dt in = key.bf16 ? dt::bf16 : dt::f32;
      e->src = dnnl::memory::desc({key.M, key.K}, in, dnnl::memory::dims{key.ldx, 1});
      e->wei = dnnl::memory::desc({key.K, key.N}, in, dnnl::memory::dims{1, key.K});
      e->dst = dnnl::memory::desc({key.M, key.N}, dt::f32, dnnl::memory::dims{key.ldy, 1});
      // User scratchpad: the library-managed one may not be used from a thread other than the one
      // that created the primitive, and our primitives are shared by every session thread.
      dnnl::primitive_attr attr;
      attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
      dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(e->src, e->wei, e->dst), attr, engine);
      e->scratch = pd.scratchpad_desc();
      e->prim = dnnl::matmul(pd);
      e->ok = true;
    } catch (const std::bad_alloc&) {
      throw;  // transient: not cached, the next call tries again
    } catch (const dnnl::error& ex) {
      if (IsOutOfMemory(ex)) RethrowOutOfMemory();
      LogLimited(log_budget, LogLevel::kWarning,
                 std::string("cpu backend: oneDNN matmul unavailable for M=") + std::to_string(key.M) +
                     " N=" + std::to_string(key.N) + " K=" + std::to_string(key.K) + (key.bf16 ? " bf16" : " f32") +
                     " (" + ex.what() + "); using the own kernel");
    } catch (const std::exception& ex) {
      LogLimited(log_budget, LogLevel::kWarning,
                 std::string("cpu backend: oneDNN matmul unavailable for M=") + std::to_string(key.M) +
                     " N=" + std::to_string(key.N) + " K=" + std::to_string(key.K) + (key.bf16 ? " bf16" : " f32") +
                     " (" + ex.what() + "); using the own kernel");
    }
    std::lock_guard<std::mutex> lock(mu);
    if (cache.size() >= kMaxCachedPrimitives) cache.clear();  // entries in use stay alive via shared_ptr
    return cache.emplace(key, std::move(e)).first->second;
  }

  bool Run(const Key& key, const void* x, const void* w, float* y) {
    try {
      std::shared_ptr<const Entry> e = Get(key);
      if (!e->ok) return false;
      thread_local std::vector<uint8_t> scratch;
      const size_t bytes = e->scratch.get_size();
      if (scratch.size() < bytes) scratch.resize(bytes);
      dnnl::stream stream(engine);
      dnnl::memory src(e->src, engine, const_cast<void*>(x));
      dnnl::memory wei(e->wei, engine, const_cast<void*>(w));
      dnnl::memory dst(e->dst, engine, y);
      dnnl::memory sp(e->scratch, engine, scratch.data());
      e->prim.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, dst},
                               {DNNL_ARG_SCRATCHPAD, sp}});
      stream.wait();
      return true;
    } catch (const std::bad_alloc&) {
      throw;
    } catch (const dnnl::error& ex) {
      if (IsOutOfMemory(ex)) RethrowOutOfMemory();
      LogLimited(log_budget, LogLevel::kWarning,
                 std::string("cpu backend: oneDNN matmul failed (") + ex.what() + "); using the own kernel");
      return false;
    } catch (const std::exception& ex) {
      LogLimited(log_budget, LogLevel::kWarning,
                 std::string("cpu backend: oneDNN matmul failed (") + ex.what() + "); using the own kernel");
      return false;
    }
  }
};

bool CpuBackend::OnednnF32(const WeightView& w, const float* x, int64_t ldx, int64_t M, float* y, int64_t ldy) const {
  return onednn_ && onednn_->Run({false, M, w.rows, w.cols, ldx, ldy}, x, w.data, y);
}

bool CpuBackend::OnednnBf16(const uint16_t* w, int64_t N, int64_t K, const uint16_t* x, int64_t M, float* y,
                            int64_t ldy) const {
  return onednn_ && onednn_->Run({true, M, N, K, K, ldy}, x, w, y);
}

// Here rather than in cpu_backend.cc: creating and destroying the oneDNN state needs its definition.
CpuBackend::CpuBackend(Precision precision, CpuFeatures features) : precision_(precision), features_(features) {
  if (!features_.onednn) return;
  try {
    onednn_ = std::make_unique<OnednnState>();
  } catch (const std::bad_alloc&) {
    throw;  // CreateCpuBackend reports it; a backend without oneDNN would compute other numbers
  } catch (const dnnl::error& ex) {
    if (IsOutOfMemory(ex)) RethrowOutOfMemory();
    Log(LogLevel::kWarning, std::string("cpu backend: oneDNN unavailable (") + ex.what() + "); own kernels only");
    features_.onednn = false;
  } catch (const std::exception& ex) {
    Log(LogLevel::kWarning, std::string("cpu backend: oneDNN unavailable (") + ex.what() + "); own kernels only");
    features_.onednn = false;
  }
}

CpuBackend::~CpuBackend() = default;

bool CpuBackend::OnednnF32Panels(const WeightView& w, const float* x, int64_t ldx, int64_t M, float* y,
                                 int64_t ldy) const {
  if (!onednn_ || !features_.avx512) return false;
  const int64_t N = w.rows, K = w.cols;
  // A panel of ~1 MiB of f32 rows stays in L2 while oneDNN sweeps x past it; multiple of 16 rows.
  const int64_t panel_rows = std::clamp<int64_t>((int64_t{1} << 18) / K / 16 * 16, 16, 256);
  const int64_t panels = (N + panel_rows - 1) / panel_rows;
  const uint8_t* flags = FindF8Flags(w);
  std::atomic<bool> ok{true};
  // Out of memory is thrown after the region rather than answered with the own kernel, whose sums
  // differ: the numbers must not depend on memory pressure.
  ParallelErrors errors;
  // oneDNN runs single-threaded inside this region (no nested parallelism), one panel per call.
#pragma omp parallel
  {
    thread_local std::vector<float> panel;
    errors.Capture([&] {
      if (panel.size() < static_cast<size_t>(panel_rows * K)) panel.resize(static_cast<size_t>(panel_rows * K));
    });
#pragma omp for schedule(static)
    for (int64_t p = 0; p < panels; ++p) {
      if (errors.failed() || !ok.load(std::memory_order_relaxed)) continue;
      const int64_t r0 = p * panel_rows, nr = std::min(panel_rows, N - r0);
      avx512::DequantizeRows(w, flags, r0, r0 + nr, panel.data());
      errors.Capture([&] {
        if (!onednn_->Run({false, M, nr, K, ldx, ldy}, x, panel.data(), y + r0)) ok = false;
      });
    }
  }
  errors.Rethrow();
  return ok;
}

}  // namespace moerun::cpu
