// moerun_pipe_rates: how many time-stamp-counter cycles one vector instruction takes when a core does
// nothing else, for the instructions the CPU kernels are built from. docs/performance.md turns the
// attention kernels' counter cycles into fractions of the FMA peak with these figures: cores that
// boost above the counter's rate retire more than two FMAs per counter cycle, so a peak assumed at
// the counter's rate overstates how close a kernel is to it.
//
//   moerun_pipe_rates [--reps N]      (x86-64 with AVX2 and FMA; run one copy per core to see the
//                                      rates with all cores busy)
//
// Each loop is inline assembly over registers only (12 independent accumulators, so no dependency
// chain limits it), run N times (default 5); the lines give the median, min and max over the runs of
// counter cycles per instruction of the kind named. Written in assembly because compilers spill
// such loops' accumulators through memory, which measures store forwarding instead.
#include <x86intrin.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace {

#define MOERUN_REP12(OP) OP(0) OP(1) OP(2) OP(3) OP(4) OP(5) OP(6) OP(7) OP(8) OP(9) OP(10) OP(11)
#define MOERUN_FMA(i) "vfmadd231ps %%ymm15, %%ymm14, %%ymm" #i "\n\t"
#define MOERUN_MADDUBS(i) "vpmaddubsw %%ymm15, %%ymm" #i ", %%ymm" #i "\n\t"
#define MOERUN_MADDWD(i) "vpmaddwd %%ymm15, %%ymm" #i ", %%ymm" #i "\n\t"
#define MOERUN_MADDWD_ADD(i) "vpmaddwd %%ymm15, %%ymm14, %%ymm13\n\tvpaddd %%ymm13, %%ymm" #i ", %%ymm" #i "\n\t"
#define MOERUN_PADDD(i) "vpaddd %%ymm15, %%ymm" #i ", %%ymm" #i "\n\t"

// Counter cycles for n iterations of body (12 instructions or instruction pairs each).
#define MOERUN_LOOP(name, body)                                                                          \
  __attribute__((target("avx2,fma"), noinline)) uint64_t name(int64_t n) {                              \
    const uint64_t t = __rdtsc();                                                                        \
    __asm__ volatile(                                                                                    \
        "vpxor %%xmm13, %%xmm13, %%xmm13\n\tvpxor %%xmm14, %%xmm14, %%xmm14\n\t"                         \
        "vpxor %%xmm15, %%xmm15, %%xmm15\n\t1:\n\t" body "dec %0\n\tjnz 1b\n\tvzeroupper\n\t"           \
        : "+r"(n)                                                                                        \
        :                                                                                                \
        : "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", \
          "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");                                                  \
    return __rdtsc() - t;                                                                                \
  }

MOERUN_LOOP(Fma, MOERUN_REP12(MOERUN_FMA))
MOERUN_LOOP(Maddubs, MOERUN_REP12(MOERUN_MADDUBS))
MOERUN_LOOP(Maddwd, MOERUN_REP12(MOERUN_MADDWD))
MOERUN_LOOP(MaddwdAdd, MOERUN_REP12(MOERUN_MADDWD_ADD))
MOERUN_LOOP(Paddd, MOERUN_REP12(MOERUN_PADDD))

struct Kind {
  const char* name;
  uint64_t (*loop)(int64_t);
};
constexpr Kind kKinds[] = {
    {"vfmadd231ps (8 f32 multiply-adds)", Fma},
    {"vpmaddubsw (32 u8 x s8 products, pairs summed)", Maddubs},
    {"vpmaddwd (16 s16 x s16 products, pairs summed)", Maddwd},
    {"vpmaddwd + vpaddd, per pair (16 multiply-adds)", MaddwdAdd},
    {"vpaddd", Paddd},
};

int Usage(const char* why) {
  std::fprintf(stderr, "moerun_pipe_rates: %s\nusage: moerun_pipe_rates [--reps N]  (N from 1 to 1000)\n", why);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 5;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--reps") != 0 || i + 1 >= argc) return Usage("unknown or incomplete option");
    char* end = nullptr;
    const long v = std::strtol(argv[++i], &end, 10);
    if (*end != '\0' || v < 1 || v > 1000) return Usage("--reps needs a number from 1 to 1000");
    reps = static_cast<int>(v);
  }
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) {
    std::fprintf(stderr, "moerun_pipe_rates: this CPU lacks AVX2 or FMA, which every loop here uses\n");
    return 1;
  }
  constexpr int64_t kIterations = 20'000'000;
  std::printf("counter cycles per instruction, median [min, max] of %d runs of %lld x 12:\n", reps,
              static_cast<long long>(kIterations));
  for (const Kind& k : kKinds) {
    std::vector<double> c;
    for (int r = 0; r < reps; ++r) c.push_back(static_cast<double>(k.loop(kIterations)) / (12.0 * kIterations));
    std::sort(c.begin(), c.end());
    std::printf("  %-48s %.3f [%.3f, %.3f]\n", k.name, c[c.size() / 2], c.front(), c.back());
  }
  return 0;
}
