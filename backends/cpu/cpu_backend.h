// CPU backend: oneDNN matmul primitives (cached per shape) for f32 and bf16 GEMM, own AVX-512
// kernels where oneDNN has nothing (bf16/f16/FP8 weights widened in registers for the f32 path),
// OpenMP threads for every op; without AVX-512, AVX2 kernels (int8 linear, MLA attention, SiluMul)
// and scalar fallbacks for the rest.
#pragma once

#include <memory>

#include "backends/backend.h"

namespace moerun::cpu {

Result<std::unique_ptr<Backend>> CreateCpuBackend(Precision precision);

}  // namespace moerun::cpu
