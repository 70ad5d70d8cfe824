// The latent path's blocks at bf16 precision, shared by its two kernels: AMX-BF16 tile products
// (mla_latent_amx.cc) and AVX512_BF16 vdpbf16ps loops (mla_latent_bf16.cc), for CPUs with the
// first and for those with only the second (AMD Zen 4 and 5). Both walk the keys in blocks of
// kLatentKeyBlock, pack each key tile of 16 cache rows into bf16 (kb) and the block's latents into
// pairs of keys (vb), and run the same online softmax in f32 with the probabilities rounded to bf16
// (pb, [head][key]); only the two products differ, supplied by the kernel as `Products`:
//   Products::Begin(), End()           around a call (the tile configuration)
//   Products::Scores(w, u, kt)         unit u's scores of the key tile in kb: w.Scores(u, 0) and,
//                                      with Products::kOddScores, the odd steps' w.Scores(u, 1)
//   Products::Accumulate(w, u, nb)     O of unit u += P · Ĉ over the block's first nb keys
// So both round the same inputs at the same points: queries, cache rows and probabilities, the
// running maximum per block counted from the span's start (see mla_latent_amx.cc).
//
// Everything here has internal linkage (an unnamed namespace), as in mla_amx_util.h: each file
// built with its own -m flags keeps its own copy. Include it only from such files, after
// mla_attention_impl.h.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "backends/cpu/mla_amx_util.h"

namespace moerun::cpu::mla::latent {
namespace {

using amx::Carver;
using amx::CeilDiv;
using amx::ConvertRow;
using amx::Mask16;
using amx::Scratch;

constexpr int64_t kHeads = 16;    // heads per group: the columns of a score tile, the rows of P
constexpr int64_t kKeyTile = 16;  // keys per score tile
constexpr int64_t kStep = 32;     // bf16 per tile row: one product's reduction
constexpr int64_t kTileWords = 256;
constexpr int64_t kBlock = amx::kLatentKeyBlock;  // keys per block (a multiple of kStep)

// Rows ahead of the one being converted that are prefetched into L2: the cache streams from memory
// (measured at 4096 keys, 1 thread: the conversion alone ~20% faster than without; 4, 16 and 32 rows
// ahead were no better than 8).
constexpr int64_t kPrefetchRows = 8;
// A unit of AttendLatentTokens holds at most this many (token, head group) pairs: their queries,
// scores and O stay within ~1 MiB of scratch (V2-Lite: 8 tokens; V3's 128 heads: 1).
constexpr int64_t kMaxUnitGroups = 8;

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

// The online softmax of unit u over the block's nb keys: scale, running maximum (O rescaled where
// it grows), the rounded probabilities (zero up to the last whole step) summed into l, transposed
// and stored as bf16 into pb.
template <bool kOdd>
void Softmax(const Work& w, int64_t u, int64_t nb, float scale) {
  const int64_t nbp = CeilDiv(nb, kStep) * kStep;
  float* st = w.Scores(u, 0);
  const float* odd = w.Scores(u, 1);
  const __m512 vscale = _mm512_set1_ps(scale);
  __m512 bmax = _mm512_set1_ps(-INFINITY);
  for (int64_t j = 0; j < nb; ++j) {
    __m512 s = _mm512_load_ps(st + j * kHeads);
    if constexpr (kOdd) s = _mm512_add_ps(s, _mm512_load_ps(odd + j * kHeads));
    s = _mm512_mul_ps(vscale, s);
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

// Tokens [t0, t0 + nt) of one sequence (one page table), token i over keys [j0, j1[i]), into
// parts[i]. A unit is (token, head group): its queries, scores, O, maxima and sums; the keys of each
// block are converted once for all of them. what: the kernel, for the scratch failure's message.
template <typename Products>
bool Attend(const MlaAttentionArgs& a, int64_t t0, int64_t nt, int64_t j0, const int64_t* j1, const Partial* parts,
            const char* what) {
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
    LogScratchFailure(what, end - j0);
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
  Products::Begin();
  for (int64_t j = j0; j < end; j += kBlock) {
    const int64_t nb = std::min(kBlock, end - j), packed = CeilDiv(nb, kStep) * kStep / kKeyTile;
    // Each key tile is scored while its bf16 rows are still in L1; only the pairs for P · Ĉ are kept
    // for the whole block. A token scores, weighs and sums only its own keys of the block.
    for (int64_t kt = 0; kt < packed; ++kt) {
      PackTile(a, t0, w, j, kt, nb, end);
      for (int64_t i = 0; i < nt; ++i)
        if (kt * kKeyTile < j1[i] - j)
          for (int64_t g = 0; g < w.groups; ++g) Products::Scores(w, i * w.groups + g, kt);
    }
    for (int64_t i = 0; i < nt; ++i) {
      const int64_t own = std::min(nb, j1[i] - j);
      if (own <= 0) continue;
      for (int64_t g = 0; g < w.groups; ++g) {
        Softmax<Products::kOddScores>(w, i * w.groups + g, own, a.scale);
        Products::Accumulate(w, i * w.groups + g, own);
      }
    }
  }
  Products::End();
  for (int64_t i = 0; i < nt; ++i)
    for (int64_t h = 0; h < w.H; ++h) {
      std::memcpy(parts[i].out + h * w.R, w.o + (i * hp + h) * w.Rp, static_cast<size_t>(w.R) * sizeof(float));
      parts[i].max[h] = w.m[i * hp + h];
      parts[i].sum[h] = w.l[i * hp + h];
    }
  return true;
}

// AttendLatentTokens of either kernel: tokens [t0, t0 + nt), each over all its keys.
template <typename Products>
bool AttendTokens(const MlaAttentionArgs& a, int64_t t0, int64_t nt, const Partial* parts, const char* what) {
  if (nt < 1 || nt > amx::kMaxUnitTokens) return false;
  int64_t ends[amx::kMaxUnitTokens];
  for (int64_t i = 0; i < nt; ++i) ends[i] = std::max<int64_t>(a.n_keys[t0 + i], 0);
  return Attend<Products>(a, t0, nt, 0, ends, parts, what);
}

}  // namespace
}  // namespace moerun::cpu::mla::latent
