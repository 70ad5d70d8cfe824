// moerun_attention_rates: the CPU backend's MLA decode attention alone, as a decode step calls it
// (CpuBackend::MlaAttention, one token, a bf16 latent cache at bf16 precision), in time-stamp-counter
// cycles per call and per 8-lane FMA of its arithmetic. With moerun_pipe_rates' cycles per FMA this
// is the kernel's fraction of the FMA peak, without a model, a prompt or the memory's drift.
//
//   moerun_attention_rates [--keys N] [--heads H] [--threads T] [--reps N] [--cold]
//
// Defaults: 4096 keys, 16 heads (DeepSeek-V2-Lite: kv_rank 512, rope 64), the OpenMP default
// threads, 21 calls (the first is dropped). --cold reads 64 MiB between calls, so that the cache rows
// come from memory as in a decode step (whose weights evict them), not from L3. Prints the median,
// min and max counter cycles of a call and the median per FMA:
//   per thread = cycles × threads / FMAs, so that one thread's figure compares with the FMA rate of
//   one core. The FMAs counted are the arithmetic's: keys × heads × (576 + 512) / 8.
#include <omp.h>
#include <x86intrin.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "backends/cpu/cpu_backend_impl.h"

namespace {

// Where the cold-cache loop's sum goes, so that the compiler keeps its reads.
volatile uint64_t g_sink = 0;

struct Options {
  int64_t keys = 4096, heads = 16;
  int threads = 0, reps = 21;
  bool cold = false;
};

bool Parse(int argc, char** argv, Options* o) {
  for (int i = 1; i < argc; ++i) {
    const char* a = argv[i];
    if (std::strcmp(a, "--cold") == 0) {
      o->cold = true;
      continue;
    }
    if (i + 1 >= argc) return false;
    const long v = std::strtol(argv[++i], nullptr, 10);
    if (v < 1 || v > (1 << 20)) return false;
    if (std::strcmp(a, "--keys") == 0) {
      o->keys = v;
    } else if (std::strcmp(a, "--heads") == 0) {
      o->heads = v;
    } else if (std::strcmp(a, "--threads") == 0) {
      o->threads = static_cast<int>(v);
    } else if (std::strcmp(a, "--reps") == 0) {
      o->reps = static_cast<int>(v);
    } else {
      return false;
    }
  }
  return o->reps >= 2;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  if (!Parse(argc, argv, &o)) {
    std::fprintf(stderr,
                 "usage: moerun_attention_rates [--keys N] [--heads H] [--threads T] [--reps N>=2] [--cold]\n");
    return 2;
  }
  using namespace moerun;
  if (o.threads > 0) omp_set_num_threads(o.threads);
  const int threads = omp_get_max_threads();
  const cpu::CpuBackend be(Precision::kBF16, cpu::CpuFeatures::Detect());
  if (!be.Bf16LatentCache()) {
    std::fprintf(stderr, "moerun_attention_rates: this CPU has neither AVX2 nor AMX-BF16 (no bf16 latent cache)\n");
    return 1;
  }
  const int64_t N = o.keys, H = o.heads, R = 512, P = 64, W = R + P;
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<uint16_t> pool(static_cast<size_t>(N * W));
  for (uint16_t& x : pool) x = F32ToBf16(normal(rng));
  std::vector<float> q_latent(static_cast<size_t>(H * R)), q_rope(static_cast<size_t>(H * P));
  for (float& x : q_latent) x = 0.05f * normal(rng);
  for (float& x : q_rope) x = 0.05f * normal(rng);
  std::vector<float> out(static_cast<size_t>(H * R));
  const int32_t page = 0;
  const int32_t* pages = &page;
  const int32_t n_keys = static_cast<int32_t>(N);
  MlaAttentionArgs a;
  a.n_tokens = 1;
  a.n_heads = H;
  a.q_latent = q_latent.data();
  a.q_rope = q_rope.data();
  a.cache.page_size = N;
  a.cache.kv_rank = R;
  a.cache.rope_dim = P;
  a.cache.pool_bf16 = pool.data();
  a.token_pages = &pages;
  a.n_keys = &n_keys;
  a.scale = 0.07f;
  a.out = out.data();
  std::vector<uint8_t> junk(o.cold ? size_t{64} << 20 : 0, 1);
  uint64_t sink = 0;
  std::vector<double> cycles;
  for (int r = 0; r < o.reps; ++r) {
    for (size_t i = 0; i < junk.size(); i += 64) sink += junk[i]++;
    const uint64_t t0 = __rdtsc();
    be.MlaAttention(a);
    const uint64_t t1 = __rdtsc();
    if (r > 0) cycles.push_back(static_cast<double>(t1 - t0));
  }
  std::sort(cycles.begin(), cycles.end());
  const double median = cycles[cycles.size() / 2];
  const double fmas = static_cast<double>(N) * H * (W + R) / 8.0;
  std::printf("%lld keys, %lld heads, %d thread(s)%s: %.0f k counter cycles a call [%.0f, %.0f]; "
              "%.3f counter cycles per FMA per thread\n",
              static_cast<long long>(N), static_cast<long long>(H), threads, o.cold ? ", cold" : "", median / 1e3,
              cycles.front() / 1e3, cycles.back() / 1e3, median * threads / fmas);
  g_sink = sink;  // keeps the cold reads
  return 0;
}
