#include "tools/gemm_probe.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <exception>
#include <memory>
#include <oneapi/dnnl/dnnl.hpp>
#include <vector>

namespace moerun::cli {
namespace {

double Now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

constexpr int64_t M = 512, N = 2048, K = 2048;
constexpr double kOps = 2.0 * M * N * K;

// One 512x2048x2048 matmul: its primitive and its three matrices, filled with a small nonzero
// pattern (the values do not change the speed).
class Matmul {
 public:
  Matmul(dnnl::memory::data_type src_t, dnnl::memory::data_type wei_t, dnnl::memory::data_type dst_t,
         size_t elem_bytes)
      : engine_(dnnl::engine::kind::cpu, 0), stream_(engine_) {
    using tag = dnnl::memory::format_tag;
    const dnnl::memory::desc src({M, K}, src_t, tag::ab), dst({M, N}, dst_t, tag::ab);
    const dnnl::memory::desc wei_any({K, N}, wei_t, tag::any);
    const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src, wei_any, dst), engine_);
    // One block, the three matrices at different offsets within a page: separate fresh mappings (as
    // large vectors get) start at the same page offset, and their rows then compete for the same
    // cache sets; the probe ran at 750 or 1100 GOP/s on one thread depending on where malloc put
    // them.
    const size_t a_bytes = static_cast<size_t>(M * K) * elem_bytes, w_bytes = pd.weights_desc().get_size();
    const size_t c_bytes = pd.dst_desc().get_size();
    auto round_up = [](size_t n) { return (n + 4095) / 4096 * 4096; };
    const size_t w_off = round_up(a_bytes + 64) + 1024, c_off = round_up(w_off + w_bytes) + 2048;
    mem_.assign(c_off + c_bytes + 64, 0x3c);
    uint8_t* base = mem_.data() + (64 - reinterpret_cast<uintptr_t>(mem_.data()) % 64) % 64;
    a_ = dnnl::memory(src, engine_, base);
    w_ = dnnl::memory(pd.weights_desc(), engine_, base + w_off);
    c_ = dnnl::memory(pd.dst_desc(), engine_, base + c_off);
    prim_ = dnnl::matmul(pd);
  }
  void Run() {
    prim_.execute(stream_, {{DNNL_ARG_SRC, a_}, {DNNL_ARG_WEIGHTS, w_}, {DNNL_ARG_DST, c_}});
    stream_.wait();
  }

 private:
  dnnl::engine engine_;
  dnnl::stream stream_;
  std::vector<uint8_t> mem_;
  dnnl::memory a_, w_, c_;
  dnnl::matmul prim_;
};

// A probe keeps the best single run over at least 20 runs and 0.3 s: the host's clock and neighbours
// vary, and a few milliseconds of probe can land entirely in a slow spell.
bool Enough(int runs, double seconds) { return runs >= 20 && seconds >= 0.3; }

// Best rate of one matmul `run`.
template <typename Fn>
double Best(Fn run) {
  double best = 0.0;
  const double start = Now();
  for (int i = 0; !Enough(i, Now() - start); ++i) {
    const double t0 = Now();
    run();
    best = std::max(best, kOps / (Now() - t0));
  }
  return best;
}

// The faster of two ways to keep `threads` cores busy: one matmul split by oneDNN over the threads,
// and one single-threaded matmul per thread, all at once (each thread its own matrices). oneDNN
// 2.6's AVX2 int8 GEMM ran slower on two threads than on one on a 2-core AMD EPYC (Zen 1) host
// (30 against 37.6 GOP/s), where two concurrent one-thread matmuls keep both cores at their peak.
double Probe(int threads, dnnl::memory::data_type src_t, dnnl::memory::data_type wei_t, dnnl::memory::data_type dst_t,
             size_t elem_bytes) {
  try {
    omp_set_num_threads(threads);
    Matmul team(src_t, wei_t, dst_t, elem_bytes);
    double best = Best([&] { team.Run(); });
    if (threads <= 1) return best;
    bool failed = false, stop = false;
    double apart = 0.0, t0 = 0.0, start = 0.0;
#pragma omp parallel num_threads(threads)
    {
      omp_set_num_threads(1);  // oneDNN inside the region runs on its calling thread alone
      std::unique_ptr<Matmul> own;
      try {
        own = std::make_unique<Matmul>(src_t, wei_t, dst_t, elem_bytes);
      } catch (const std::exception&) {
#pragma omp critical
        failed = true;
      }
      // Rounds of one matmul per thread, all started together; the master times each round (as Best
      // does one matmul) and decides, between barriers, when to stop. A failure anywhere ends the
      // rounds at the next barrier and the team's rate stands.
      for (int i = 0;; ++i) {
#pragma omp barrier
        if (stop || failed) break;
#pragma omp master
        t0 = Now();
#pragma omp barrier
        try {  // an exception must not leave the region (it would terminate the process)
          own->Run();
        } catch (const std::exception&) {
#pragma omp critical
          failed = true;
        }
#pragma omp barrier
#pragma omp master
        {
          const double now = Now();
          apart = std::max(apart, threads * kOps / (now - t0));
          if (i == 0) start = t0;
          stop = Enough(i + 1, now - start);
        }
      }
    }
    return failed ? best : std::max(best, apart);
  } catch (const std::exception&) {
    return 0.0;
  }
}

}  // namespace

double GemmPeakBf16(int threads) {
  using dt = dnnl::memory::data_type;
  return Probe(threads, dt::bf16, dt::bf16, dt::f32, 2);
}

double GemmPeakInt8(int threads) {
  using dt = dnnl::memory::data_type;
  return Probe(threads, dt::u8, dt::s8, dt::s32, 1);
}

}  // namespace moerun::cli
