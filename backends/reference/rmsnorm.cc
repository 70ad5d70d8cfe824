#include <cmath>

#include "backends/reference/reference_backend.h"

namespace moerun::reference {

void ReferenceBackend::RmsNorm(const float* x, int64_t ldx, const float* w, int64_t n, int64_t M, float eps, float* y,
                               int64_t ldy) const {
  for (int64_t m = 0; m < M; ++m) {
    const float* xm = x + m * ldx;
    double ss = 0.0;
    for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(xm[i]) * xm[i];
    const float inv = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(n) + eps));
    for (int64_t i = 0; i < n; ++i) y[m * ldy + i] = w[i] * (xm[i] * inv);
  }
}

}  // namespace moerun::reference
