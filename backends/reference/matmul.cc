#include <algorithm>
#include <vector>

#include "backends/reference/reference_backend.h"

namespace moerun::reference {

namespace {

// bf16 precision with q8_panel weights: the int8 activation path of runtime/core/q8_panel.h, with the
// group sums in exact integers and the scaling in double.
void LinearQ8Activations(const WeightView& w, const float* x, int64_t ldx, int64_t M, float* y, int64_t ldy) {
  const int64_t G = q8::Groups(w.cols);
  std::vector<int8_t> q(static_cast<size_t>(q8::Quads(w.cols) * q8::kQuadCols));
  std::vector<float> xs(static_cast<size_t>(G));
  std::vector<int32_t> xsum(static_cast<size_t>(G));
  const uint8_t* data = static_cast<const uint8_t*>(w.data);
  for (int64_t m = 0; m < M; ++m) {
    q8::QuantizeRow(x + m * ldx, w.cols, q.data(), xs.data(), xsum.data());
    for (int64_t r = 0; r < w.rows; ++r) {
      double acc = 0.0;
      for (int64_t g = 0; g < G; ++g) {
        int64_t dot = 0;
        for (int64_t c = g * q8::kGroupCols; c < std::min(w.cols, (g + 1) * q8::kGroupCols); ++c)
          dot += (static_cast<int64_t>(data[q8::ByteIndex(r, c, w.cols)]) - 128) * q[c];
        acc += static_cast<double>(dot) * w.scale[q8::ScaleIndex(r, g * q8::kGroupCols, w.cols)] * xs[g];
      }
      y[m * ldy + r] = static_cast<float>(acc);
    }
  }
}

}  // namespace

void ReferenceBackend::Linear(const WeightView& w, const float* x, int64_t ldx, int64_t M, float* y,
                              int64_t ldy) const {
  const bool bf16 = precision_ == Precision::kBF16;
  if (bf16 && w.dtype == DType::kQ8Panel) {
    LinearQ8Activations(w, x, ldx, M, y, ldy);
    return;
  }
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
