#include "converters/fp8_quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "runtime/core/dtype.h"
#include "runtime/format/file_format.h"

namespace moerun::convert {

uint8_t F32ToF8E4M3(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  const uint8_t sign = static_cast<uint8_t>((bits >> 24) & 0x80u);
  const uint32_t abs = bits & 0x7fffffffu;
  if (abs > 0x7f800000u) return 0;                 // NaN
  if (abs >= 0x43e00000u) return sign | 0x7eu;     // |x| >= 448 = 1.75 * 2^8, inf included: saturate
  if (abs < 0x3c800000u) {
    // Below the smallest normal 2^-6: e4m3 subnormals m * 2^-9, m = 0..7 (m = 8 is code 0x08, the
    // smallest normal, which is why the code is simply m). |x| * 512 < 8 is exact.
    float a;
    std::memcpy(&a, &abs, 4);
    const float t = a * 512.0f;
    uint32_t m = static_cast<uint32_t>(t);  // floor (t >= 0)
    const float frac = t - static_cast<float>(m);  // exact
    if (frac > 0.5f || (frac == 0.5f && (m & 1u))) ++m;
    return static_cast<uint8_t>(sign | m);
  }
  // Normal: keep 3 of the 23 mantissa bits, round to nearest even; a carry out of the mantissa
  // increments the exponent, which is what rounding up across a binade must do. |x| < 448 keeps the
  // result at or below 0x7e.
  const uint32_t r = abs + 0x7ffffu + ((abs >> 20) & 1u);
  const uint32_t exp = (r >> 23) - (127u - 7u);  // 1..15
  return static_cast<uint8_t>(sign | (exp << 3) | ((r >> 20) & 7u));
}

float Fp8BlockScale(float absmax) {
  if (absmax == 0.0f) return 1.0f;
  const float s = absmax / kF8E4M3Max;
  return s > 0.0f ? s : std::numeric_limits<float>::denorm_min();
}

bool QuantizeFp8BlockRow(const float* w, uint64_t rows, uint64_t cols, uint8_t* q, float* scales) {
  const uint64_t nb = CeilDiv(cols, kFp8BlockSize);
  for (uint64_t b = 0; b < nb; ++b) {
    const uint64_t c0 = b * kFp8BlockSize, c1 = std::min(cols, c0 + kFp8BlockSize);
    float absmax = 0.0f;
    for (uint64_t i = 0; i < rows; ++i) {
      const float* row = w + i * cols;
      for (uint64_t j = c0; j < c1; ++j) {
        if (!std::isfinite(row[j])) return false;
        absmax = std::max(absmax, std::fabs(row[j]));
      }
    }
    const float scale = Fp8BlockScale(absmax);
    scales[b] = scale;
    for (uint64_t i = 0; i < rows; ++i)
      for (uint64_t j = c0; j < c1; ++j) q[i * cols + j] = F32ToF8E4M3(w[i * cols + j] / scale);
  }
  return true;
}

}  // namespace moerun::convert
