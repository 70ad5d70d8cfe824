// The default routed-experts op (Backend::MoeExperts) and the scheduling every backend shares.
#include <omp.h>

#include <cstring>

#include "backends/backend.h"
#include "runtime/core/parallel_errors.h"

namespace moerun {

void Backend::ForEachExpert(int64_t n_active, const std::function<void(int64_t)>& run_expert) const {
  if (n_active >= 2 * omp_get_max_threads()) {
    ParallelErrors errors;
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t i = 0; i < n_active; ++i) {
      if (!errors.failed()) errors.Capture([&] { run_expert(i); });
    }
    errors.Rethrow();
  } else {
    for (int64_t i = 0; i < n_active; ++i) run_expert(i);
  }
}

void Backend::RunSharedMlp(const MoeExpertsArgs& a) const {
  if (!a.shared || a.T <= 0) return;
  const SharedMlpArgs& m = *a.shared;
  const WeightView w[2] = {m.gate, m.up};
  float* const y[2] = {m.g, m.u};
  const int64_t ldy[2] = {m.I, m.I};
  LinearSameInput(w, 2, a.x, a.D, a.T, y, ldy);
  SiluMul(m.g, m.u, m.g, a.T * m.I);
  Linear(m.down, m.g, m.I, a.T, m.y, a.D);
}

void Backend::MoeExperts(const MoeExpertsArgs& a) const {
  RunSharedMlp(a);
  const int64_t D = a.D, I = a.I;
  int64_t S = 0;
  for (int64_t i = 0; i < a.n_active; ++i) S += a.count[i];
#pragma omp parallel for schedule(static) if (S * D >= (1 << 16))
  for (int64_t s = 0; s < S; ++s) std::memcpy(a.gathered + s * D, a.x + a.slot_token[s] * D, D * sizeof(float));
  ForEachExpert(a.n_active, [&](int64_t i) {
    const int64_t o = a.begin[i], m = a.count[i];
    const WeightView w[2] = {a.gate[i], a.up[i]};
    float* const y[2] = {a.g + o * I, a.u + o * I};
    const int64_t ldy[2] = {I, I};
    LinearSameInput(w, 2, a.gathered + o * D, D, m, y, ldy);
    SiluMul(a.g + o * I, a.u + o * I, a.g + o * I, m * I);
    Linear(a.down[i], a.g + o * I, I, m, a.y + o * D, D);
  });
}

}  // namespace moerun
