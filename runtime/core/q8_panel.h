// Q8_PANEL: the 1-byte CPU weight format. A linear weight [N rows (out), K cols (in)] is quantised per
// row in groups of 128 columns (symmetric int8, q = round_half_even(w / s), |q| <= 127,
// s = absmax(group) / 127, s = 0 for an all-zero group) and stored in the layout that AVX512-VNNI
// (vpdpbusd) and AMX (B tiles) consume directly, so loading is an mmap and nothing is repacked:
//
//   data:  ceil(N/16) panels of 16 rows; panel p holds rows 16p..16p+15. A panel is ceil(K/4) quads
//          of 64 bytes; quad j holds columns 4j..4j+3 of the panel's 16 rows, row i's four bytes at
//          offset 4i (column 4j+b at 4i+b). Each byte is q + 128 (offset binary, i.e. the int8 XOR
//          0x80), so it is the unsigned operand of vpdpbusd; padding rows/columns hold 128 (q = 0).
//   scale: f32 [ceil(N/16), ceil(K/128), 16]: the scale of row r, group g at
//          ((r/16) * groups + g) * 16 + r%16; padding rows have scale 0.
//
// Dequantised value: w[r, c] = (byte - 128) * scale[r, c/128].
// Stacked weights ([E, N, K]) repeat this per matrix: data E * PanelBytes, scale E * PanelScales.
#pragma once

#include <cmath>
#include <cstdint>

namespace moerun::q8 {

inline constexpr int64_t kPanelRows = 16;
inline constexpr int64_t kQuadCols = 4;
inline constexpr int64_t kGroupCols = 128;
inline constexpr int64_t kQuadBytes = kPanelRows * kQuadCols;  // 64: one zmm

inline int64_t Panels(int64_t rows) { return (rows + kPanelRows - 1) / kPanelRows; }
inline int64_t Quads(int64_t cols) { return (cols + kQuadCols - 1) / kQuadCols; }
inline int64_t Groups(int64_t cols) { return (cols + kGroupCols - 1) / kGroupCols; }
// Bytes of one panel (16 rows × all columns, padded to whole quads).
inline int64_t PanelBytes(int64_t cols) { return Quads(cols) * kQuadBytes; }
// Data bytes and scale floats of one [rows, cols] matrix.
inline int64_t MatrixBytes(int64_t rows, int64_t cols) { return Panels(rows) * PanelBytes(cols); }
inline int64_t MatrixScales(int64_t rows, int64_t cols) { return Panels(rows) * Groups(cols) * kPanelRows; }

inline int64_t ByteIndex(int64_t r, int64_t c, int64_t cols) {
  return (r / kPanelRows) * PanelBytes(cols) + (c / kQuadCols) * kQuadBytes + (r % kPanelRows) * kQuadCols +
         c % kQuadCols;
}
inline int64_t ScaleIndex(int64_t r, int64_t c, int64_t cols) {
  return ((r / kPanelRows) * Groups(cols) + c / kGroupCols) * kPanelRows + r % kPanelRows;
}
inline float Dequant(const uint8_t* data, const float* scale, int64_t r, int64_t c, int64_t cols) {
  return static_cast<float>(static_cast<int>(data[ByteIndex(r, c, cols)]) - 128) * scale[ScaleIndex(r, c, cols)];
}

// The activation side of the int8 path (bf16 precision with q8_panel weights): row x[0:cols] is
// quantised per 128-column group g with a = max|x| over the group: q = round_half_even(x · (127/a)),
// clamped to ±127, scale xs[g] = a/127 (a = 0: q = 0, xs = 0); xsum[g] = Σ q, which removes the +128
// of the weight bytes from the integer dot product. q holds Quads(cols)·4 values, zero-padded.
// A layer's output is then y[r] = Σ_g float(Σ_c q_w·q_x) · (sw[r, g] · xs[g]), accumulated with
// fused multiply-adds in group order; the kernels reproduce these steps exactly.
inline void QuantizeRow(const float* x, int64_t cols, int8_t* q, float* xs, int32_t* xsum) {
  for (int64_t g = 0; g < Groups(cols); ++g) {
    const int64_t c0 = g * kGroupCols, c1 = cols < c0 + kGroupCols ? cols : c0 + kGroupCols;
    // NaN never becomes the maximum (the comparison vmaxps makes with the running maximum second).
    float a = 0.0f;
    for (int64_t c = c0; c < c1; ++c) a = std::fabs(x[c]) > a ? std::fabs(x[c]) : a;
    const float inv = a > 0.0f ? 127.0f / a : 0.0f;
    int32_t sum = 0;
    for (int64_t c = c0; c < c1; ++c) {
      const float v = x[c] * inv;
      // NaN (x = ±inf, or inv = inf for a subnormal maximum) quantises to 0.
      const float r = v != v ? 0.0f : std::nearbyint(v);
      q[c] = static_cast<int8_t>(r > 127.0f ? 127.0f : (r < -127.0f ? -127.0f : r));
      sum += q[c];
    }
    xs[g] = a / 127.0f;
    xsum[g] = sum;
  }
  for (int64_t c = cols; c < Quads(cols) * kQuadCols; ++c) q[c] = 0;
}

}  // namespace moerun::q8
