// Reference backend: plain scalar C++, double accumulation, no threads. Slow and obviously right;
// the oracle for the conformance tests of every other backend. With Precision::kBF16 it rounds
// matmul inputs and weights to bf16 first, as the bf16 compute path does.
#pragma once

#include "backends/backend.h"

namespace moerun::reference {

class ReferenceBackend final : public Backend {
 public:
  explicit ReferenceBackend(Precision p) : precision_(p) {}
  const char* name() const override { return "reference"; }
  Precision precision() const override { return precision_; }
  void Linear(const WeightView& w, const float* x, int64_t ldx, int64_t M, float* y, int64_t ldy) const override;
  void RmsNorm(const float* x, int64_t ldx, const float* w, int64_t n, int64_t M, float eps, float* y,
               int64_t ldy) const override;
  void Rope(float* x, int64_t T, int64_t n_vec, int64_t stride_token, int64_t stride_vec, const int32_t* positions,
            const float* inv_freq, int64_t half, float attention_factor) const override;
  void SiluMul(const float* gate, const float* up, float* out, int64_t n) const override;
  void MlaAttention(const MlaAttentionArgs& args) const override;

 private:
  Precision precision_;
};

}  // namespace moerun::reference
