// Q8_PANEL test weights built straight from the format's definition (runtime/core/q8_panel.h), for
// the kernel tests and the backend tests that run them.
#pragma once

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "backends/backend.h"
#include "runtime/core/q8_panel.h"

namespace moerun::test {

using ::moerun::q8::ByteIndex;
using ::moerun::q8::Groups;
using ::moerun::q8::MatrixBytes;
using ::moerun::q8::MatrixScales;
using ::moerun::q8::ScaleIndex;

// A weight as int8 values and per-group scales (row-major, the semantics) and as Q8_PANEL bytes.
struct Q8Weight {
  int64_t N = 0, K = 0;
  std::vector<int8_t> q;    // [N, K]
  std::vector<float> s;     // [N, Groups(K)]
  std::vector<uint8_t> data;
  std::vector<float> scale;
  WeightView view() const {
    WeightView w;
    w.dtype = DType::kQ8Panel;
    w.scale_cols = Groups(K);
    w.data = data.data();
    w.rows = N;
    w.cols = K;
    w.scale = scale.data();
    return w;
  }
  float At(int64_t r, int64_t c) const { return static_cast<float>(q[r * K + c]) * s[r * Groups(K) + c / 128]; }
};

// Panels straight from the definition: bytes q + 128 at ByteIndex, scales at ScaleIndex, padding
// rows and columns q = 0, padding scales 0.
inline void Pack(Q8Weight& w) {
  const int64_t G = Groups(w.K);
  w.data.assign(MatrixBytes(w.N, w.K), 128);
  w.scale.assign(MatrixScales(w.N, w.K), 0.0f);
  for (int64_t r = 0; r < w.N; ++r) {
    for (int64_t c = 0; c < w.K; ++c)
      w.data[ByteIndex(r, c, w.K)] = static_cast<uint8_t>(w.q[r * w.K + c] + 128);
    for (int64_t g = 0; g < G; ++g) w.scale[ScaleIndex(r, g * 128, w.K)] = w.s[r * G + g];
  }
}

// Random int8 values over the whole range, with an all-zero group now and then.
inline Q8Weight RandomWeight(int64_t N, int64_t K, std::mt19937& rng) {
  Q8Weight w;
  w.N = N;
  w.K = K;
  const int64_t G = Groups(K);
  std::uniform_int_distribution<int> qd(-127, 127);
  std::uniform_real_distribution<float> sd(1e-3f, 2e-2f);
  w.q.resize(N * K);
  for (int8_t& v : w.q) v = static_cast<int8_t>(qd(rng));
  w.s.resize(N * G);
  for (float& v : w.s) v = sd(rng);
  for (int64_t r = 3; r < N; r += 7)
    for (int64_t c = 0; c < std::min<int64_t>(K, 128); ++c) w.q[r * K + c] = 0;
  Pack(w);
  return w;
}

}  // namespace moerun::test
