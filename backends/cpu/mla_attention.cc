// Absorbed-form MLA attention over the paged latent cache (MODEL_SPEC §4.5):
//   s_j = scale · (q_latent·ĉ_j + q_rope·k^R_j),  out = Σ_j softmax(s)_j ĉ_j.
//
// Work items are tokens with all their heads rather than (token, head) pairs: all heads of a token
// read the same cache rows, so an item walks the keys in blocks that stay in L2 while every head
// uses them, instead of streaming the cache once per head. With fewer tokens than threads (decode)
// each token's keys are split into spans whose softmax partials are merged afterwards, so that the
// threads share the cache reads rather than each streaming all of them. The values path of prefill
// (MlaAttentionArgs::values) is in mla_values.cc. At bf16 precision, where the CPU has AMX-BF16, the
// spans, and units of consecutive tokens of one sequence (their keys converted once), go to the tile
// kernel of mla_latent_amx.cc instead of the f32 kernels here; where it has AVX512_BF16 but no AMX
// (AMD Zen 4 and 5), to the same blocks with vdpbf16ps loops (mla_latent_bf16.cc).
#include "backends/cpu/simd_avx512.h"  // first: see there
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "backends/cpu/cpu_backend_impl.h"
#include "backends/cpu/mla_attention_impl.h"
#include "backends/cpu/q8_kernels.h"
#include "runtime/core/log.h"
#include "runtime/core/parallel_for.h"

namespace moerun::cpu {

namespace {

using mla::g_log_budget;
using mla::Partial;
using mla::TailMask;
using mla::TransposeQueries;

// 64 cache rows of 576 floats = 147 KiB: an L2-resident block reused by every head of the group.
constexpr int64_t kKeyBlock = 64;
constexpr int64_t kMinParallelWork = int64_t{1} << 16;  // multiply-adds
// Decode splits a token's keys into spans of at least this many keys, and at most kMaxSpans spans.
constexpr int64_t kMinKeysPerSpan = 64;
constexpr int64_t kMaxSpans = 16;
// How many keys ahead the accumulation prefetches the rows' slices.
constexpr int64_t kPrefetchKeys = 6;


// Per-thread scratch, grown to the longest sequence seen: the scores of a head group and the cache
// row of every key. On the heap, so long contexts cannot overflow a thread's stack.
struct Scratch {
  std::vector<float> q;             // [heads, W]: q_latent then q_rope, matching a cache row
  std::vector<float> qt;            // AVX-512: [ceil(heads / 16), W, 16], q transposed per head group
  std::vector<float> scores;        // [heads, n] (scalar) or [kKeyBlock, 16] (AVX-512): scores, then
                                    // unnormalised probabilities
  std::vector<const float*> rows;   // [n]
};

// Scores of NK keys for a group of up to 16 heads, one zmm per key (lane = head): the heads' queries
// are stored transposed, qt[c] = q[0..15][c], so each key element is broadcast into one FMA that
// serves all the heads at once, and no horizontal reductions are needed. Two accumulators per key
// hide the FMA latency. Over the columns [c0, c1) only: st[j] = (first ? 0 : st[j]) + qt · k[j].
template <int NK>
__attribute__((target("avx512f,fma"))) void ScoreTile(const float* qt, int64_t c0, int64_t c1, const float* const* k,
                                                       bool first, float* st) {
  __m512 a0[NK], a1[NK];
  const float* kp[NK];
#pragma GCC unroll 8
  for (int j = 0; j < NK; ++j) {
    a0[j] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(st + j * 16);
    a1[j] = _mm512_setzero_ps();
    kp[j] = k[j];
  }
  int64_t c = c0;
  for (; c + 2 <= c1; c += 2) {
    const __m512 q0 = _mm512_loadu_ps(qt + c * 16), q1 = _mm512_loadu_ps(qt + c * 16 + 16);
#pragma GCC unroll 8
    for (int j = 0; j < NK; ++j) a0[j] = _mm512_fmadd_ps(q0, _mm512_set1_ps(kp[j][c]), a0[j]);
#pragma GCC unroll 8
    for (int j = 0; j < NK; ++j) a1[j] = _mm512_fmadd_ps(q1, _mm512_set1_ps(kp[j][c + 1]), a1[j]);
  }
  if (c < c1) {
    const __m512 q0 = _mm512_loadu_ps(qt + c * 16);
#pragma GCC unroll 8
    for (int j = 0; j < NK; ++j) a0[j] = _mm512_fmadd_ps(q0, _mm512_set1_ps(kp[j][c]), a0[j]);
  }
#pragma GCC unroll 8
  for (int j = 0; j < NK; ++j) _mm512_storeu_ps(st + j * 16, _mm512_add_ps(a0[j], a1[j]));
}

// ScoreTile for NK consecutive rows kS floats apart (rows of one page): one pointer with constant
// offsets, so that the broadcast operands need no index register and the FMAs stay micro-fused.
template <int NK, int kS>
__attribute__((target("avx512f,fma"))) void ScoreTileRows(const float* qt, int64_t c0, int64_t c1, const float* k,
                                                           bool first, float* st) {
  __m512 a0[NK], a1[NK];
#pragma GCC unroll 8
  for (int j = 0; j < NK; ++j) {
    a0[j] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(st + j * 16);
    a1[j] = _mm512_setzero_ps();
  }
  const float* kc = k + c0;
  const float* qc = qt + c0 * 16;
  for (int64_t n = (c1 - c0) / 2; n > 0; --n, kc += 2, qc += 32) {
    const __m512 q0 = _mm512_loadu_ps(qc), q1 = _mm512_loadu_ps(qc + 16);
#pragma GCC unroll 8
    for (int j = 0; j < NK; ++j) a0[j] = _mm512_fmadd_ps(q0, _mm512_set1_ps(kc[j * kS]), a0[j]);
#pragma GCC unroll 8
    for (int j = 0; j < NK; ++j) a1[j] = _mm512_fmadd_ps(q1, _mm512_set1_ps(kc[j * kS + 1]), a1[j]);
  }
  if ((c1 - c0) & 1) {
    const __m512 q0 = _mm512_loadu_ps(qc);
#pragma GCC unroll 8
    for (int j = 0; j < NK; ++j) a0[j] = _mm512_fmadd_ps(q0, _mm512_set1_ps(kc[j * kS]), a0[j]);
  }
#pragma GCC unroll 8
  for (int j = 0; j < NK; ++j) _mm512_storeu_ps(st + j * 16, _mm512_add_ps(a0[j], a1[j]));
}

constexpr int kScoreKeys = 8;
// Columns of the cache rows per pass of the score tiles over a key block: the matching 12 KiB of
// the transposed queries stay in L1 while the block's keys stream past them.
constexpr int64_t kScoreColumns = 192;

__attribute__((target("avx512f,fma"))) void ScoreTileK(int nk, const float* qt, int64_t W, int64_t c0, int64_t c1,
                                                        const float* const* k, bool first, float* st) {
  // DeepSeek's cache rows (512 latents + 64 rope dims), keys of one page: the fast form.
  if (nk == kScoreKeys && W == 576) {
    bool contiguous = true;
    for (int j = 1; j < kScoreKeys; ++j) contiguous &= k[j] == k[0] + j * 576;
    if (contiguous) {
      ScoreTileRows<kScoreKeys, 576>(qt, c0, c1, k[0], first, st);
      return;
    }
  }
  switch (nk) {
    case 1: ScoreTile<1>(qt, c0, c1, k, first, st); break;
    case 2: ScoreTile<2>(qt, c0, c1, k, first, st); break;
    case 3: ScoreTile<3>(qt, c0, c1, k, first, st); break;
    case 4: ScoreTile<4>(qt, c0, c1, k, first, st); break;
    case 5: ScoreTile<5>(qt, c0, c1, k, first, st); break;
    case 6: ScoreTile<6>(qt, c0, c1, k, first, st); break;
    case 7: ScoreTile<7>(qt, c0, c1, k, first, st); break;
    default: ScoreTile<kScoreKeys>(qt, c0, c1, k, first, st); break;
  }
}

// out[h, i0 : i0 + 16·NV] += Σ_{0 <= j < nj} p[j·16 + h] · ĉ_j[i0 : ...] for NH heads. The first tile
// of a slice (kPrefetch) brings the slice of the rows a few keys ahead from L2 into L1 for the others.
template <int NH, int NV, bool kPrefetch>
__attribute__((target("avx512f,fma"))) void AccumulateTile(const float* p, int64_t nj, const float* const* rows,
                                                            int64_t i0, __mmask16 m, float* out, int64_t R) {
  __m512 acc[NH][NV];
#pragma GCC unroll 4
  for (int h = 0; h < NH; ++h)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[h][v] = _mm512_maskz_loadu_ps(m, out + h * R + i0 + 16 * v);
  for (int64_t j = 0; j < nj; ++j) {
    __m512 cv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) cv[v] = _mm512_maskz_loadu_ps(m, rows[j] + i0 + 16 * v);
    if (kPrefetch && j + kPrefetchKeys < nj) {
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v)
        _mm_prefetch(reinterpret_cast<const char*>(rows[j + kPrefetchKeys] + i0 + 16 * v), _MM_HINT_T0);
    }
#pragma GCC unroll 4
    for (int h = 0; h < NH; ++h) {
      const __m512 pb = _mm512_set1_ps(p[j * 16 + h]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[h][v] = _mm512_fmadd_ps(pb, cv[v], acc[h][v]);
    }
  }
#pragma GCC unroll 4
  for (int h = 0; h < NH; ++h)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) _mm512_mask_storeu_ps(out + h * R + i0 + 16 * v, m, acc[h][v]);
}

template <int NV>
__attribute__((target("avx512f,fma"))) void AccumulateSlice(int nh, bool prefetch, const float* p, int64_t nj,
                                                             const float* const* rows, int64_t i0, __mmask16 m,
                                                             float* out, int64_t R) {
  switch (nh) {
    case 1: AccumulateTile<1, NV, false>(p, nj, rows, i0, m, out, R); break;
    case 2: AccumulateTile<2, NV, false>(p, nj, rows, i0, m, out, R); break;
    case 3: AccumulateTile<3, NV, false>(p, nj, rows, i0, m, out, R); break;
    default:
      if (prefetch) {
        AccumulateTile<4, NV, true>(p, nj, rows, i0, m, out, R);
      } else {
        AccumulateTile<4, NV, false>(p, nj, rows, i0, m, out, R);
      }
      break;
  }
}

// One pass over the n keys in sc.rows, in L2-sized blocks shared by all heads, with an online
// softmax: per block and group of 16 heads, the scores, then the running max (rescaling what was
// accumulated when it grows), then the probability-weighted latents while the block is still hot.
// sc.qt holds the queries transposed per head group: [groups, W, 16], zero past the last head.
__attribute__((target("avx512f,fma"))) void AttendAvx512(Scratch& sc, int64_t H, int64_t n, int64_t R, int64_t W,
                                                          float scale, const Partial& p) {
  float* st = sc.scores.data();  // [kKeyBlock, 16]
  const float* const* rows = sc.rows.data();
  const __m512 vscale = _mm512_set1_ps(scale);
  std::memset(p.out, 0, static_cast<size_t>(H * R) * sizeof(float));
  for (int64_t g0 = 0; g0 < H; g0 += 16) {
    const __mmask16 mh = TailMask(H - g0);
    _mm512_mask_storeu_ps(p.max + g0, mh, _mm512_set1_ps(-INFINITY));
    _mm512_mask_storeu_ps(p.sum + g0, mh, _mm512_setzero_ps());
  }
  for (int64_t j0 = 0; j0 < n; j0 += kKeyBlock) {
    const int64_t nb = std::min(n - j0, kKeyBlock);
    for (int64_t g0 = 0; g0 < H; g0 += 16) {
      const int gh = static_cast<int>(std::min<int64_t>(16, H - g0));
      const __mmask16 mh = TailMask(gh);
      const float* qt = sc.qt.data() + (g0 / 16) * W * 16;
      for (int64_t c0 = 0; c0 < W; c0 += kScoreColumns)
        for (int64_t j = 0; j < nb; j += kScoreKeys)
          ScoreTileK(static_cast<int>(std::min<int64_t>(kScoreKeys, nb - j)), qt, W, c0,
                     std::min(W, c0 + kScoreColumns), rows + j0 + j, c0 == 0, st + j * 16);
      __m512 bmax = _mm512_set1_ps(-INFINITY);
      for (int64_t j = 0; j < nb; ++j) {
        const __m512 sj = _mm512_mul_ps(vscale, _mm512_loadu_ps(st + j * 16));
        _mm512_storeu_ps(st + j * 16, sj);
        bmax = _mm512_max_ps(bmax, sj);
      }
      const __m512 old_max = _mm512_maskz_loadu_ps(mh, p.max + g0);
      const __m512 new_max = _mm512_max_ps(old_max, bmax);
      __m512 sum = _mm512_maskz_loadu_ps(mh, p.sum + g0);
      if (j0 > 0) {
        const __mmask16 grew = _mm512_mask_cmp_ps_mask(mh, new_max, old_max, _CMP_GT_OQ);
        if (grew) {
          alignas(64) float alpha[16];
          const __m512 a = ExpAvx512(_mm512_sub_ps(old_max, new_max));
          _mm512_store_ps(alpha, a);
          sum = _mm512_mul_ps(sum, a);
          for (int h = 0; h < gh; ++h) {
            if (!((grew >> h) & 1)) continue;
            const __m512 ab = _mm512_set1_ps(alpha[h]);
            float* o = p.out + (g0 + h) * R;
            for (int64_t i = 0; i < R; i += 16) {
              const __mmask16 m = TailMask(R - i);
              _mm512_mask_storeu_ps(o + i, m, _mm512_mul_ps(ab, _mm512_maskz_loadu_ps(m, o + i)));
            }
          }
        }
      }
      for (int64_t j = 0; j < nb; ++j) {
        const __m512 e = ExpAvx512(_mm512_sub_ps(_mm512_loadu_ps(st + j * 16), new_max));
        _mm512_storeu_ps(st + j * 16, e);
        sum = _mm512_add_ps(sum, e);
      }
      _mm512_mask_storeu_ps(p.max + g0, mh, new_max);
      _mm512_mask_storeu_ps(p.sum + g0, mh, sum);
      // Slices of 64 latents outer, so that a slice of the block stays in L1 across the heads.
      float* out = p.out + g0 * R;
      int64_t i0 = 0;
      for (; i0 + 64 <= R; i0 += 64)
        for (int h = 0; h < gh; h += 4)
          AccumulateSlice<4>(std::min(4, gh - h), h == 0, st + h, nb, rows + j0, i0, 0xffff, out + h * R, R);
      for (; i0 < R; i0 += 16)
        for (int h = 0; h < gh; h += 4)
          AccumulateSlice<1>(std::min(4, gh - h), false, st + h, nb, rows + j0, i0, TailMask(R - i0), out + h * R,
                             R);
    }
  }
}

// kRound (bf16 precision): queries, key rows and each probability (relative to this span's max; the
// sum adds the rounded ones) rounded to bf16, as the AMX kernels and the reference backend do.
template <bool kRound>
void AttendScalar(Scratch& sc, int64_t H, int64_t n, int64_t R, int64_t W, float scale, const Partial& p) {
  auto in = [](float v) { return kRound ? mla::RoundBf16(v) : v; };
  if (kRound)
    for (int64_t i = 0; i < H * W; ++i) sc.q[i] = mla::RoundBf16(sc.q[i]);
  for (int64_t h = 0; h < H; ++h) {
    const float* q = sc.q.data() + h * W;
    float* s = sc.scores.data() + h * n;
    float mx = -INFINITY;
    for (int64_t j = 0; j < n; ++j) {
      const float* row = sc.rows[j];
      float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
      for (int64_t i = 0; i < W; ++i) acc += q[i] * in(row[i]);
      s[j] = scale * acc;
      mx = std::max(mx, s[j]);
    }
    float sum = 0.0f;
    for (int64_t j = 0; j < n; ++j) sum += (s[j] = in(std::exp(s[j] - mx)));
    p.max[h] = mx;
    p.sum[h] = sum;
    float* o = p.out + h * R;
    std::fill(o, o + R, 0.0f);
    for (int64_t j = 0; j < n; ++j) {
      const float* row = sc.rows[j];
      const float e = s[j];
#pragma omp simd
      for (int64_t i = 0; i < R; ++i) o[i] += e * in(row[i]);
    }
  }
}

// Which kernel the latent path runs.
enum class Kernel { kScalar, kAvx2, kAvx512, kAmxBf16, kDpBf16 };

// Keys [j0, j1) of token t, all heads; round: bf16 precision's rounded inputs (the scalar and AVX2
// kernels; AMX and AVX512_BF16 always round, AVX-512 never). False when scratch could not be allocated (logged).
bool AttendKeys(const MlaAttentionArgs& a, int64_t t, int64_t j0, int64_t j1, Kernel kernel, bool round,
                const Partial& p) {
  const int64_t R = a.cache.kv_rank, P = a.cache.rope_dim, W = R + P, H = a.n_heads, n = j1 - j0;
  if (n <= 0) {
    std::fill(p.out, p.out + H * R, 0.0f);
    std::fill(p.max, p.max + H, -INFINITY);
    std::fill(p.sum, p.sum + H, 0.0f);
    return true;
  }
  if (kernel == Kernel::kAmxBf16) return mla::amx::AttendLatent(a, t, j0, j1, p);
  if (kernel == Kernel::kDpBf16) return mla::dpbf16::AttendLatent(a, t, j0, j1, p);
  if (kernel == Kernel::kAvx2) return mla::avx2::AttendLatent(a, t, j0, j1, round, p);
  const bool avx = kernel == Kernel::kAvx512;
  thread_local Scratch sc;
  try {
    const size_t n_scores = static_cast<size_t>(avx ? kKeyBlock * 16 : H * n);
    if (avx) {
      sc.qt.resize(static_cast<size_t>((H + 15) / 16 * W * 16));
    } else {
      sc.q.resize(static_cast<size_t>(H * W));
    }
    if (sc.scores.size() < n_scores) sc.scores.resize(n_scores);
    if (sc.rows.size() < static_cast<size_t>(n)) sc.rows.resize(static_cast<size_t>(n));
  } catch (const std::exception&) {
    mla::LogScratchFailure("cpu backend: MlaAttention", n);
    return false;
  }
  const int32_t* pages = a.token_pages[t];
  for (int64_t j = 0; j < n; ++j) sc.rows[j] = a.cache.Row(pages, j0 + j);
  if (avx) {
    TransposeQueries(a.q_latent + t * H * R, a.q_rope + t * H * P, H, R, P, sc.qt.data());
    AttendAvx512(sc, H, n, R, W, a.scale, p);
  } else {
    for (int64_t h = 0; h < H; ++h) {
      std::memcpy(sc.q.data() + h * W, a.q_latent + (t * H + h) * R, static_cast<size_t>(R) * sizeof(float));
      std::memcpy(sc.q.data() + h * W + R, a.q_rope + (t * H + h) * P, static_cast<size_t>(P) * sizeof(float));
    }
    if (round) {
      AttendScalar<true>(sc, H, n, R, W, a.scale, p);
    } else {
      AttendScalar<false>(sc, H, n, R, W, a.scale, p);
    }
  }
  return true;
}

// A whole token's (or head group's) unnormalised sums divided by their softmax denominators.
void Normalize(const Partial& p, int64_t heads, int64_t R) {
  for (int64_t h = 0; h < heads; ++h) {
    const float sum = p.sum[h];
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;  // no keys: zero, not 0/0
    for (int64_t c = 0; c < R; ++c) p.out[h * R + c] *= inv;
  }
}

// out[h] = Σ_c e^(max_c - M) out_c / Σ_c e^(max_c - M) sum_c over the spans c of one token.
void Merge(const Partial* spans, int64_t n_spans, int64_t h, int64_t R, float* out) {
  float M = -INFINITY;
  for (int64_t c = 0; c < n_spans; ++c) M = std::max(M, spans[c].max[h]);
  float total = 0.0f;
  std::fill(out, out + R, 0.0f);
  if (M == -INFINITY) return;  // no keys: zero rather than the 0/0 of an empty softmax
  for (int64_t c = 0; c < n_spans; ++c) {
    const float f = std::exp(spans[c].max[h] - M);
    total += f * spans[c].sum[h];
    const float* o = spans[c].out + h * R;
    for (int64_t i = 0; i < R; ++i) out[i] += f * o[i];
  }
  const float inv = 1.0f / total;
  for (int64_t i = 0; i < R; ++i) out[i] *= inv;
}

}  // namespace

void mla::LogScratchFailure(const char* what, int64_t keys) noexcept {
  if (g_log_budget.fetch_sub(1) <= 0) return;
  try {
    Log(LogLevel::kError, std::string(what) + " out of memory for " + std::to_string(keys) + " keys");
  } catch (...) {  // the message itself could not be built: dropped
  }
}

void mla::LogError(const char* message) noexcept {
  if (g_log_budget.fetch_sub(1) <= 0) return;
  try {
    Log(LogLevel::kError, message);
  } catch (...) {
  }
}

bool CpuBackend::AmxAttention() const {
  return precision_ == Precision::kBF16 && features_.avx512 && q8::DetectSupport().amx_bf16;
}

namespace {

// Rows [16p, 16p + 16) of the Q8_PANEL matrix w into out [w.rows, w.cols]: (byte − 128) · scale, as
// WeightView::At, walking the panel's quads in order instead of indexing each element.
void DequantizePanel(const WeightView& w, int64_t p, float* out) {
  const int64_t K = w.cols, G = q8::Groups(K), rows = std::min(q8::kPanelRows, w.rows - p * q8::kPanelRows);
  const uint8_t* panel = static_cast<const uint8_t*>(w.data) + p * q8::PanelBytes(K);
  float* o = out + p * q8::kPanelRows * K;
  for (int64_t j = 0; j < q8::Quads(K); ++j) {
    const uint8_t* quad = panel + j * q8::kQuadBytes;
    const float* s = w.scale + (p * G + j * q8::kQuadCols / q8::kGroupCols) * q8::kPanelRows;
    const int64_t c0 = j * q8::kQuadCols, n = std::min(q8::kQuadCols, K - c0);
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t b = 0; b < n; ++b)
        o[i * K + c0 + b] = static_cast<float>(static_cast<int>(quad[i * q8::kQuadCols + b]) - 128) * s[i];
  }
}

}  // namespace

// The keys form's expansion: per head, W_UKᵀ dequantised once (rows split between the threads), then
// tiles of keys split between them on the AVX-512 or AVX2 kernel (the default's bits); without AVX2
// the default.
void CpuBackend::ExpandKeys(const WeightView* uk_t, int64_t H, const float* latents, int64_t ldl, int64_t n,
                            float* out, int64_t out_head_stride) const {
  if (!features_.avx2) {
    Backend::ExpandKeys(uk_t, H, latents, ldl, n, out, out_head_stride);
    return;
  }
  if (H <= 0 || n <= 0) return;
  const int64_t R = uk_t[0].rows, dk = uk_t[0].cols;
  thread_local std::vector<float> u;
  u.resize(static_cast<size_t>(R * dk));  // may throw bad_alloc
  float* up = u.data();
  const int64_t tiles = (n + mla::avx2::kExpandRows - 1) / mla::avx2::kExpandRows;
  const bool parallel = n * R * dk >= (int64_t{1} << 18);
  for (int64_t h = 0; h < H; ++h) {
    const WeightView& w = uk_t[h];
    if (w.dtype == DType::kQ8Panel) {  // WeightView::At's values, a panel of 16 rows at a time
      ParallelFor(q8::Panels(R), parallel, [&](int64_t p) { DequantizePanel(w, p, up); });
    } else {
      ParallelFor(R, parallel, [&](int64_t r) {
        for (int64_t d = 0; d < dk; ++d) up[r * dk + d] = w.At(r, d);
      });
    }
    float* o = out + h * out_head_stride;
    ParallelFor(tiles, parallel, [&](int64_t i) {
      const int64_t j0 = i * mla::avx2::kExpandRows, rows = std::min(mla::avx2::kExpandRows, n - j0);
      (features_.avx512 ? mla::avx512k::ExpandKeysRows : mla::avx2::ExpandKeysRows)(up, R, dk, latents + j0 * ldl,
                                                                                  ldl, rows, o + j0 * dk);
    });
  }
}

void CpuBackend::MlaAttention(const MlaAttentionArgs& a) const {
  const LatentCacheView& c = a.cache;
  if (a.n_tokens <= 0 || a.n_heads <= 0) return;
  // The keys form reads q_nope and the expanded keys instead of q_latent, and only on the values path.
  const bool queries = a.keys ? a.q_nope && a.values && a.k_dim > 0 : a.q_latent != nullptr;
  if (!queries || !a.out || !a.token_pages || !a.n_keys || (!c.pool) == (!c.pool_bf16) || c.page_size <= 0 ||
      c.kv_rank <= 0 || c.rope_dim < 0 || (c.rope_dim > 0 && !a.q_rope)) {
    if (g_log_budget.fetch_sub(1) > 0) Log(LogLevel::kError, "cpu backend: MlaAttention called with invalid arguments");
    return;
  }
  // Only the AMX-BF16, AVX512_BF16 and AVX2 kernels at bf16 precision read bf16 rows (Bf16LatentCache).
  if (c.bf16() && !Bf16LatentCache()) {
    if (g_log_budget.fetch_sub(1) > 0)
      Log(LogLevel::kError,
          "cpu backend: MlaAttention got a bf16 latent cache, which only its AMX-BF16, AVX512_BF16 and AVX2 kernels "
          "read at bf16 precision");
    return;
  }
  const int64_t T = a.n_tokens, H = a.n_heads, R = c.kv_rank;
  if (a.values && a.v_dim <= 0) {
    if (g_log_budget.fetch_sub(1) > 0) Log(LogLevel::kError, "cpu backend: MlaAttention called with v_dim <= 0");
    return;
  }
  int64_t keys = 0, most = 0;
  for (int64_t t = 0; t < T; ++t) {
    keys += std::max<int32_t>(a.n_keys[t], 0);
    most = std::max<int64_t>(most, a.n_keys[t]);
  }
  const bool parallel = keys * H * (c.row_width() + (a.values ? a.v_dim : R)) >= kMinParallelWork;
  const int64_t threads = parallel ? omp_get_max_threads() : 1;
  // bf16 precision rounds the attention's matmul inputs (queries, keys, values, probabilities) on
  // every CPU, as the reference backend does: AMX-BF16 tile products where there are some, else on
  // the latent path the AVX512_BF16 loops where there are those, else the AVX2 kernels (also on
  // AVX-512 without AMX-BF16: the AVX-512 kernels do not round) or the scalar ones. f32 precision is
  // exact: the AVX-512, AVX2 or scalar kernels.
  const bool bf16 = precision_ == Precision::kBF16;
  const bool avx512 = features_.avx512 && !bf16;
  if (a.values) {
    if (AmxAttention() && !a.keys) {  // the keys form: the AVX2 kernel rounds the same inputs
      mla::amx::AttendValues(a, parallel);
    } else {
      mla::AttendValues(a, avx512, features_.avx2, features_.avx512, bf16, parallel);
    }
    return;
  }
  // Few tokens (decode): split each token's keys into spans, so that the threads share the reads of
  // its cache rows instead of each streaming all of them, and merge the spans' softmax afterwards.
  int64_t spans = T >= 2 * threads ? 1
                                    : std::clamp<int64_t>((2 * threads + T - 1) / T, 1,
                                                          std::clamp<int64_t>(most / kMinKeysPerSpan, 1, kMaxSpans));
  // Whole rounds: T·spans a multiple of the threads where there are more items than threads (three
  // spans on two threads left one thread a span behind the other).
  while (spans > 1 && T * spans > threads && (T * spans) % threads != 0) --spans;
  const Kernel kernel = AmxAttention()                                           ? Kernel::kAmxBf16
                        : bf16 && features_.avx512 && q8::DetectSupport().avx512_bf16 ? Kernel::kDpBf16
                        : avx512                                                 ? Kernel::kAvx512
                        : features_.avx2                                         ? Kernel::kAvx2
                                                                                 : Kernel::kScalar;
  const bool units_of_tokens = kernel == Kernel::kAmxBf16 || kernel == Kernel::kDpBf16;
  // Fewer tokens than threads over too few keys to split (a short context): the threads take groups
  // of heads instead, each reading all of its token's keys (few rows) and nothing to merge. Groups of
  // whole register groups of heads (8 in the AVX2 kernel, 16 lanes in the AVX-512 one); the tile
  // kernels take all heads of a token together. Before, a decode step under 128 keys ran its
  // attention on one thread while the other waited: on the Zen 1 host (AVX2, 2 threads, V2-Lite's 16
  // heads) the attention took 90-101 us a layer below 64 keys and 155-164 at 64-126, now 57-67 and 97-126;
  // moerun_decode_ab over 16-116 keys: 0.989-0.990 of the time (and 1.005-1.008 the other way round).
  const int64_t head_align = kernel == Kernel::kAvx2 ? 8 : kernel == Kernel::kAvx512 ? 16 : 1;
  const int64_t head_groups = spans == 1 && !units_of_tokens && parallel && T < threads
                                  ? std::max<int64_t>(1, std::min(threads / T, H / head_align))
                                  : 1;
  // Tokens whose scratch could not be allocated inside the parallel regions, where nothing may be
  // thrown: reported as std::bad_alloc after them (the session turns it into out of memory).
  std::vector<uint8_t> failed(static_cast<size_t>(T), 0);
  std::vector<float> partial;  // spans > 1: per (token, span) out [H, R], max [H], sum [H]
  if (spans > 1) partial.resize(static_cast<size_t>(T * spans * H * (R + 2)));
  if (head_groups > 1) {
    const int64_t P = c.rope_dim, aligned = (H + head_align - 1) / head_align;
    std::vector<float> stats(static_cast<size_t>(2 * T * H));  // per token: max [H], sum [H]
#pragma omp parallel for schedule(static)
    for (int64_t item = 0; item < T * head_groups; ++item) {
      const int64_t t = item / head_groups, g = item % head_groups;
      const int64_t h0 = std::min(H, aligned * g / head_groups * head_align);
      const int64_t h1 = std::min(H, aligned * (g + 1) / head_groups * head_align);
      if (h1 <= h0) continue;
      // Token t's heads [h0, h1) as a one-token call of their own.
      MlaAttentionArgs b = a;
      b.n_tokens = 1;
      b.n_heads = h1 - h0;
      b.q_latent = a.q_latent + (t * H + h0) * R;
      b.q_rope = a.q_rope + (t * H + h0) * P;
      b.token_pages = a.token_pages + t;
      b.n_keys = a.n_keys + t;
      const Partial part{a.out + (t * H + h0) * R, stats.data() + 2 * t * H + h0, stats.data() + 2 * t * H + H + h0};
      if (!AttendKeys(b, 0, 0, a.n_keys[t], kernel, bf16, part)) {
        std::atomic_ref<uint8_t>(failed[t]).store(1, std::memory_order_relaxed);  // groups share t
        continue;
      }
      Normalize(part, h1 - h0, R);
    }
  } else if (spans == 1) {
    // Units of consecutive tokens with one page table: the AMX and AVX512_BF16 kernels read and
    // convert their keys once for all of them (a chunk at long context); the others take a token at a
    // time.
    const int64_t per = units_of_tokens ? mla::amx::LatentUnitTokens(H, (T + threads - 1) / threads) : 1;
    std::vector<int64_t> begins;  // each unit's first token, then T
    for (int64_t t = 0; t < T; ++t)
      if (t == 0 || a.token_pages[t] != a.token_pages[t - 1] || t - begins.back() >= per) begins.push_back(t);
    begins.push_back(T);
    const int64_t units = static_cast<int64_t>(begins.size()) - 1;
#pragma omp parallel for schedule(dynamic, 1) if (parallel && units > 1)
    for (int64_t u = 0; u < units; ++u) {
      const int64_t t0 = begins[u], nt = begins[u + 1] - t0;
      thread_local std::vector<float> stats;  // per token: max [H], sum [H]
      Partial parts[mla::amx::kMaxUnitTokens];
      bool done = false;
      try {
        stats.resize(static_cast<size_t>(2 * H * nt));
        for (int64_t i = 0; i < nt; ++i)
          parts[i] = Partial{a.out + (t0 + i) * H * R, stats.data() + 2 * H * i, stats.data() + 2 * H * i + H};
        done = nt == 1                        ? AttendKeys(a, t0, 0, a.n_keys[t0], kernel, bf16, parts[0])
               : kernel == Kernel::kAmxBf16 ? mla::amx::AttendLatentTokens(a, t0, nt, parts)
                                            : mla::dpbf16::AttendLatentTokens(a, t0, nt, parts);
      } catch (const std::exception&) {
      }
      if (!done) {
        for (int64_t i = 0; i < nt; ++i) failed[t0 + i] = 1;
        continue;
      }
      for (int64_t i = 0; i < nt; ++i) Normalize(parts[i], H, R);
    }
  } else {
    auto span = [&](int64_t item) {
      float* base = partial.data() + item * H * (R + 2);
      return Partial{base, base + H * R, base + H * R + H};
    };
#pragma omp parallel for schedule(dynamic, 1) if (parallel)
    for (int64_t item = 0; item < T * spans; ++item) {
      const int64_t t = item / spans, sp = item % spans, n = std::max<int32_t>(a.n_keys[t], 0);
      if (!AttendKeys(a, t, n * sp / spans, n * (sp + 1) / spans, kernel, bf16, span(item)))
        std::atomic_ref<uint8_t>(failed[t]).store(1, std::memory_order_relaxed);  // spans share t
    }
#pragma omp parallel for schedule(static) if (parallel && T * H > 1)
    for (int64_t th = 0; th < T * H; ++th) {
      const int64_t t = th / H, h = th % H;
      Partial spans_of_t[kMaxSpans];
      for (int64_t sp = 0; sp < spans; ++sp) spans_of_t[sp] = span(t * spans + sp);
      Merge(spans_of_t, spans, h, R, a.out + th * R);
    }
  }
  for (int64_t t = 0; t < T; ++t)
    if (failed[t]) throw std::bad_alloc();
}

}  // namespace moerun::cpu
