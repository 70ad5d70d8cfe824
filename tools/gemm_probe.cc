#include "tools/gemm_probe.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <exception>
#include <oneapi/dnnl/dnnl.hpp>
#include <vector>

namespace moerun::cli {
namespace {

double Now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// Inputs are filled with small nonzero patterns; the values do not change the speed.
double Probe(int threads, dnnl::memory::data_type src_t, dnnl::memory::data_type wei_t, dnnl::memory::data_type dst_t,
             size_t elem_bytes) {
  constexpr int64_t M = 512, N = 2048, K = 2048;
  try {
    omp_set_num_threads(threads);
    dnnl::engine engine(dnnl::engine::kind::cpu, 0);
    dnnl::stream stream(engine);
    using tag = dnnl::memory::format_tag;
    const dnnl::memory::desc src({M, K}, src_t, tag::ab), dst({M, N}, dst_t, tag::ab);
    const dnnl::memory::desc wei_any({K, N}, wei_t, tag::any);
    const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src, wei_any, dst), engine);
    // One block, the three matrices at different offsets within a page: separate fresh mappings (as
    // large vectors get) start at the same page offset, and their rows then compete for the same
    // cache sets; the probe ran at 750 or 1100 GOP/s on one thread depending on where malloc put
    // them.
    const size_t a_bytes = static_cast<size_t>(M * K) * elem_bytes, w_bytes = pd.weights_desc().get_size();
    const size_t c_bytes = pd.dst_desc().get_size();
    auto round_up = [](size_t n) { return (n + 4095) / 4096 * 4096; };
    const size_t w_off = round_up(a_bytes + 64) + 1024, c_off = round_up(w_off + w_bytes) + 2048;
    std::vector<uint8_t> mem(c_off + c_bytes + 64, 0x3c);
    uint8_t* base = mem.data() + (64 - reinterpret_cast<uintptr_t>(mem.data()) % 64) % 64;
    dnnl::memory am(src, engine, base), wm(pd.weights_desc(), engine, base + w_off), cm(pd.dst_desc(), engine, base + c_off);
    const dnnl::matmul prim(pd);
    // Best single run over at least 20 runs and 0.3 s: the host's clock and neighbours vary, and a
    // few milliseconds of probe can land entirely in a slow spell.
    double best = 0.0;
    const double start = Now();
    for (int i = 0; i < 20 || Now() - start < 0.3; ++i) {
      const double t0 = Now();
      prim.execute(stream, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DST, cm}});
      stream.wait();
      best = std::max(best, 2.0 * M * N * K / (Now() - t0));
    }
    return best;
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
