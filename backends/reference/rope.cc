#include <cmath>

#include "backends/reference/reference_backend.h"

namespace moerun::reference {

void ReferenceBackend::Rope(float* x, int64_t T, int64_t n_vec, int64_t stride_token, int64_t stride_vec,
                            const int32_t* positions, const float* inv_freq, int64_t half,
                            float attention_factor) const {
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t i = 0; i < half; ++i) {
      const float angle = static_cast<float>(positions[t]) * inv_freq[i];  // fp32, as transformers
      const float c = std::cos(angle) * attention_factor;
      const float s = std::sin(angle) * attention_factor;
      for (int64_t v = 0; v < n_vec; ++v) {
        float* p = x + t * stride_token + v * stride_vec + 2 * i;
        const float a = p[0], b = p[1];
        p[0] = a * c - b * s;
        p[1] = a * s + b * c;
      }
    }
  }
}

}  // namespace moerun::reference
