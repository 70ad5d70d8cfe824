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
// chain limits it; the broadcast ones read one 4-byte word of L1 again and again), run N times
// (default 5); the lines give the median, min and max over the runs of
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

// Counter cycles for n iterations of body (12 instructions or instruction pairs each), built for
// isa; %1 points at a zeroed 64-byte word for the loops that read memory. (VEX-encoded vpxor on
// the xmm registers zeroes the whole zmm.)
#define MOERUN_LOOP_FOR(name, isa, body)                                                                 \
  __attribute__((target(isa), noinline)) uint64_t name(int64_t n) {                                     \
    alignas(64) static const int32_t mem[16] = {};                                                       \
    const uint64_t t = __rdtsc();                                                                        \
    __asm__ volatile(                                                                                    \
        "vpxor %%xmm13, %%xmm13, %%xmm13\n\tvpxor %%xmm14, %%xmm14, %%xmm14\n\t"                         \
        "vpxor %%xmm15, %%xmm15, %%xmm15\n\t1:\n\t" body "dec %0\n\tjnz 1b\n\tvzeroupper\n\t"           \
        : "+r"(n)                                                                                        \
        : "r"(mem)                                                                                       \
        : "cc", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",  \
          "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");                                         \
    return __rdtsc() - t;                                                                                \
  }
// The AVX-512 kernels' instructions on zmm registers (CPUs with AVX-512 VNNI and BF16): one product
// each, then a broadcast from memory feeding two products (the VNNI kernel's 8 x 2 tile issues one
// per two), and the broadcast folded into each product ({1to16}).
#define MOERUN_FMA512(i) "vfmadd231ps %%zmm15, %%zmm14, %%zmm" #i "\n\t"
#define MOERUN_DPBUSD(i) "vpdpbusd %%zmm15, %%zmm14, %%zmm" #i "\n\t"
#define MOERUN_DPBF16(i) "vdpbf16ps %%zmm15, %%zmm14, %%zmm" #i "\n\t"
#define MOERUN_DPBUSD_FOLDED(i) "vpdpbusd (%1)%{1to16%}, %%zmm14, %%zmm" #i "\n\t"
#define MOERUN_BCAST_2DP(i, j) "vpbroadcastd (%1), %%zmm13\n\tvpdpbusd %%zmm13, %%zmm14, %%zmm" #i "\n\t" \
                               "vpdpbusd %%zmm13, %%zmm15, %%zmm" #j "\n\t"
#define MOERUN_REP6(OP) OP(0, 1) OP(2, 3) OP(4, 5) OP(6, 7) OP(8, 9) OP(10, 11)

// Every loop: X(function, ISA, body, what it measures, needs AVX-512 VNNI and BF16).
#define MOERUN_AVX512 "avx512f,avx512vnni,avx512bf16"
#define MOERUN_KINDS(X)                                                                                  \
  X(Fma, "avx2,fma", MOERUN_REP12(MOERUN_FMA), "vfmadd231ps (8 f32 multiply-adds)", false)               \
  X(Maddubs, "avx2,fma", MOERUN_REP12(MOERUN_MADDUBS), "vpmaddubsw (32 u8 x s8 products, pairs summed)", false) \
  X(Maddwd, "avx2,fma", MOERUN_REP12(MOERUN_MADDWD), "vpmaddwd (16 s16 x s16 products, pairs summed)", false)  \
  X(MaddwdAdd, "avx2,fma", MOERUN_REP12(MOERUN_MADDWD_ADD), "vpmaddwd + vpaddd, per pair (16 multiply-adds)",   \
    false)                                                                                               \
  X(Paddd, "avx2,fma", MOERUN_REP12(MOERUN_PADDD), "vpaddd", false)                                       \
  X(Fma512, MOERUN_AVX512, MOERUN_REP12(MOERUN_FMA512), "vfmadd231ps zmm (16 f32 multiply-adds)", true)   \
  X(Dpbusd, MOERUN_AVX512, MOERUN_REP12(MOERUN_DPBUSD), "vpdpbusd zmm (64 u8 x s8 products, 16 sums)", true)   \
  X(Dpbf16, MOERUN_AVX512, MOERUN_REP12(MOERUN_DPBF16), "vdpbf16ps zmm (32 bf16 products, 16 sums)", true)     \
  X(DpbusdFolded, MOERUN_AVX512, MOERUN_REP12(MOERUN_DPBUSD_FOLDED), "vpdpbusd zmm, broadcast folded in",      \
    true)                                                                                                \
  X(Bcast2Dp, MOERUN_AVX512, MOERUN_REP6(MOERUN_BCAST_2DP), "vpbroadcastd + 2 vpdpbusd, per vpdpbusd", true)

#define MOERUN_DEFINE(fn, isa, body, what, avx512) MOERUN_LOOP_FOR(fn, isa, body)
MOERUN_KINDS(MOERUN_DEFINE)

struct Kind {
  const char* name;
  uint64_t (*loop)(int64_t);
  bool avx512;  // needs AVX-512 F, VNNI and BF16
};
#define MOERUN_ENTRY(fn, isa, body, what, avx512) {what, fn, avx512},
constexpr Kind kKinds[] = {MOERUN_KINDS(MOERUN_ENTRY)};

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
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vnni") &&
                      __builtin_cpu_supports("avx512bf16");
  for (const Kind& k : kKinds) {
    if (k.avx512 && !avx512) continue;
    std::vector<double> c;
    for (int r = 0; r < reps; ++r) c.push_back(static_cast<double>(k.loop(kIterations)) / (12.0 * kIterations));
    std::sort(c.begin(), c.end());
    std::printf("  %-48s %.3f [%.3f, %.3f]\n", k.name, c[c.size() / 2], c.front(), c.back());
  }
  return 0;
}
