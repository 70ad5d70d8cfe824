// CPU backend: oneDNN matmul primitives (cached per shape) for f32 and bf16 GEMM, own AVX-512
// kernels where oneDNN has nothing (bf16/f16/FP8 weights widened in registers for the f32 path),
// OpenMP threads for every op, and scalar fallbacks when AVX-512 is absent.
#pragma once

#include <memory>

#include "backends/backend.h"

namespace moerun::cpu {

Result<std::unique_ptr<Backend>> CreateCpuBackend(Precision precision);

}  // namespace moerun::cpu
