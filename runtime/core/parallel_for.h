// Parallel loops that cost nothing when they run on one thread. An OpenMP region whose if clause is
// false still goes through libgomp (~0.5 us a call on the AMD EPYC host), and a V2-Lite decode step
// made ~450 of them (the activation quantisation of every small matrix, SwiGLU, norms, RoPE, the
// residual adds): ~1% of the step.
#pragma once

#include <cstdint>

namespace moerun {

// body(i) for i in [0, n): split statically between the threads when parallel (and n > 1), else in
// order on the calling thread without entering OpenMP.
template <typename Body>
inline void ParallelFor(int64_t n, bool parallel, Body&& body) {
  if (parallel && n > 1) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) body(i);
    return;
  }
  for (int64_t i = 0; i < n; ++i) body(i);
}

}  // namespace moerun
