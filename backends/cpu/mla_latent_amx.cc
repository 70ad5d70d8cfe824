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
// after DetectSupport().amx_bf16. Scratch is plain aligned memory (see mla_amx_util.h).
#include "backends/cpu/mla_attention_impl.h"  // first: it includes simd_avx512.h

#include <algorithm>
#include <cmath>
#include <cstring>

#include "backends/cpu/amx_tiles.h"
#include "backends/cpu/mla_amx_util.h"

namespace moerun::cpu::mla::amx {
namespace {

constexpr int64_t kHeads = 16;    // heads per group: the columns of a score tile, the rows of P
constexpr int64_t kKeyTile = 16;  // keys per score tile
constexpr int64_t kStep = 32;     // bf16 per tile row: one product's reduction
constexpr int64_t kTileWords = 256;
constexpr int64_t kBlock = kLatentKeyBlock;  // keys per block (a multiple of kStep)
constexpr int64_t kMaxSteps = kBlock / kStep;  // P · Ĉ products per column tile and block
static_assert(kMaxSteps == 4, "Accumulate holds the probabilities of at most four steps in tiles 2-5");

// Rows ahead of the one being converted that are prefetched into L2: the cache streams from memory
// (measured at 4096 keys, 1 thread: the conversion alone ~20% faster than without; 4, 16 and 32 rows
// ahead were no better than 8).
constexpr int64_t kPrefetchRows = 8;
// A unit of AttendLatentTokens holds at most this many (token, head group) pairs: their queries,
// scores and O stay within ~1 MiB of scratch (V2-Lite: 8 tokens; V3's 128 heads: 1).
constexpr int64_t kMaxUnitGroups = 8;

using amx_tiles::CompilerBarrier;

// Per-unit arrays are indexed by unit u = i · groups + g (token i of the call, head group g).
struct Work {
  int64_t H, R, P, W, Wp, Rp, steps, groups;
  uint32_t* qt;  // [units][steps] B tiles: row r, word h = dims (32·step + 2r, +1) of head h
  uint16_t* kb;  // [16][Wp]: one key tile's cache rows, bf16, zero past W (and past the keys)
  uint32_t* vb;  // [kBlock / 2][Rp]: word c of row i = latent c of the block's keys 2i, 2i + 1
  float* st;     // [units][2][kBlock][16]: scores (even and odd steps apart), per key a zmm of heads
  float* et;     // [kBlock / 16][16][16]: the probabilities transposed per key tile
  uint16_t* pb;  // [16][kBlock]: the probabilities, bf16 (A tiles)
  float* o;      // [units · 16][Rp]
  float* m;      // [units · 16] running maxima
  float* l;      // [units · 16] sums of the rounded probabilities
  float* Scores(int64_t u, int64_t odd) const { return st + (2 * u + odd) * kBlock * kHeads; }
};

// Token t's queries of head group g as the score B tiles of unit u. tmp: 16 rows of Wp bf16.
void PackQueries(const MlaAttentionArgs& a, int64_t t, const Work& w, int64_t g, int64_t u, uint16_t* tmp) {
  for (int64_t i = 0; i < kHeads; ++i) {
    const int64_t h = g * kHeads + i;
    uint16_t* row = tmp + i * w.Wp;
    int64_t done = 0;
    if (h < w.H) {
      ConvertRow(a.q_latent + (t * w.H + h) * w.R, w.R, row);
      if (w.P > 0) ConvertRow(a.q_rope + (t * w.H + h) * w.P, w.P, row + w.R);
      done = w.W;
    }
    std::memset(row + done, 0, static_cast<size_t>(w.Wp - done) * sizeof(uint16_t));
  }
  for (int64_t s = 0; s < w.steps; ++s)
    Transpose16x16(reinterpret_cast<const float*>(tmp) + s * 16, w.Wp / 2,
                   reinterpret_cast<float*>(w.qt + (u * w.steps + s) * kTileWords));
}

// Keys [16·kt, 16·kt + 16) of the block starting at key j (nb keys valid) into kb (zero past nb),
// then their pairs from kb into vb. The rows kPrefetchRows ahead (before the span's end j1) are
// fetched into L2 meanwhile. Columns of vb past kv_rank (up to Rp) hold whatever follows in
// the rows: finite, and they only reach columns of O that are never read.
void PackTile(const MlaAttentionArgs& a, int64_t t, const Work& w, int64_t j, int64_t kt, int64_t nb, int64_t j1) {
  const int32_t* pages = a.token_pages[t];
  // Rows by index computed here, not through LatentCacheView's inline members: their copies built
  // with this file's AMX flags could be the ones the linker keeps for other files.
  const int64_t ps = a.cache.page_size;
  auto at = [&](int64_t pos) { return (static_cast<int64_t>(pages[pos / ps]) * ps + pos % ps) * w.W; };
  const bool bf16_rows = a.cache.pool_bf16 != nullptr;
  for (int64_t i = 0; i < kKeyTile; ++i) {
    const int64_t k = kt * kKeyTile + i;
    uint16_t* row = w.kb + i * w.Wp;
    if (k >= nb) {
      std::memset(row, 0, static_cast<size_t>(w.Wp) * sizeof(uint16_t));
      continue;
    }
    const bool ahead = j + k + kPrefetchRows < j1;
    if (bf16_rows) {
      // bf16 rows: copied as they are (the rounding the f32 rows get below).
      const uint16_t* src = a.cache.pool_bf16 + at(j + k);
      if (ahead) {
        const char* next = reinterpret_cast<const char*>(a.cache.pool_bf16 + at(j + k + kPrefetchRows));
        for (int64_t b = 0; b < w.W * 2; b += 64) _mm_prefetch(next + b, _MM_HINT_T1);
      }
      for (int64_t c = 0; c < w.Wp; c += 32) {
        const __mmask32 m = w.W - c >= 32 ? ~__mmask32{0} : (__mmask32{1} << (w.W - c)) - 1;
        _mm512_store_si512(row + c, _mm512_maskz_loadu_epi16(m, src + c));
      }
      continue;
    }
    const float* src = a.cache.pool + at(j + k);
    if (ahead) {
      const char* next = reinterpret_cast<const char*>(a.cache.pool + at(j + k + kPrefetchRows));
      for (int64_t b = 0; b < w.W * 4; b += 64) _mm_prefetch(next + b, _MM_HINT_T1);
    }
    int64_t c = 0;
    for (; c + 32 <= w.W; c += 32) {
      const __m512bh b = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + c + 16), _mm512_loadu_ps(src + c));
      _mm512_store_si512(row + c, reinterpret_cast<const __m512i&>(b));
    }
    if (c < w.Wp) {
      const __m512 lo = _mm512_maskz_loadu_ps(Mask16(w.W - c), src + c);
      const __m512 hi = _mm512_maskz_loadu_ps(Mask16(w.W - c - 16), src + c + 16);
      const __m512bh b = _mm512_cvtne2ps_pbh(hi, lo);
      _mm512_store_si512(row + c, reinterpret_cast<const __m512i&>(b));
    }
  }
  // Word 2n of a pair row from the first key, 2n + 1 from the second.
  const __m512i lo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7, 38, 6, 37, 5,
                                      36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
  const __m512i hi = _mm512_add_epi16(lo, _mm512_set1_epi16(16));
  for (int64_t i = 0; i < kKeyTile; i += 2) {
    const uint16_t* k0 = w.kb + i * w.Wp;
    const uint16_t* k1 = k0 + w.Wp;
    uint32_t* v = w.vb + (kt * kKeyTile + i) / 2 * w.Rp;
    for (int64_t c = 0; c < w.Rp; c += 32) {
      const __m512i x0 = _mm512_load_si512(k0 + c), x1 = _mm512_load_si512(k1 + c);
      _mm512_store_si512(v + c, _mm512_permutex2var_epi16(x0, lo, x1));
      if (c + 16 < w.Rp) _mm512_store_si512(v + c + 16, _mm512_permutex2var_epi16(x0, hi, x1));
    }
  }
}

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

// The online softmax of unit u over the block's nb keys: scale, running maximum (O rescaled where
// it grows), the rounded probabilities (zero up to the last whole step) summed into l, transposed
// and stored as bf16 into pb.
void Softmax(const Work& w, int64_t u, int64_t nb, float scale) {
  const int64_t nbp = CeilDiv(nb, kStep) * kStep;
  float* st = w.Scores(u, 0);
  const float* odd = w.Scores(u, 1);
  const __m512 vscale = _mm512_set1_ps(scale);
  __m512 bmax = _mm512_set1_ps(-INFINITY);
  for (int64_t j = 0; j < nb; ++j) {
    const __m512 s = _mm512_mul_ps(vscale, _mm512_add_ps(_mm512_load_ps(st + j * kHeads), _mm512_load_ps(odd + j * kHeads)));
    _mm512_store_ps(st + j * kHeads, s);
    bmax = _mm512_max_ps(bmax, s);
  }
  float* m = w.m + u * kHeads;
  float* l = w.l + u * kHeads;
  const __m512 old_max = _mm512_load_ps(m);
  const __m512 new_max = _mm512_max_ps(old_max, bmax);
  // Heads whose maximum grew past a finite one: their O rows and sums are scaled by exp(old − new).
  const __mmask16 grew = _mm512_cmp_ps_mask(new_max, old_max, _CMP_GT_OQ) &
                         _mm512_cmp_ps_mask(old_max, _mm512_set1_ps(-INFINITY), _CMP_GT_OQ);
  __m512 sum = _mm512_load_ps(l);
  if (grew) {
    alignas(64) float alpha[kHeads];
    const __m512 av = ExpAvx512(_mm512_sub_ps(old_max, new_max));
    _mm512_store_ps(alpha, av);
    sum = _mm512_mask_mul_ps(sum, grew, sum, av);
    for (int h = 0; h < kHeads; ++h) {
      if (!((grew >> h) & 1)) continue;
      const __m512 ab = _mm512_set1_ps(alpha[h]);
      float* o = w.o + (u * kHeads + h) * w.Rp;
      for (int64_t c = 0; c < w.Rp; c += 16) _mm512_store_ps(o + c, _mm512_mul_ps(ab, _mm512_load_ps(o + c)));
    }
  }
  _mm512_store_ps(m, new_max);
  for (int64_t j = 0; j < nbp; ++j) {
    __m512 p = _mm512_setzero_ps();
    if (j < nb) {
      const __m256bh e = _mm512_cvtneps_pbh(ExpAvx512(_mm512_sub_ps(_mm512_load_ps(st + j * kHeads), new_max)));
      p = _mm512_cvtpbh_ps(e);
      sum = _mm512_add_ps(sum, p);
    }
    _mm512_store_ps(st + j * kHeads, p);
  }
  _mm512_store_ps(l, sum);
  for (int64_t kt = 0; kt < nbp / kKeyTile; ++kt)
    Transpose16x16(st + kt * kKeyTile * kHeads, kHeads, w.et + kt * kTileWords);
  for (int64_t h = 0; h < kHeads; ++h)
    for (int64_t s = 0; s < nbp / kStep; ++s) {
      const __m512 lo = _mm512_load_ps(w.et + (2 * s) * kTileWords + h * 16);
      const __m512 hi = _mm512_load_ps(w.et + (2 * s + 1) * kTileWords + h * 16);
      const __m512bh b = _mm512_cvtne2ps_pbh(hi, lo);
      _mm512_store_si512(w.pb + h * kBlock + s * kStep, reinterpret_cast<const __m512i&>(b));
    }
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

// Tokens [t0, t0 + nt) of one sequence (one page table), token i over keys [j0, j1[i]), into
// parts[i]. A unit is (token, head group): its queries, scores, O, maxima and sums; the keys of each
// block are converted once for all of them.
bool Attend(const MlaAttentionArgs& a, int64_t t0, int64_t nt, int64_t j0, const int64_t* j1, const Partial* parts) {
  Work w;
  w.H = a.n_heads;
  w.R = a.cache.kv_rank;
  w.P = a.cache.rope_dim;
  w.W = w.R + w.P;
  w.Wp = CeilDiv(w.W, kStep) * kStep;
  w.Rp = CeilDiv(w.R, 16) * 16;
  w.steps = w.Wp / kStep;
  w.groups = CeilDiv(w.H, kHeads);
  const int64_t hp = w.groups * kHeads, units = nt * w.groups;
  int64_t end = j0;
  for (int64_t i = 0; i < nt; ++i) end = std::max(end, j1[i]);
  thread_local Scratch mem;
  Carver need(nullptr);
  need.Take<uint32_t>(units * w.steps * kTileWords);
  need.Take<uint16_t>(kHeads * w.Wp);  // the query packing rows, then kb
  need.Take<uint32_t>(kBlock / 2 * w.Rp);
  need.Take<float>(units * 2 * kBlock * kHeads);
  need.Take<float>(kBlock * kHeads);
  need.Take<uint16_t>(kHeads * kBlock);
  need.Take<float>(nt * hp * w.Rp);
  need.Take<float>(nt * hp);
  need.Take<float>(nt * hp);
  if (!mem.Reserve(need.used())) {
    LogScratchFailure("cpu backend: MlaAttention (AMX latent path)", end - j0);
    return false;
  }
  Carver c(mem.data());
  w.qt = c.Take<uint32_t>(units * w.steps * kTileWords);
  w.kb = c.Take<uint16_t>(kHeads * w.Wp);
  w.vb = c.Take<uint32_t>(kBlock / 2 * w.Rp);
  w.st = c.Take<float>(units * 2 * kBlock * kHeads);
  w.et = c.Take<float>(kBlock * kHeads);
  w.pb = c.Take<uint16_t>(kHeads * kBlock);
  w.o = c.Take<float>(nt * hp * w.Rp);
  w.m = c.Take<float>(nt * hp);
  w.l = c.Take<float>(nt * hp);
  std::memset(w.o, 0, static_cast<size_t>(nt * hp * w.Rp) * sizeof(float));
  std::fill(w.m, w.m + nt * hp, -INFINITY);
  std::fill(w.l, w.l + nt * hp, 0.0f);
  for (int64_t i = 0; i < nt; ++i)
    for (int64_t g = 0; g < w.groups; ++g) PackQueries(a, t0 + i, w, g, i * w.groups + g, w.kb);
  amx_tiles::LoadTileConfig16x64();
  for (int64_t j = j0; j < end; j += kBlock) {
    const int64_t nb = std::min(kBlock, end - j), packed = CeilDiv(nb, kStep) * kStep / kKeyTile;
    // Each key tile is scored while its bf16 rows are still in L1; only the pairs for P · Ĉ are kept
    // for the whole block. A token scores, weighs and sums only its own keys of the block.
    for (int64_t kt = 0; kt < packed; ++kt) {
      CompilerBarrier();
      PackTile(a, t0, w, j, kt, nb, end);
      for (int64_t i = 0; i < nt; ++i)
        if (kt * kKeyTile < j1[i] - j)
          for (int64_t g = 0; g < w.groups; ++g) ScoresTile(w, i * w.groups + g, kt);
    }
    for (int64_t i = 0; i < nt; ++i) {
      const int64_t own = std::min(nb, j1[i] - j);
      if (own <= 0) continue;
      for (int64_t g = 0; g < w.groups; ++g) {
        Softmax(w, i * w.groups + g, own, a.scale);
        AccumulateOf(w, i * w.groups + g, own);
      }
    }
  }
  _tile_release();
  for (int64_t i = 0; i < nt; ++i)
    for (int64_t h = 0; h < w.H; ++h) {
      std::memcpy(parts[i].out + h * w.R, w.o + (i * hp + h) * w.Rp, static_cast<size_t>(w.R) * sizeof(float));
      parts[i].max[h] = w.m[i * hp + h];
      parts[i].sum[h] = w.l[i * hp + h];
    }
  return true;
}

}  // namespace

bool AttendLatent(const MlaAttentionArgs& a, int64_t t, int64_t j0, int64_t j1, const Partial& p) {
  return Attend(a, t, 1, j0, &j1, &p);
}

int64_t LatentUnitTokens(int64_t n_heads, int64_t tokens_per_thread) {
  const int64_t groups = std::max<int64_t>(CeilDiv(n_heads, kHeads), 1);
  return std::clamp<int64_t>(std::min(tokens_per_thread, kMaxUnitGroups / groups), 1, kMaxUnitTokens);
}

bool AttendLatentTokens(const MlaAttentionArgs& a, int64_t t0, int64_t nt, const Partial* parts) {
  if (nt < 1 || nt > kMaxUnitTokens) return false;
  int64_t ends[kMaxUnitTokens];
  for (int64_t i = 0; i < nt; ++i) ends[i] = std::max<int64_t>(a.n_keys[t0 + i], 0);
  return Attend(a, t0, nt, 0, ends, parts);
}

}  // namespace moerun::cpu::mla::amx
