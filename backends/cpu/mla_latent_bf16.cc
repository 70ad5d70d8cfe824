// The latent path of MLA attention at bf16 precision on AVX512_BF16 without AMX (AMD Zen 4 and 5):
// the AMX kernel's blocks, packing and softmax (mla_latent_blocks.h) with its two tile products as
// loops of vdpbf16ps, which adds two bf16 products into each f32 lane:
//   scores   lanes = the 16 heads of a group: per pair of row columns, the queries' pairs (one zmm
//            of the packed B tiles) against each key's pair broadcast from its bf16 row, 16 keys
//            at a time (one accumulator each);
//   P · Ĉ    lanes = 16 latent columns: per pair of keys, the block's pair row (vb) against each
//            head's pair of probabilities broadcast from pb, 8 heads × 32 columns at a time.
// Per key and 16 heads that is 288 + 256 instructions at V2-Lite's widths (rows of 576, kv_rank 512),
// where the AVX2 kernels spend 1152 + 1024 eight-lane FMAs and widen each bf16 value first. The
// same inputs are rounded at the same points as on AMX; only the order of the f32 additions differs.
//
// Built with -mavx512f -mavx512bw -mavx512vl -mavx512bf16 -mfma; call only after
// DetectSupport().avx512_bf16.
#include "backends/cpu/mla_attention_impl.h"  // first: it includes simd_avx512.h

#include "backends/cpu/mla_latent_blocks.h"

namespace moerun::cpu::mla::dpbf16 {
namespace {

using latent::kBlock;
using latent::kHeads;
using latent::kKeyTile;
using latent::kStep;
using latent::kTileWords;
using latent::Work;

inline __m512 Dot(__m512 acc, __m512i a, __m512i b) {
  return _mm512_dpbf16_ps(acc, reinterpret_cast<const __m512bh&>(a), reinterpret_cast<const __m512bh&>(b));
}

// Unit u's scores of the key tile in kb into w.Scores(u, 0): key i's accumulator gets, per pair of
// columns, the group's query pairs (row cp of the packed B tiles: word h = head h's columns 2cp,
// 2cp + 1) times key i's pair broadcast. Zero columns past W in both (PackQueries, PackTile).
// kPairs: the row's pairs (Wp / 2) as a constant, so that the 16 keys' broadcasts address one
// pointer with fixed offsets (with the stride in a register GCC kept 16 pointers and spilled them);
// 0: any width.
template <int64_t kPairs>
void ScoresTile(const Work& w, int64_t u, int64_t kt) {
  const uint32_t* q = w.qt + u * w.steps * kTileWords;
  const uint32_t* k = reinterpret_cast<const uint32_t*>(w.kb);
  const int64_t pairs = kPairs > 0 ? kPairs : w.Wp / 2;
  __m512 acc[kKeyTile];
#pragma GCC unroll 16
  for (int i = 0; i < kKeyTile; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t cp = 0; cp < pairs; ++cp, ++k) {
    const __m512i qv = _mm512_load_si512(q + cp * kHeads);
#pragma GCC unroll 16
    for (int i = 0; i < kKeyTile; ++i) acc[i] = Dot(acc[i], _mm512_set1_epi32(static_cast<int>(k[i * pairs])), qv);
  }
  float* st = w.Scores(u, 0) + kt * kKeyTile * kHeads;
#pragma GCC unroll 16
  for (int i = 0; i < kKeyTile; ++i) _mm512_store_ps(st + i * kHeads, acc[i]);
}

// O rows [h0, h0 + kTileHeads) of unit u, columns [c, c + 16·NC), += Σ_i pb pair (2i, 2i + 1) of
// the head · vb row i, over the block's first `pairs` pairs of keys.
constexpr int kTileHeads = 8;
template <int NC>
void AccumulateTile(const Work& w, float* o, const uint32_t* p, int64_t pairs, int64_t c) {
  __m512 acc[kTileHeads][NC];
#pragma GCC unroll 8
  for (int h = 0; h < kTileHeads; ++h)
#pragma GCC unroll 2
    for (int n = 0; n < NC; ++n) acc[h][n] = _mm512_load_ps(o + h * w.Rp + c + 16 * n);
  const uint32_t* v = w.vb + c;
  for (int64_t i = 0; i < pairs; ++i, v += w.Rp) {
    __m512i x[NC];
#pragma GCC unroll 2
    for (int n = 0; n < NC; ++n) x[n] = _mm512_load_si512(v + 16 * n);
#pragma GCC unroll 8
    for (int h = 0; h < kTileHeads; ++h) {
      const __m512i e = _mm512_set1_epi32(static_cast<int>(p[h * (kBlock / 2) + i]));
#pragma GCC unroll 2
      for (int n = 0; n < NC; ++n) acc[h][n] = Dot(acc[h][n], e, x[n]);
    }
  }
#pragma GCC unroll 8
  for (int h = 0; h < kTileHeads; ++h)
#pragma GCC unroll 2
    for (int n = 0; n < NC; ++n) _mm512_store_ps(o + h * w.Rp + c + 16 * n, acc[h][n]);
}

// O of unit u += P · Ĉ over the block's first nb keys (pb and vb hold zeros up to the next whole
// step). Two column tiles at a time, the same 8 KiB of vb for both halves of the heads.
void Accumulate(const Work& w, int64_t u, int64_t nb) {
  const int64_t pairs = latent::CeilDiv(nb, kStep) * kStep / 2;
  const uint32_t* pb = reinterpret_cast<const uint32_t*>(w.pb);
  float* o = w.o + u * kHeads * w.Rp;
  int64_t c = 0;
  for (; c + 32 <= w.Rp; c += 32)
    for (int64_t h0 = 0; h0 < kHeads; h0 += kTileHeads)
      AccumulateTile<2>(w, o + h0 * w.Rp, pb + h0 * (kBlock / 2), pairs, c);
  if (c < w.Rp)
    for (int64_t h0 = 0; h0 < kHeads; h0 += kTileHeads)
      AccumulateTile<1>(w, o + h0 * w.Rp, pb + h0 * (kBlock / 2), pairs, c);
}

struct Loops {
  static constexpr bool kOddScores = false;
  static void Begin() {}
  static void End() {}
  static void Scores(const Work& w, int64_t u, int64_t kt) {
    (w.Wp == 576 ? ScoresTile<288> : ScoresTile<0>)(w, u, kt);  // DeepSeek's rows: 512 + 64
  }
  static void Accumulate(const Work& w, int64_t u, int64_t nb) { dpbf16::Accumulate(w, u, nb); }
};

constexpr const char* kWhat = "cpu backend: MlaAttention (AVX512_BF16 latent path)";

}  // namespace

bool AttendLatent(const MlaAttentionArgs& a, int64_t t, int64_t j0, int64_t j1, const Partial& p) {
  return latent::Attend<Loops>(a, t, 1, j0, &j1, &p, kWhat);
}

bool AttendLatentTokens(const MlaAttentionArgs& a, int64_t t0, int64_t nt, const Partial* parts) {
  return latent::AttendTokens<Loops>(a, t0, nt, parts, kWhat);
}

}  // namespace moerun::cpu::mla::dpbf16
