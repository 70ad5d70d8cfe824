#include "backends/reference/reference_backend.h"

namespace moerun::reference {

void ReferenceBackend::Linear(const WeightView& w, const float* x, int64_t ldx, int64_t M, float* y,
                              int64_t ldy) const {
  const bool bf16 = precision_ == Precision::kBF16;
  auto round = [bf16](float v) { return bf16 ? Bf16ToF32(F32ToBf16(v)) : v; };
  for (int64_t m = 0; m < M; ++m) {
    const float* xm = x + m * ldx;
    for (int64_t r = 0; r < w.rows; ++r) {
      double acc = 0.0;
      for (int64_t c = 0; c < w.cols; ++c) acc += static_cast<double>(round(w.At(r, c))) * round(xm[c]);
      y[m * ldy + r] = static_cast<float>(acc);
    }
  }
}

}  // namespace moerun::reference
