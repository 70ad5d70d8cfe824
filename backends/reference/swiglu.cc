#include <cmath>

#include "backends/reference/reference_backend.h"

namespace moerun::reference {

void ReferenceBackend::SiluMul(const float* gate, const float* up, float* out, int64_t n) const {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

}  // namespace moerun::reference
