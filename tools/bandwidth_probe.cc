#include "tools/bandwidth_probe.h"

#include <immintrin.h>
#include <omp.h>
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace moerun::cli {
namespace {

double Now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// Sums 64-byte lines with four independent AVX-512 accumulators so the loads, not the adds, bound it.
__attribute__((target("avx512f"))) uint64_t SumAvx512(const uint8_t* p, size_t bytes) {
  __m512i a0 = _mm512_set1_epi64(0), a1 = a0, a2 = a0, a3 = a0;
  for (size_t i = 0; i + 256 <= bytes; i += 256) {
    a0 = _mm512_add_epi64(a0, _mm512_load_si512(p + i));
    a1 = _mm512_add_epi64(a1, _mm512_load_si512(p + i + 64));
    a2 = _mm512_add_epi64(a2, _mm512_load_si512(p + i + 128));
    a3 = _mm512_add_epi64(a3, _mm512_load_si512(p + i + 192));
  }
  alignas(64) uint64_t lanes[8];
  _mm512_store_si512(lanes, _mm512_add_epi64(_mm512_add_epi64(a0, a1), _mm512_add_epi64(a2, a3)));
  uint64_t s = 0;
  for (uint64_t v : lanes) s += v;
  return s;
}

__attribute__((target("avx2"))) uint64_t SumAvx2(const uint8_t* p, size_t bytes) {
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
  for (size_t i = 0; i + 128 <= bytes; i += 128) {
    a0 = _mm256_add_epi64(a0, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i)));
    a1 = _mm256_add_epi64(a1, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 32)));
    a2 = _mm256_add_epi64(a2, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 64)));
    a3 = _mm256_add_epi64(a3, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 96)));
  }
  alignas(32) uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3)));
  return lanes[0] + lanes[1] + lanes[2] + lanes[3];
}

uint64_t SumScalar(const uint8_t* p, size_t bytes) {
  uint64_t s[4] = {0, 0, 0, 0};
  for (size_t i = 0; i + 32 <= bytes; i += 32)
    for (int k = 0; k < 4; ++k) {
      uint64_t v;
      std::memcpy(&v, p + i + 8 * k, 8);
      s[k] += v;
    }
  return s[0] + s[1] + s[2] + s[3];
}

}  // namespace

ReadProbe::ReadProbe(int threads, size_t bytes) : threads_(std::max(threads, 1)) {
  // 2 MiB pages, as the model's weights get (runtime/format/model_file.cc): through 4 KiB pages the
  // same reads ran ~20% slower on the AMD EPYC host, which would understate the floor.
  constexpr size_t kHuge = size_t{2} << 20;
  bytes = (bytes + kHuge - 1) / kHuge * kHuge;
  buf_ = static_cast<uint8_t*>(std::aligned_alloc(kHuge, bytes));
  if (!buf_) return;
#if defined(MADV_HUGEPAGE)
  (void)madvise(buf_, bytes, MADV_HUGEPAGE);  // before the first touch below
#endif
  slice_ = bytes / threads_ / 4096 * 4096;
#pragma omp parallel num_threads(threads_)
  std::memset(buf_ + omp_get_thread_num() * slice_, 1, slice_);  // first touch by the reading thread
}

ReadProbe::~ReadProbe() { std::free(buf_); }

double ReadProbe::Pass() {
  if (!buf_) return 0.0;
  static uint64_t (*const sum)(const uint8_t*, size_t) = __builtin_cpu_supports("avx512f") ? SumAvx512
                                                         : __builtin_cpu_supports("avx2")  ? SumAvx2
                                                                                            : SumScalar;
  uint64_t total = 0;
  const double t0 = Now();
#pragma omp parallel num_threads(threads_) reduction(+ : total)
  total += sum(buf_ + omp_get_thread_num() * slice_, slice_);
  const double dt = Now() - t0;
  sink_ += total;  // kept, so that the sums are not optimised away
  return static_cast<double>(slice_) * threads_ / dt;
}

double ReadBandwidth(int threads, size_t bytes, double* median_pass) {
  ReadProbe probe(threads, bytes);
  if (!probe.ok()) {
    if (median_pass) *median_pass = 0.0;
    return 0.0;
  }
  double rates[kReadPasses];
  for (double& r : rates) r = probe.Pass();
  std::sort(rates, rates + kReadPasses);
  if (median_pass) *median_pass = rates[kReadPasses / 2];
  return rates[kReadPasses - 1];
}

}  // namespace moerun::cli
