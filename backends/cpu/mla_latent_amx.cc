// The latent path of MLA attention (decode, and chunks at long context) on AMX-BF16, for bf16
// precision: one token over one span of its keys, all heads, into a Partial (mla_attention.cc splits
// a decode token's keys into spans across threads and merges them); or a unit of up to 8 tokens of
// one sequence over all their keys, each block of keys converted once for all of them (a chunk of
// 64 tokens at 4096 keys, 2 threads: 10-15 ms per layer, 24-27 ms token by token, 42-51 ms on the
// f32 path).
//
// The heads of a group of 16 share every key, so a group's scores are one tile product per 16 keys
// and 32 dims, with the keys as the rows:
//   Sᵀ = K · Qᵀ    A = 16 cache rows (bf16, row-major), B = the group's queries in VNNI pairs of dims
//   O += P · Ĉ     A = the probabilities [16 heads × 32 keys] (bf16), B = the latents in VNNI pairs
//                  of keys, 16 latent columns per tile
// Keys go by in blocks of kLatentKeyBlock (128). Each key tile of 16 f32 cache rows is converted to
// bf16 (18 KiB, L1-resident) and scored at once by every head group, even and odd steps into two
// accumulators; its rows are also interleaved in pairs into the block's P · Ĉ layout (128 KiB,
// L2). After the block's tiles, per group: an online softmax in f32 AVX-512 (running maximum per
// head, O rescaled in place where it grows), the probabilities transposed to [head][key] and
// rounded to bf16, and the P · Ĉ tiles into O ([16][kv_rank] f32 per group, loaded and stored per
// column tile over the block's four steps, so it needs no vector adds).
//
// Per key that is 18 score and 16 P · Ĉ tile-product rows of 32 multiply-adds for 16 heads, where
// the f32 path spends 1088 zmm FMAs; what is left is reading and converting the f32 cache rows.
// Measured (2-core Sapphire-Rapids-class VM, V2-Lite shapes, 4096 keys, 8 layers' caches read cold
// from memory, medians of 9; the host's speed moves by ±25% between runs): 1 thread 1.3-1.5 ms per
// layer (f32 path 1.85-2.1), 2 threads 0.76-1.03 ms (1.05-1.55). Converting the rows takes ~70% of
// it, at ~7-9 GB/s where a plain read of the same rows runs at ~12 GB/s; the prefetch of the rows
// ahead gains ~20% of the conversion. A bf16 cache in the tile layouts would read half the bytes and
// convert nothing.
//
// Rounding (Precision::kBF16): queries, cache rows and probabilities are rounded to bf16 (nearest
// even); scores, maxima, exponentials and sums are f32. The probabilities p = exp(scale·s − m_b),
// m_b the head's running maximum after key block b of the span, are rounded before both P · Ĉ and
// the sum. The f32 precision keeps the exact path.
//
// Built with -mavx512f -mavx512bw -mavx512vl -mavx512bf16 -mfma -mamx-tile -mamx-bf16; call only
// after DetectSupport().amx_bf16. Scratch is plain aligned memory (see mla_amx_util.h). The blocks,
// packing, softmax and driver are mla_latent_blocks.h's, shared with the AVX512_BF16 kernel
// (mla_latent_bf16.cc); this file has the two tile products.
#include "backends/cpu/mla_attention_impl.h"  // first: it includes simd_avx512.h

#include <algorithm>
#include <cmath>
#include <cstring>

#include "backends/cpu/amx_tiles.h"
#include "backends/cpu/mla_latent_blocks.h"

namespace moerun::cpu::mla::amx {
namespace {

using latent::CeilDiv;
using latent::kBlock;
using latent::kHeads;
using latent::kKeyTile;
using latent::kMaxUnitGroups;
using latent::kStep;
using latent::kTileWords;
using latent::Work;
using amx_tiles::CompilerBarrier;
constexpr int64_t kMaxSteps = kBlock / kStep;  // P · Ĉ products per column tile and block
static_assert(kMaxSteps == 4, "Accumulate holds the probabilities of at most four steps in tiles 2-5");

// Scores of the key tile in kb for unit u: the even steps into C 0, the odd ones into C 1 (two
// independent accumulations), stored apart. A 2-3 (keys), B 4-5 (queries).
void ScoresTile(const Work& w, int64_t u, int64_t kt) {
  const uint32_t* q = w.qt + u * w.steps * kTileWords;
  const int64_t lda = w.Wp * 2;
  CompilerBarrier();
  _tile_zero(0);
  _tile_zero(1);
  int64_t s = 0;
  for (; s + 2 <= w.steps; s += 2) {
    _tile_loadd(4, q + s * kTileWords, 64);
    _tile_loadd(2, w.kb + s * kStep, lda);
    _tile_dpbf16ps(0, 2, 4);
    _tile_loadd(5, q + (s + 1) * kTileWords, 64);
    _tile_loadd(3, w.kb + (s + 1) * kStep, lda);
    _tile_dpbf16ps(1, 3, 5);
  }
  if (s < w.steps) {
    _tile_loadd(4, q + s * kTileWords, 64);
    _tile_loadd(2, w.kb + s * kStep, lda);
    _tile_dpbf16ps(0, 2, 4);
  }
  _tile_stored(0, w.Scores(u, 0) + kt * kKeyTile * kHeads, 64);
  _tile_stored(1, w.Scores(u, 1) + kt * kKeyTile * kHeads, 64);
  CompilerBarrier();
}

// One step (32 keys) of P · Ĉ for the column tiles c (C 0) and, with kTwo, c + 1 (C 1); the step's
// probabilities are in tile 2 + KS.
// (GCC's tile intrinsics paste their tile numbers into the assembly: literals only.)
#define MOERUN_LATENT_STEP(P)          \
  _tile_loadd(6, v, ldv);              \
  _tile_dpbf16ps(0, P, 6);             \
  if constexpr (kTwo) {                \
    _tile_loadd(7, v + 16, ldv);       \
    _tile_dpbf16ps(1, P, 7);           \
  }
template <int KS, bool kTwo>
inline void AccumulateStep(const Work& w, int64_t c) {
  const uint32_t* v = w.vb + KS * 16 * w.Rp + c * 16;
  const int64_t ldv = w.Rp * 4;
  if constexpr (KS == 0) {
    MOERUN_LATENT_STEP(2)
  } else if constexpr (KS == 1) {
    MOERUN_LATENT_STEP(3)
  } else if constexpr (KS == 2) {
    MOERUN_LATENT_STEP(4)
  } else {
    MOERUN_LATENT_STEP(5)
  }
}
#undef MOERUN_LATENT_STEP

template <int NS, bool kTwo>
inline void AccumulateColumns(const Work& w, float* o, int64_t c) {
  const int64_t ldo = w.Rp * 4;
  _tile_loadd(0, o + c * 16, ldo);
  if constexpr (kTwo) _tile_loadd(1, o + c * 16 + 16, ldo);
  AccumulateStep<0, kTwo>(w, c);
  if constexpr (NS > 1) AccumulateStep<1, kTwo>(w, c);
  if constexpr (NS > 2) AccumulateStep<2, kTwo>(w, c);
  if constexpr (NS > 3) AccumulateStep<3, kTwo>(w, c);
  _tile_stored(0, o + c * 16, ldo);
  if constexpr (kTwo) _tile_stored(1, o + c * 16 + 16, ldo);
}

// O_g += P · Ĉ over NS steps of 32 keys, two column tiles at a time. C 0-1, A (probabilities) 2-5,
// B 6-7.
template <int NS>
void Accumulate(const Work& w, int64_t u) {
  float* o = w.o + u * kHeads * w.Rp;
  const int64_t ldp = kBlock * 2, tiles = w.Rp / 16;
  CompilerBarrier();
  _tile_loadd(2, w.pb, ldp);
  if constexpr (NS > 1) _tile_loadd(3, w.pb + kStep, ldp);
  if constexpr (NS > 2) _tile_loadd(4, w.pb + 2 * kStep, ldp);
  if constexpr (NS > 3) _tile_loadd(5, w.pb + 3 * kStep, ldp);
  int64_t c = 0;
  for (; c + 2 <= tiles; c += 2) AccumulateColumns<NS, true>(w, o, c);
  if (c < tiles) AccumulateColumns<NS, false>(w, o, c);
  CompilerBarrier();
}

void AccumulateOf(const Work& w, int64_t u, int64_t nb) {
  switch (CeilDiv(nb, kStep)) {
    case 1: Accumulate<1>(w, u); break;
    case 2: Accumulate<2>(w, u); break;
    case 3: Accumulate<3>(w, u); break;
    default: Accumulate<4>(w, u); break;
  }
}
// The tile products for latent::Attend.
struct Tiles {
  static constexpr bool kOddScores = true;
  static void Begin() { amx_tiles::LoadTileConfig16x64(); }
  static void End() { _tile_release(); }
  static void Scores(const Work& w, int64_t u, int64_t kt) { ScoresTile(w, u, kt); }
  static void Accumulate(const Work& w, int64_t u, int64_t nb) { AccumulateOf(w, u, nb); }
};

constexpr const char* kWhat = "cpu backend: MlaAttention (AMX latent path)";

}  // namespace

bool AttendLatent(const MlaAttentionArgs& a, int64_t t, int64_t j0, int64_t j1, const Partial& p) {
  return latent::Attend<Tiles>(a, t, 1, j0, &j1, &p, kWhat);
}

int64_t LatentUnitTokens(int64_t n_heads, int64_t tokens_per_thread) {
  const int64_t groups = std::max<int64_t>(CeilDiv(n_heads, kHeads), 1);
  return std::clamp<int64_t>(std::min(tokens_per_thread, kMaxUnitGroups / groups), 1, kMaxUnitTokens);
}

bool AttendLatentTokens(const MlaAttentionArgs& a, int64_t t0, int64_t nt, const Partial* parts) {
  return latent::AttendTokens<Tiles>(a, t0, nt, parts, kWhat);
}

}  // namespace moerun::cpu::mla::amx
