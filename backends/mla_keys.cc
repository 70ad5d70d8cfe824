// The default expansion of the keys form of MLA prefill (Backend::ExpandKeys).
#include <cmath>
#include <vector>

#include "backends/backend.h"
#include "runtime/core/parallel_for.h"

namespace moerun {

void Backend::ExpandKeys(const WeightView* uk_t, int64_t H, const float* latents, int64_t ldl, int64_t n, float* out,
                         int64_t out_head_stride) const {
  if (H <= 0 || n <= 0) return;
  const int64_t R = uk_t[0].rows, dk = uk_t[0].cols;
  std::vector<float> u(static_cast<size_t>(R * dk));  // one head's W_UKᵀ, dequantised; may throw bad_alloc
  for (int64_t h = 0; h < H; ++h) {
    for (int64_t r = 0; r < R; ++r)
      for (int64_t d = 0; d < dk; ++d) u[r * dk + d] = uk_t[h].At(r, d);
    float* o = out + h * out_head_stride;
    ParallelFor(n, n * R * dk >= (1 << 18), [&](int64_t j) {
      const float* l = latents + j * ldl;
      for (int64_t d = 0; d < dk; ++d) {
        float acc = 0.0f;
        for (int64_t r = 0; r < R; ++r) acc = std::fma(l[r], u[r * dk + d], acc);
        o[j * dk + d] = acc;
      }
    });
  }
}

}  // namespace moerun
