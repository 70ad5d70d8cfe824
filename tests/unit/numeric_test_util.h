// Small numeric helpers shared by the unit tests: relative L2 error and random vectors.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <random>
#include <vector>

namespace moerun::test {

// ||got - want|| / ||want|| in double (0 / 0 reads as 0).
inline double RelL2(const float* got, const float* want, size_t n) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(got[i]) - want[i];
    num += d * d;
    den += static_cast<double>(want[i]) * want[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}
inline double RelL2(const std::vector<float>& got, const std::vector<float>& want) {
  return RelL2(got.data(), want.data(), want.size());
}

// n values drawn from N(0, sd²).
inline std::vector<float> RandomVector(size_t n, std::mt19937& rng, float sd = 1.0f) {
  std::normal_distribution<float> dist(0.0f, sd);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

}  // namespace moerun::test
