#include "converters/q8_pack.h"

#include <cmath>
#include <cstring>

#include "runtime/core/q8_panel.h"

namespace moerun::convert {

bool PackQ8Panels(const float* w, uint64_t rows, uint64_t cols, uint8_t* panels, float* scales) {
  const int64_t R = static_cast<int64_t>(rows), C = static_cast<int64_t>(cols);
  const int64_t groups = q8::Groups(C);
  std::memset(panels, 128, static_cast<size_t>(q8::MatrixBytes(R, C)));
  std::memset(scales, 0, static_cast<size_t>(q8::MatrixScales(R, C)) * sizeof(float));
  for (int64_t r = 0; r < R; ++r) {
    const float* row = w + r * C;
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t c0 = g * q8::kGroupCols, c1 = C < c0 + q8::kGroupCols ? C : c0 + q8::kGroupCols;
      float absmax = 0.0f;
      for (int64_t c = c0; c < c1; ++c) {
        if (!std::isfinite(row[c])) return false;
        absmax = std::fmax(absmax, std::fabs(row[c]));
      }
      const float s = absmax / 127.0f;
      scales[q8::ScaleIndex(r, c0, C)] = s;
      if (s == 0.0f) continue;  // bytes already 128 (q = 0)
      for (int64_t c = c0; c < c1; ++c) {
        const float q = std::fmin(127.0f, std::fmax(-127.0f, std::nearbyint(row[c] / s)));
        panels[q8::ByteIndex(r, c, C)] = static_cast<uint8_t>(static_cast<int>(q) + 128);
      }
    }
  }
  return true;
}

}  // namespace moerun::convert
