// Sampler: greedy, temperature, top-k, top-p and min-p with a seeded generator. The generator is
// specified here (xoshiro256** seeded by splitmix64) rather than taken from <random>, so the same
// seed gives the same tokens on every platform and compiler.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "runtime/core/status.h"

namespace moerun {

struct SamplerParams {
  float temperature = 0.0f;  // <= 0: greedy
  int32_t top_k = 0;         // 0: off
  float top_p = 1.0f;        // 1: off
  float min_p = 0.0f;        // 0: off
  uint64_t seed = 0;
};

class Sampler {
 public:
  static Status Validate(const SamplerParams& p);
  explicit Sampler(const SamplerParams& p);

  // Picks a token from logits[0, n). n > 0.
  int32_t Sample(const float* logits, int64_t n);

  static int32_t Argmax(const float* logits, int64_t n);

 private:
  double NextUniform();  // [0, 1)
  SamplerParams p_;
  uint64_t s_[4];
  std::vector<std::pair<float, int32_t>> candidates_;
};

}  // namespace moerun
