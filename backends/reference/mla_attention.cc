#include <cmath>
#include <vector>

#include "backends/reference/reference_backend.h"
#include "runtime/core/dtype.h"

namespace moerun::reference {

void ReferenceBackend::MlaAttention(const MlaAttentionArgs& a) const {
  const int64_t R = a.cache.kv_rank, P = a.cache.rope_dim;
  // bf16 precision rounds attention's matmul inputs, as the CPU backend does on both paths: queries,
  // key rows (and the expanded keys of the keys form) and value rows (the latents on the latent path)
  // to bf16, and each probability (relative to its row's maximum) to bf16 before the weighted sum,
  // whose denominator adds up the rounded probabilities.
  const bool bf16 = precision_ == Precision::kBF16;
  auto in = [bf16](double v) { return bf16 ? static_cast<double>(Bf16ToF32(F32ToBf16(static_cast<float>(v)))) : v; };
  std::vector<double> scores;
  std::vector<float> rows;  // token t's cache rows as f32 (the cache may hold f32 or bf16 rows)
  const int64_t W = a.cache.row_width();
  for (int64_t t = 0; t < a.n_tokens; ++t) {
    const int64_t n = a.n_keys[t];
    scores.assign(static_cast<size_t>(n), 0.0);
    rows.resize(static_cast<size_t>(n * W));
    for (int64_t j = 0; j < n; ++j) a.cache.CopyRow(a.token_pages[t], j, W, rows.data() + j * W);
    for (int64_t h = 0; h < a.n_heads; ++h) {
      const float* qr = a.q_rope + (t * a.n_heads + h) * P;
      double mx = -INFINITY;
      for (int64_t j = 0; j < n; ++j) {
        const float* row = rows.data() + j * W;
        double s = 0.0;
        if (a.keys) {  // keys form: q^N · K[j, h]
          const int64_t dk = a.k_dim;
          const float* qn = a.q_nope + (t * a.n_heads + h) * dk;
          const float* k = a.keys[t] + h * a.k_head_stride + j * dk;
          for (int64_t i = 0; i < dk; ++i) s += in(qn[i]) * in(k[i]);
        } else {
          const float* ql = a.q_latent + (t * a.n_heads + h) * R;
          for (int64_t i = 0; i < R; ++i) s += in(ql[i]) * in(row[i]);
        }
        for (int64_t i = 0; i < P; ++i) s += in(qr[i]) * in(row[R + i]);
        scores[j] = s * a.scale;
        mx = std::max(mx, scores[j]);
      }
      double sum = 0.0;
      for (int64_t j = 0; j < n; ++j) sum += (scores[j] = in(std::exp(scores[j] - mx)));
      if (a.values) {  // values path
        const int64_t dv = a.v_dim;
        float* o = a.out + (t * a.n_heads + h) * dv;
        for (int64_t i = 0; i < dv; ++i) {
          double acc = 0.0;
          for (int64_t j = 0; j < n; ++j) acc += scores[j] * in(a.values[t][h * a.v_head_stride + j * dv + i]);
          o[i] = sum > 0.0 ? static_cast<float>(acc / sum) : 0.0f;  // no keys: zero, as the CPU backend
        }
        continue;
      }
      float* o = a.out + (t * a.n_heads + h) * R;
      for (int64_t i = 0; i < R; ++i) {
        double acc = 0.0;
        for (int64_t j = 0; j < n; ++j) acc += scores[j] * in(rows[j * W + i]);
        o[i] = sum > 0.0 ? static_cast<float>(acc / sum) : 0.0f;
      }
    }
  }
}

}  // namespace moerun::reference
