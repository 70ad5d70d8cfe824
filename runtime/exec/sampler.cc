#include "runtime/exec/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

namespace moerun {
namespace {

uint64_t SplitMix64(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

}  // namespace

Status Sampler::Validate(const SamplerParams& p) {
  if (!std::isfinite(p.temperature) || p.temperature < 0.0f)
    return InvalidArgument("sampler: temperature must be finite and >= 0, got " + std::to_string(p.temperature));
  if (p.top_k < 0) return InvalidArgument("sampler: top_k must be >= 0, got " + std::to_string(p.top_k));
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f))
    return InvalidArgument("sampler: top_p must be in (0, 1], got " + std::to_string(p.top_p));
  if (!(p.min_p >= 0.0f && p.min_p < 1.0f))
    return InvalidArgument("sampler: min_p must be in [0, 1), got " + std::to_string(p.min_p));
  return Status::Ok();
}

Sampler::Sampler(const SamplerParams& p) : p_(p) {
  uint64_t x = p.seed;
  for (uint64_t& s : s_) s = SplitMix64(x);
}

double Sampler::NextUniform() {
  const uint64_t result = Rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = Rotl(s_[3], 45);
  return static_cast<double>(result >> 11) * 0x1.0p-53;
}

int32_t Sampler::Argmax(const float* logits, int64_t n) {
  // The largest logit that is not NaN, then the lowest id holding it (0 when every logit is NaN).
  // Eight running maxima, so that the first pass is a vector max (x > m ? x : m keeps m for a NaN);
  // over V2-Lite's 102400 logits this took 50 us on the AMD EPYC host, where a loop carrying the
  // best index (and a NaN test) through every comparison took 450 us, ~1.5% of a decode step.
  constexpr int kLanes = 8;
  float lane[kLanes];
  std::fill(lane, lane + kLanes, -std::numeric_limits<float>::infinity());
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int k = 0; k < kLanes; ++k) lane[k] = logits[i + k] > lane[k] ? logits[i + k] : lane[k];
  float m = -std::numeric_limits<float>::infinity();
  for (int k = 0; k < kLanes; ++k) m = lane[k] > m ? lane[k] : m;
  for (; i < n; ++i) m = logits[i] > m ? logits[i] : m;
  for (int64_t j = 0; j < n; ++j)
    if (logits[j] == m) return static_cast<int32_t>(j);
  return 0;
}

int32_t Sampler::Sample(const float* logits, int64_t n) {
  if (p_.temperature <= 0.0f) return Argmax(logits, n);
  candidates_.clear();
  for (int64_t i = 0; i < n; ++i)
    if (!std::isnan(logits[i])) candidates_.emplace_back(logits[i], static_cast<int32_t>(i));
  if (candidates_.empty()) return 0;
  auto by_logit = [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
  size_t keep = candidates_.size();
  if (p_.top_k > 0 && static_cast<size_t>(p_.top_k) < keep) {
    keep = static_cast<size_t>(p_.top_k);
    std::partial_sort(candidates_.begin(), candidates_.begin() + keep, candidates_.end(), by_logit);
    candidates_.resize(keep);
  } else {
    std::sort(candidates_.begin(), candidates_.end(), by_logit);
  }
  // Softmax over the survivors at this temperature, in double.
  const double mx = candidates_[0].first;
  std::vector<double> prob(candidates_.size());
  double sum = 0.0;
  for (size_t i = 0; i < candidates_.size(); ++i)
    sum += (prob[i] = std::exp((static_cast<double>(candidates_[i].first) - mx) / p_.temperature));
  for (double& v : prob) v /= sum;
  size_t n_keep = candidates_.size();
  if (p_.min_p > 0.0f) {
    const double floor = p_.min_p * prob[0];
    n_keep = 1;
    while (n_keep < candidates_.size() && prob[n_keep] >= floor) ++n_keep;
  }
  if (p_.top_p < 1.0f) {
    double cum = 0.0;
    size_t i = 0;
    while (i < n_keep) {
      cum += prob[i++];
      if (cum >= p_.top_p) break;
    }
    n_keep = i;
  }
  double total = 0.0;
  for (size_t i = 0; i < n_keep; ++i) total += prob[i];
  const double u = NextUniform() * total;
  double cum = 0.0;
  for (size_t i = 0; i < n_keep; ++i) {
    cum += prob[i];
    if (u < cum) return candidates_[i].second;
  }
  return candidates_[n_keep - 1].second;
}

}  // namespace moerun
