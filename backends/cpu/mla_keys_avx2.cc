// The scores of the keys form of MLA prefill on AVX2 + FMA (MlaAttentionArgs::keys): per head, the
// tile's no-rope queries against the head's expanded keys K[j, h] (k_dim columns) and its rope queries
// against the keys' rope parts (rope_dim columns of the cache rows), k_dim + rope_dim multiply-adds a
// score instead of the absorbed form's kv_rank + rope_dim (192 instead of 576 for DeepSeek). The
// rest of the tile (online softmax, the weighted sum of the value rows) is the values path's
// (mla_attention_avx2.cc).
//
// The tile's tokens lie in the lanes: the queries are stored transposed per head ([column][token],
// kKeyLanes tokens a column), each key element is broadcast into one FMA per 8 tokens, and a
// register tile holds up to 24 tokens × 4 keys (12 accumulators; 16 tokens × 6 keys, 8 × 12). So a
// token's score is one chain of FMAs over its columns in order, whatever else is in its tile.
//
// Compiled for the baseline ISA with the kernels marked target("avx2,fma") (see q8_avx2.cc); call
// only when q8::DetectSupport().avx2.
#include "backends/cpu/mla_attention_impl.h"  // first: it includes simd_avx512.h
#include "backends/cpu/simd_avx2.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace moerun::cpu::mla::avx2 {
namespace {

#define MOERUN_AVX2 __attribute__((target("avx2,fma")))

constexpr int kLanes = static_cast<int>(kKeyLanes);
static_assert(kKeyLanes % 8 == 0 && kKeyLanes >= kValuesTileTokens, "a tile's tokens fit the lanes");

// out[j·kLanes + 8·v + lane] = Σ_c q[c·kLanes + 8·v + lane] · key_j[c] for NV vectors of 8 tokens and
// NK keys: first the k_dim columns of the expanded keys (k + j·dk, rounded to bf16 with kRoundK), then
// the rope_dim columns of the packed rope keys (kr + j·dr). One loop over both parts: with a helper
// taking the accumulators by reference, GCC stored all 12 of them to the stack every column (the
// kernel ran at 42% of the FMA peak on data in L1).
template <int NV, int NK, bool kRoundK>
MOERUN_AVX2 void ScoreKeysTile(const float* q, const float* k, int64_t dk, const float* kr, int64_t dr, float* out) {
  __m256 acc[NV][NK];
#pragma GCC unroll 3
  for (int v = 0; v < NV; ++v)
#pragma GCC unroll 12
    for (int j = 0; j < NK; ++j) acc[v][j] = _mm256_setzero_ps();
  for (int part = 0; part < 2; ++part) {
    const float* key = part == 0 ? k : kr;
    const int64_t ld = part == 0 ? dk : dr;
    const bool round = kRoundK && part == 0;
    for (int64_t c = 0; c < ld; ++c, q += kLanes) {
      __m256 qv[NV];
#pragma GCC unroll 3
      for (int v = 0; v < NV; ++v) qv[v] = _mm256_loadu_ps(q + 8 * v);
#pragma GCC unroll 12
      for (int j = 0; j < NK; ++j) {
        __m256 b = _mm256_broadcast_ss(key + j * ld + c);
        if (round) b = RoundBf16x8(b);
#pragma GCC unroll 3
        for (int v = 0; v < NV; ++v) acc[v][j] = _mm256_fmadd_ps(qv[v], b, acc[v][j]);
      }
    }
  }
#pragma GCC unroll 3
  for (int v = 0; v < NV; ++v)
#pragma GCC unroll 12
    for (int j = 0; j < NK; ++j) _mm256_storeu_ps(out + j * kLanes + 8 * v, acc[v][j]);
}

// r[i][k] becomes r[k][i]: an 8 x 8 transpose in registers.
MOERUN_AVX2 __attribute__((always_inline)) inline void Transpose8x8(__m256 (&r)[8]) {
  __m256 t[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  __m256 u[8];
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xee);
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xee);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
    r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
  }
}

using TileFn = ScoreTileFn;
// Keys per register tile for 1, 2 and 3 vectors of tokens (12 accumulators), and the kernels:
// [round K][vectors - 1] for that many keys, and for one key (the block's tail).
constexpr int kTileKeys[3] = {12, 6, 4};
constexpr TileFn kWide[2][3] = {{ScoreKeysTile<1, 12, false>, ScoreKeysTile<2, 6, false>, ScoreKeysTile<3, 4, false>},
                                {ScoreKeysTile<1, 12, true>, ScoreKeysTile<2, 6, true>, ScoreKeysTile<3, 4, true>}};
constexpr TileFn kOne[2][3] = {{ScoreKeysTile<1, 1, false>, ScoreKeysTile<2, 1, false>, ScoreKeysTile<3, 1, false>},
                               {ScoreKeysTile<1, 1, true>, ScoreKeysTile<2, 1, true>, ScoreKeysTile<3, 1, true>}};

}  // namespace

MOERUN_AVX2 void TransposeKeyQueries(const MlaAttentionArgs& a, int64_t t0, int64_t nt, bool round, float* qk) {
  const int64_t H = a.n_heads, dk = a.k_dim, dr = a.cache.rope_dim, Wq = dk + dr;
  std::fill(qk, qk + H * Wq * kKeyLanes, 0.0f);
  for (int64_t k = 0; k < nt; ++k)
    for (int64_t h = 0; h < H; ++h) {
      const float* qn = a.q_nope + ((t0 + k) * H + h) * dk;
      const float* qr = a.q_rope + ((t0 + k) * H + h) * dr;
      float* dst = qk + h * Wq * kKeyLanes + k;
      for (int64_t c = 0; c < dk; ++c) dst[c * kKeyLanes] = round ? RoundBf16(qn[c]) : qn[c];
      for (int64_t c = 0; c < dr; ++c) dst[(dk + c) * kKeyLanes] = round ? RoundBf16(qr[c]) : qr[c];
    }
}

MOERUN_AVX2 void RopeKeys(const LatentCacheView& cache, const int32_t* pages, int64_t b0, int64_t nb, bool round,
                          float* kr) {
  const int64_t R = cache.kv_rank, dr = cache.rope_dim;
  for (int64_t j = 0; j < nb; ++j) {
    float* dst = kr + j * dr;
    if (cache.bf16()) {
      const uint16_t* src = cache.RowBf16(pages, b0 + j) + R;
      for (int64_t c = 0; c < dr; ++c) dst[c] = Bf16ToF32(src[c]);
    } else {
      const float* src = cache.Row(pages, b0 + j) + R;
      for (int64_t c = 0; c < dr; ++c) dst[c] = round ? RoundBf16(src[c]) : src[c];
    }
  }
}

namespace {

// Per head, the sums in sh[(h·nb + j)·kKeyLanes + k] on the FMA register tiles (AVX-512 ones with wide
// where nt > 8): contiguous stores; written into st per head, one float per token and key, the
// block's 96 KiB of st left L1 between heads.
MOERUN_AVX2 void ScoreHeads(const MlaAttentionArgs& a, const float* qk, int64_t nt, const float* keys, int64_t b0,
                            int64_t nb, bool round_k, bool wide, const float* kr, float* sh) {
  const int64_t H = a.n_heads, dk = a.k_dim, dr = a.cache.rope_dim, Wq = dk + dr;
  const int nv = static_cast<int>((nt + 7) / 8);
  const ScoreTiles tiles = wide && nv > 1 ? avx512k::ScoreKeysTiles(nt, round_k)
                                          : ScoreTiles{kTileKeys[nv - 1], kWide[round_k][nv - 1], kOne[round_k][nv - 1]};
  for (int64_t h = 0; h < H; ++h) {
    const float* q = qk + h * Wq * kKeyLanes;
    const float* kh = keys + h * a.k_head_stride + b0 * dk;
    float* out = sh + h * nb * kKeyLanes;
    for (int64_t j0 = 0; j0 < nb;) {
      const int64_t n = nb - j0 >= tiles.keys ? tiles.keys : 1;
      (n == tiles.keys ? tiles.wide : tiles.one)(q, kh + j0 * dk, dk, kr + j0 * dr, dr, out + j0 * kKeyLanes);
      j0 += n;
    }
  }
}

}  // namespace

MOERUN_AVX2 void ScoreKeysBlock(const MlaAttentionArgs& a, const float* qk, int64_t nt, const int32_t* pages,
                                const float* keys, int64_t b0, int64_t nb, bool round, KeysIsa isa,
                                const uint32_t* kp, int64_t kp_keys, float* kr, float* sh, float* st, int64_t ldst,
                                int64_t ldj) {
  const int64_t H = a.n_heads;
  if (isa == KeysIsa::kDpBf16) {  // the rope keys are in the pairs already
    avx512k::ScoreHeadsDp(a, qk, nt, kp, kp_keys, nb, sh);
  } else {
    RopeKeys(a.cache, pages, b0, nb, round, kr);
    ScoreHeads(a, qk, nt, keys, b0, nb, round && !a.keys_bf16_exact, isa == KeysIsa::kAvx512, kr, sh);
  }
  const int nv = static_cast<int>((nt + 7) / 8);
  // Then scaled into st[j·ldj + k·ldst + h], 8 tokens × 8 heads at a time transposed in registers.
  const __m256 scale = _mm256_set1_ps(a.scale);
  const int64_t groups = ldst / 8;
  for (int64_t j = 0; j < nb; ++j)
    for (int64_t v = 0; v < nv; ++v)
      for (int64_t g = 0; g < groups; ++g) {
        __m256 r[8];
        for (int i = 0; i < 8; ++i) {
          const int64_t h = g * 8 + i;
          const float* src = sh + (h * nb + j) * kKeyLanes + 8 * v;
          r[i] = h < H ? _mm256_mul_ps(scale, _mm256_loadu_ps(src)) : _mm256_setzero_ps();
        }
        Transpose8x8(r);  // r[k] = token 8v + k's scores of heads 8g .. 8g + 7
        for (int64_t k = 0; k < 8 && 8 * v + k < nt; ++k)
          _mm256_storeu_ps(st + j * ldj + (8 * v + k) * ldst + g * 8, r[k]);
      }
}

namespace {

// out[i·ldo + d0 + e] = Σ_r lat[i·ldl + r] · u[r·dk + d0 + e] for MR rows and 16 columns: per lane one
// chain of FMAs over r in order, as Backend::ExpandKeys's std::fma chain.
template <int MR>
MOERUN_AVX2 void ExpandTile(const float* lat, int64_t ldl, const float* u, int64_t R, int64_t dk, int64_t d0,
                            float* out, int64_t ldo) {
  __m256 acc[MR][2];
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
  for (int64_t r = 0; r < R; ++r) {
    const __m256 u0 = _mm256_loadu_ps(u + r * dk + d0), u1 = _mm256_loadu_ps(u + r * dk + d0 + 8);
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      const __m256 b = _mm256_broadcast_ss(lat + i * ldl + r);
      acc[i][0] = _mm256_fmadd_ps(b, u0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(b, u1, acc[i][1]);
    }
  }
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) {
    _mm256_storeu_ps(out + i * ldo + d0, acc[i][0]);
    _mm256_storeu_ps(out + i * ldo + d0 + 8, acc[i][1]);
  }
}

using ExpandFn = void (*)(const float*, int64_t, const float*, int64_t, int64_t, int64_t, float*, int64_t);
constexpr ExpandFn kExpand[kExpandRows + 1] = {nullptr,        ExpandTile<1>, ExpandTile<2>, ExpandTile<3>,
                                               ExpandTile<4>, ExpandTile<5>, ExpandTile<6>};

}  // namespace

MOERUN_AVX2 void ExpandKeysRows(const float* u, int64_t R, int64_t dk, const float* lat, int64_t ldl, int64_t rows,
                                float* out) {
  const int64_t full = dk / 16 * 16;
  for (int64_t j0 = 0; j0 < rows; j0 += kExpandRows) {
    const int64_t mr = std::min<int64_t>(kExpandRows, rows - j0);
    for (int64_t d0 = 0; d0 < full; d0 += 16) kExpand[mr](lat + j0 * ldl, ldl, u, R, dk, d0, out + j0 * dk, dk);
    ExpandKeysTail(u, R, dk, full, lat + j0 * ldl, ldl, mr, out + j0 * dk);  // columns past the last 16
  }
}

void ExpandKeysTail(const float* u, int64_t R, int64_t dk, int64_t d0, const float* lat, int64_t ldl, int64_t rows,
                    float* out) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t d = d0; d < dk; ++d) {
      float acc = 0.0f;
      for (int64_t r = 0; r < R; ++r) acc = std::fma(lat[i * ldl + r], u[r * dk + d], acc);
      out[i * dk + d] = acc;
    }
}

#undef MOERUN_AVX2

}  // namespace moerun::cpu::mla::avx2
