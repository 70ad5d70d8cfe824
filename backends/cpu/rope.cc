// Rope: interleaved-pair rotary embedding in place, angle = float(position) · inv_freq[i] in fp32
// with cos/sin scaled by attention_factor (as transformers computes it).
#include "backends/cpu/simd_avx512.h"  // first: see there

#include <omp.h>

#include <atomic>
#include <cmath>
#include <new>
#include <vector>

#include "backends/cpu/cpu_backend_impl.h"

namespace moerun::cpu {

namespace {

constexpr int64_t kMinParallel = int64_t{1} << 14;  // rotated pairs

// cs[2i] = cs[2i+1] = cos, sn[2i] = -sin, sn[2i+1] = sin, so that for lanes (a, b) of a pair
// x·cs + swap(x)·sn = (a·c - b·s, b·c + a·s).
void Angles(int32_t position, const float* inv_freq, int64_t half, float attention_factor, float* cs, float* sn) {
  for (int64_t i = 0; i < half; ++i) {
    const float angle = static_cast<float>(position) * inv_freq[i];
    const float c = std::cos(angle) * attention_factor;
    const float s = std::sin(angle) * attention_factor;
    cs[2 * i] = cs[2 * i + 1] = c;
    sn[2 * i] = -s;
    sn[2 * i + 1] = s;
  }
}

__attribute__((target("avx512f"))) void RotateAvx512(float* p, const float* cs, const float* sn, int64_t n) {
  for (int64_t k = 0; k < n; k += 16) {
    const __mmask16 m = n - k >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << (n - k)) - 1u);
    const __m512 v = _mm512_maskz_loadu_ps(m, p + k);
    const __m512 swapped = _mm512_permute_ps(v, 0xB1);  // (b, a) in every pair
    const __m512 r = _mm512_add_ps(_mm512_mul_ps(v, _mm512_maskz_loadu_ps(m, cs + k)),
                                   _mm512_mul_ps(swapped, _mm512_maskz_loadu_ps(m, sn + k)));
    _mm512_mask_storeu_ps(p + k, m, r);
  }
}

void RotateScalar(float* p, const float* cs, const float* sn, int64_t n) {
  for (int64_t k = 0; k < n; k += 2) {
    const float a = p[k], b = p[k + 1];
    p[k] = a * cs[k] + b * sn[k];
    p[k + 1] = b * cs[k + 1] + a * sn[k + 1];
  }
}

}  // namespace

void CpuBackend::Rope(float* x, int64_t T, int64_t n_vec, int64_t stride_token, int64_t stride_vec,
                      const int32_t* positions, const float* inv_freq, int64_t half, float attention_factor) const {
  if (T <= 0 || n_vec <= 0 || half <= 0 || !x || !positions || !inv_freq) return;
  const bool avx = features_.avx512;
  const int64_t n = 2 * half;
  std::atomic<bool> no_table{false};  // thrown as std::bad_alloc after the region
  // Tokens [t0, t1) with one angle table: each thread's contiguous share in a region when there is
  // enough work, else all of them on the calling thread without entering OpenMP (no orphaned
  // worksharing, so a caller inside a parallel region still rotates every token).
  auto work = [&](int64_t t0, int64_t t1) {
    // Head sizes are far below kStackPairs; larger ones get a heap table.
    constexpr int64_t kStackPairs = 256;
    float stack_table[4 * kStackPairs];
    std::vector<float> heap_table;
    float* cs = stack_table;
    if (half > kStackPairs) {
      try {
        heap_table.resize(static_cast<size_t>(2 * n));
        cs = heap_table.data();
      } catch (const std::exception&) {
        cs = nullptr;
        no_table.store(true, std::memory_order_relaxed);
      }
    }
    float* sn = cs ? cs + n : nullptr;
    for (int64_t t = t0; t < t1; ++t) {
      if (!cs) continue;
      Angles(positions[t], inv_freq, half, attention_factor, cs, sn);
      for (int64_t v = 0; v < n_vec; ++v) {
        float* p = x + t * stride_token + v * stride_vec;
        if (avx) {
          RotateAvx512(p, cs, sn, n);
        } else {
          RotateScalar(p, cs, sn, n);
        }
      }
    }
  };
  if (T * n_vec * half >= kMinParallel && T > 1) {
#pragma omp parallel
    {
      const int64_t id = omp_get_thread_num(), nt = omp_get_num_threads();
      work(T * id / nt, T * (id + 1) / nt);
    }
  } else {
    work(0, T);
  }
  if (no_table.load(std::memory_order_relaxed)) throw std::bad_alloc();
}

}  // namespace moerun::cpu
