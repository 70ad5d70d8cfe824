// GEMM-peak probes: the floor prefill is judged against, measured in the same process with oneDNN
// (which uses AMX or AVX-512 as the machine allows) at a prefill-like shape.
#pragma once

namespace moerun::cli {

// Operations per second (2·M·N·K per GEMM; best of several runs) of 512x2048x2048 matmuls on
// `threads` threads, the faster of one matmul over all of them and one single-threaded matmul per
// thread at once: bf16 inputs with f32 output, and u8 x s8 inputs with s32 output. 0 when oneDNN
// cannot create the primitive.
double GemmPeakBf16(int threads);
double GemmPeakInt8(int threads);

}  // namespace moerun::cli
