// The CPU backend's factory and its view of the machine.
#include <cpuid.h>

#include <new>

#include "backends/cpu/cpu_backend.h"
#include "backends/cpu/cpu_backend_impl.h"
#include "runtime/core/log.h"

namespace moerun::cpu {

CpuFeatures CpuFeatures::Detect() {
  CpuFeatures f;
  __builtin_cpu_init();
  // The own kernels use AVX-512 F/BW/VL for loads, masks and byte compares, F16C-class conversions
  // (part of AVX-512 F for zmm) and FMA. AVX512_BF16 is not needed: products of bf16 values are exact
  // in f32, so widened FMAs give the same numbers as vdpbf16ps (oneDNN uses it on its own).
  // clang < 15 rejects "f16c" in __builtin_cpu_supports (the fuzz build uses clang 14): ask CPUID.
  unsigned eax, ebx, ecx, edx;
  const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C);
  f.avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma") && f16c;
  f.avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  f.onednn = true;
  return f;
}

Result<std::unique_ptr<Backend>> CreateCpuBackend(Precision precision) {
  if (precision != Precision::kF32 && precision != Precision::kBF16) {
    return InvalidArgument("cpu backend: unknown precision " + std::to_string(static_cast<int>(precision)));
  }
  const CpuFeatures features = CpuFeatures::Detect();
  std::unique_ptr<Backend> backend;
  try {
    backend.reset(new (std::nothrow) CpuBackend(precision, features));
  } catch (const std::bad_alloc&) {  // from the constructor (the oneDNN state)
  }
  if (!backend) return OutOfMemory("creating the cpu backend");
  if (!features.avx512)
    Log(LogLevel::kInfo, features.avx2 ? "cpu backend: no AVX-512; int8 matmuls and attention on AVX2, other kernels scalar"
                                       : "cpu backend: no AVX-512 or AVX2; using scalar kernels");
  return backend;
}

}  // namespace moerun::cpu
