// FP8 (float8_e4m3fn) weight quantisation for `--weights fp8`: f32 → e4m3fn conversion and the
// 128x128 block quantiser DeepSeek uses for its FP8 checkpoints (MODEL_SPEC §3). Converter-only;
// the runtime only ever dequantises (runtime/core/dtype.h F8E4M3ToF32).
#pragma once

#include <cstdint>

namespace moerun::convert {

// Largest finite float8_e4m3fn value (code 0x7e / 0xfe).
inline constexpr float kF8E4M3Max = 448.0f;

// float32 → float8_e4m3fn, round to nearest, ties to even; saturating: every |x| > 448, ±inf
// included, becomes ±448 (0x7e / 0xfe), so no NaN code (0x7f / 0xff) is ever produced. Values below
// the smallest subnormal (2^-9) round to ±0 (a tie at 2^-10 goes to the even code, 0); the sign of
// zero is kept. NaN input gives +0 (callers reject non-finite weights before converting).
uint8_t F32ToF8E4M3(float x);

// Block scale for a block whose largest magnitude is `absmax` (finite, >= 0): absmax / 448, so the
// block's extreme element maps to ±448. An all-zero block gets scale 1 (every code is then ±0, which
// dequantises to exactly 0); a block so small that absmax / 448 underflows to 0 gets the smallest
// positive f32 instead, so the scale is never 0.
float Fp8BlockScale(float absmax);

// Quantises `rows` (1..128) rows of a row-major f32 matrix with `cols` columns — one row of
// 128x128 blocks, the last block possibly narrower and/or shorter — into e4m3fn codes `q`
// (rows x cols) and f32 block scales `scales` (ceil(cols / 128) of them):
//   scales[b] = Fp8BlockScale(max |w| over block b),  q[i, j] = F32ToF8E4M3(w[i, j] / scales[j / 128]).
// Returns false (leaving the outputs unspecified) if any value is not finite.
bool QuantizeFp8BlockRow(const float* w, uint64_t rows, uint64_t cols, uint8_t* q, float* scales);

}  // namespace moerun::convert
