// The values path of MLA attention (MlaAttentionArgs::values) on AMX-BF16, for bf16 precision.
//
// Work unit: up to 32 consecutive batch tokens of one sequence (two row blocks of 16: the rows of
// two A tiles; rows past the tokens are zero) and one head. Keys are shared by all heads, values are
// per head, so both products of a unit have the same rows:
//   S = Q_h · Kᵀ   A = the queries (q_latent | q_rope, bf16), B = keys in VNNI pairs, 16 per C tile
//   O += P · V_h   A = the probabilities (bf16), B = the head's value rows in VNNI pairs along keys
// Keys go by in blocks of kKeyBlock = 64: S in passes of 2 row blocks × 2 key tiles (each A or B
// load feeds two products; 18 steps of 32 dims for rows of 576), an online softmax per row in f32
// AVX-512 (the shared ExpAvx512), then P · V into O, which lives in memory ([32][dv + 1] f32, whole
// 16-column tiles): C tiles are loaded from O, accumulate the block's two 32-key steps for both row
// blocks (each value tile load feeds two products) and are stored back, so O needs no vector adds;
// when a row's running maximum grows its O row is rescaled in place. Column dv of O is Σ p: the
// values carry a column of ones (in the padding of the last 16 columns, or a constant extra tile), so
// the denominator sums exactly the rounded probabilities that the numerator weights, in the same
// tile products. The softmax of block b − 1 runs one row per score step of block b, between its
// tile products, so that the vector units work while the AMX unit multiplies (as the epilogue in
// q8_amx.cc does).
//
// Each sequence's keys (up to the most any of its batch tokens sees) and each head's value rows are
// packed once per call into the B layouts (bf16, zero past the last key and the last column), by all
// threads, before the units run. Causality: a unit computes only the 16-key tiles below the most keys
// any of its rows sees; lanes past a row's own count get probability 0.
//
// Rounding (Precision::kBF16: "matmul inputs rounded to bfloat16, float32 accumulation"): queries,
// keys and values are rounded to bf16 (nearest even); scores, maxima, exponentials and sums are f32;
// the probabilities p = exp(scale·s − m_b), with m_b the row's running maximum after key block b, are
// rounded to bf16 (nearest even) before both P · V and Σ p; O is rescaled by exp(m_old − m_new) in
// f32. Tokens that see no keys give zeros. The f32 precision keeps the exact path (mla_values.cc).
//
// Speed (2-core Sapphire-Rapids-class Xeon, V2-Lite shapes: 16 heads, rows of 576, dv = 128; CPU
// time from perf samples, the machine shared, so wall times were too noisy to quote): the values
// path alone, fresh prefill, one thread: T = 512 8.1-8.7 ms (exact f32 path 28-30 ms), T = 1024
// 25-26 ms (109-111 ms). Whole int8 V2-Lite prefill at bf16 precision: 512 tokens, attention from
// ~16% to ~6.5% of the CPU time on one thread (~330 → ~120 ms) and from ~9.5% to ~3.3% on two; 2048
// tokens in one batch, from 40-45% to 14-16% (~3.8 → ~0.9 s of CPU). About a third of the kernel's
// time is reading the f32 queries (the exact path reads them too); the tile products run at roughly
// a quarter of the AMX peak. Tried and dropped: units of 16 rows with four key tiles per pass (the
// same speed, twice the key and value tile loads per product); software prefetch of the query rows
// (no gain).
//
// Built with -mavx512f -mavx512bw -mavx512vl -mavx512bf16 -mfma -mamx-tile -mamx-bf16; call only
// after DetectSupport().amx_bf16 (which asked Linux for the tile state). No container templates are
// instantiated here (their out-of-line copies would carry these -m flags into code other files
// share): scratch is plain aligned memory.
#include "backends/cpu/mla_attention_impl.h"  // first: it includes simd_avx512.h

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <new>

#include "backends/cpu/amx_tiles.h"
#include "backends/cpu/mla_amx_util.h"

namespace moerun::cpu::mla::amx {
namespace {

constexpr int64_t kTileRows = 16;                         // rows of an A or C tile
constexpr int64_t kRows = 2 * kTileRows;                  // rows of a unit: two row blocks
constexpr int64_t kKeyTile = 16;                          // keys of one score C tile
constexpr int64_t kStep = 32;                             // bf16 per tile row: one product's reduction
constexpr int64_t kTileWords = 256;                       // one 16 × 64-byte tile in 32-bit words
constexpr int64_t kBlockTiles = kKeyBlock / kKeyTile;     // score tiles per key block (4)
constexpr int64_t kBlockSteps = kKeyBlock / kStep;        // P · V steps per key block (2)
constexpr uint32_t kOnePair = 0x3F803F80u;                // two bf16 1.0

using amx_tiles::CompilerBarrier;

// All eight tiles are 16 rows × 64 bytes (amx_tiles::LoadTileConfig16x64). Scores: C 0-3, A
// (queries) 4, B (keys) 5-7. P · V: C 0-1, B (values) 2-5, A (probabilities) 6-7.
void LoadTileConfig() { amx_tiles::LoadTileConfig16x64(); }

// The B tile of the ones column when dv is a multiple of 16 (otherwise it sits in the values'
// padding).
struct OnesTile {
  alignas(64) uint32_t w[kTileWords];
  constexpr OnesTile() : w() {
    for (uint32_t& x : w) x = kOnePair;
  }
};
constexpr OnesTile kOnes;

struct Geometry {
  int64_t H, R, P, W, Wp, steps, dv, vtiles, otiles, ldo;  // ldo: O row stride (floats)
  explicit Geometry(const MlaAttentionArgs& a)
      : H(a.n_heads), R(a.cache.kv_rank), P(a.cache.rope_dim), W(R + P), Wp(CeilDiv(W, kStep) * kStep),
        steps(Wp / kStep), dv(a.v_dim), vtiles(CeilDiv(dv, 16)), otiles(CeilDiv(dv + 1, 16)), ldo(otiles * 16) {}
};

// One sequence of the batch: the tokens with the same page table and values.
struct Seq {
  const int32_t* pages;
  const float* values;
  int64_t n;              // keys: the most any of its tokens sees
  int64_t n_pad;          // n rounded up to kKeyBlock
  int64_t key_item0;      // its first packing items
  int64_t value_item0;
  uint16_t* keys;    // [n_pad / 16][steps] tiles: 16 dim pairs × 16 keys × 2
  uint16_t* values_bf16;  // [H][n_pad / 32][vtiles] tiles: 16 key pairs × 16 columns × 2
};

struct Block {
  int64_t t0, nt, seq;
};

// Keys [16·kt, 16·kt + 16) of sequence s into its key tiles. tmp: 16 rows of Wp bf16.
void PackKeys(const MlaAttentionArgs& a, const Geometry& g, const Seq& s, int64_t kt, uint16_t* tmp) {
  const int64_t ps = a.cache.page_size;
  for (int64_t k = 0; k < kKeyTile; ++k) {
    const int64_t j = kt * kKeyTile + k;
    uint16_t* row = tmp + k * g.Wp;
    int64_t done = 0;
    if (j < s.n) {
      const int64_t at = (static_cast<int64_t>(s.pages[j / ps]) * ps + j % ps) * g.W;
      if (a.cache.pool_bf16) {  // bf16 rows (inline members of the view are not used in this file)
        std::memcpy(row, a.cache.pool_bf16 + at, static_cast<size_t>(g.W) * sizeof(uint16_t));
      } else {
        ConvertRow(a.cache.pool + at, g.W, row);
      }
      done = g.W;
    }
    std::memset(row + done, 0, static_cast<size_t>(g.Wp - done) * sizeof(uint16_t));
  }
  // Tile (kt, step) row c = dim pair 16·step + c of the 16 keys: a 16 × 16 transpose of 32-bit words.
  uint16_t* dst = s.keys + kt * g.steps * 2 * kTileWords;
  for (int64_t st = 0; st < g.steps; ++st)
    Transpose16x16(reinterpret_cast<const float*>(tmp) + st * 16, g.Wp / 2,
                   reinterpret_cast<float*>(dst + st * 2 * kTileWords));
}

// Head h's values of keys [32·ks, 32·ks + 32) of sequence s into its value tiles; column dv is 1.
void PackValues(const MlaAttentionArgs& a, const Geometry& g, const Seq& s, int64_t h, int64_t ks) {
  const int64_t nks = s.n_pad / kStep;
  uint16_t* dst = s.values_bf16 + ((h * nks + ks) * g.vtiles) * 2 * kTileWords;
  const float* v = s.values + h * a.v_head_stride;
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t c = 0; c < g.vtiles; ++c, dst += 2 * kTileWords) {
    const __mmask16 m = Mask16(g.dv - c * 16);
    const __mmask16 one = static_cast<__mmask16>(~m & (m + 1));  // the lane of column dv, if here
    for (int64_t p = 0; p < 16; ++p) {
      const int64_t j = ks * kStep + 2 * p;
      __m512 even = j < s.n ? _mm512_maskz_loadu_ps(m, v + j * g.dv + c * 16) : zero;
      __m512 odd = j + 1 < s.n ? _mm512_maskz_loadu_ps(m, v + (j + 1) * g.dv + c * 16) : zero;
      even = _mm512_mask_mov_ps(even, one, _mm512_set1_ps(1.0f));
      odd = _mm512_mask_mov_ps(odd, one, _mm512_set1_ps(1.0f));
      const __m256bh e = _mm512_cvtneps_pbh(even), o = _mm512_cvtneps_pbh(odd);
      const __m512i w = _mm512_or_si512(_mm512_cvtepu16_epi32(reinterpret_cast<const __m256i&>(e)),
                                        _mm512_slli_epi32(_mm512_cvtepu16_epi32(reinterpret_cast<const __m256i&>(o)), 16));
      _mm512_store_si512(dst + p * 32, w);
    }
  }
}

// Per-thread state of one unit (16 rows, one head).
struct Unit {
  const MlaAttentionArgs* a;
  const Geometry* g;
  const Seq* s;
  int64_t h, nmax;
  int64_t row_blocks;   // 1 or 2
  int32_t n[kRows];     // keys each row sees (0 past the unit's tokens)
  float m[kRows];       // running maxima
  uint16_t* q;          // [32][Wp]
  float* sc[2];         // [32][64] scores of alternate blocks
  uint16_t* p;          // [32][64] probabilities, bf16
  float* o;             // [32][ldo]
};

// Row i of key block b: scale, mask, running maximum (rescaling O), probabilities into p.
inline void SoftmaxRow(Unit& u, int64_t b, int64_t i) {
  const int64_t j0 = b * kKeyBlock;
  const int64_t valid = std::clamp<int64_t>(u.n[i] - j0, 0, kKeyBlock);
  uint16_t* pr = u.p + i * kKeyBlock;
  if (valid == 0) {
    _mm512_store_si512(pr, _mm512_setzero_si512());
    _mm512_store_si512(pr + 32, _mm512_setzero_si512());
    return;
  }
  const float* sr = u.sc[b & 1] + i * kKeyBlock;
  const __m512 scale = _mm512_set1_ps(u.a->scale), ninf = _mm512_set1_ps(-INFINITY);
  __m512 x[kBlockTiles];
  __mmask16 mk[kBlockTiles];
  __m512 mx = ninf;
#pragma GCC unroll 4
  for (int v = 0; v < kBlockTiles; ++v) {
    mk[v] = Mask16(valid - 16 * v);
    x[v] = _mm512_mask_mul_ps(ninf, mk[v], _mm512_maskz_loadu_ps(mk[v], sr + 16 * v), scale);
    mx = _mm512_max_ps(mx, x[v]);
  }
  const float old_max = u.m[i];
  const float new_max = std::max(old_max, _mm512_reduce_max_ps(mx));
  if (new_max > old_max && old_max != -INFINITY) {
    const __m512 alpha = ExpAvx512(_mm512_set1_ps(old_max - new_max));
    float* orow = u.o + i * u.g->ldo;
    for (int64_t c = 0; c < u.g->otiles; ++c)
      _mm512_store_ps(orow + 16 * c, _mm512_mul_ps(alpha, _mm512_load_ps(orow + 16 * c)));
  }
  u.m[i] = new_max;
  const __m512 nm = _mm512_set1_ps(new_max);
  __m512 e[kBlockTiles];
#pragma GCC unroll 4
  for (int v = 0; v < kBlockTiles; ++v)
    e[v] = mk[v] ? _mm512_maskz_mov_ps(mk[v], ExpAvx512(_mm512_sub_ps(x[v], nm))) : _mm512_setzero_ps();
  const __m512bh lo = _mm512_cvtne2ps_pbh(e[1], e[0]), hi = _mm512_cvtne2ps_pbh(e[3], e[2]);
  _mm512_store_si512(pr, reinterpret_cast<const __m512i&>(lo));
  _mm512_store_si512(pr + 32, reinterpret_cast<const __m512i&>(hi));
}

// Scores of NT key tiles (1 or 2) from key tile kt0 of key block b for RB row blocks, into
// sc[b & 1], with the softmax of block `prev` (or none: −1) one row per step from *row on. C tile
// 2r + k: row block r, key tile k; A 4 + r; B 6 + k. Each A load feeds NT products, each B load RB.
template <int RB, int NT>
void ScoresPass(Unit& u, int64_t b, int64_t kt0, int64_t prev, int64_t* row) {
  const Geometry& g = *u.g;
  const int64_t tile = g.steps * 2 * kTileWords;  // uint16 per key tile
  const uint16_t* k = u.s->keys + (b * kBlockTiles + kt0) * tile;
  const int64_t lda = g.Wp * 2, rows = RB * kTileRows;
  const uint16_t* q1 = u.q + kTileRows * g.Wp;
  _tile_zero(0);
  if constexpr (NT > 1) _tile_zero(1);
  if constexpr (RB > 1) _tile_zero(2);
  if constexpr (RB > 1 && NT > 1) _tile_zero(3);
  for (int64_t st = 0; st < g.steps; ++st) {
    const uint16_t* ks = k + st * 2 * kTileWords;
    _tile_loadd(4, u.q + st * kStep, lda);
    _tile_loadd(6, ks, 64);
    _tile_dpbf16ps(0, 4, 6);
    if constexpr (NT > 1) {
      _tile_loadd(7, ks + tile, 64);
      _tile_dpbf16ps(1, 4, 7);
    }
    if (prev >= 0 && *row < rows) SoftmaxRow(u, prev, (*row)++);
    if constexpr (RB > 1) {
      _tile_loadd(5, q1 + st * kStep, lda);
      _tile_dpbf16ps(2, 5, 6);
      if constexpr (NT > 1) _tile_dpbf16ps(3, 5, 7);
    }
  }
  float* sc = u.sc[b & 1] + kt0 * kKeyTile;
  const int64_t lds = kKeyBlock * 4, r1 = kTileRows * kKeyBlock;
  _tile_stored(0, sc, lds);
  if constexpr (NT > 1) _tile_stored(1, sc + 16, lds);
  if constexpr (RB > 1) _tile_stored(2, sc + r1, lds);
  if constexpr (RB > 1 && NT > 1) _tile_stored(3, sc + r1 + 16, lds);
  CompilerBarrier();
}

// Scores of key block b (its tiles below the unit's most keys), with the softmax of block `prev`.
template <int RB>
void Scores(Unit& u, int64_t b, int64_t prev) {
  const int64_t tiles = CeilDiv(std::min(kKeyBlock, u.nmax - b * kKeyBlock), kKeyTile);
  int64_t row = 0;
  for (int64_t kt = 0; kt < tiles; kt += 2) {
    if (tiles - kt >= 2) {
      ScoresPass<RB, 2>(u, b, kt, prev, &row);
    } else {
      ScoresPass<RB, 1>(u, b, kt, prev, &row);
    }
  }
  while (prev >= 0 && row < RB * kTileRows) SoftmaxRow(u, prev, row++);
}

// O (+)= P · V of key block b over NS steps of 32 keys for RB row blocks; O starts from zero at
// b = 0. C tile r: row block r; B 6 + k: step k; A (probabilities) 2 + 2r + k. Each B load feeds
// RB products.
template <int RB, int NS>
void Accumulate(Unit& u, int64_t b) {
  const Geometry& g = *u.g;
  const int64_t nks = u.s->n_pad / kStep, ldo = g.ldo * 4, ldp = kKeyBlock * 2;
  const uint16_t* v = u.s->values_bf16 + ((u.h * nks + b * kBlockSteps) * g.vtiles) * 2 * kTileWords;
  const uint16_t* p1 = u.p + kTileRows * kKeyBlock;
  float* o1 = u.o + kTileRows * g.ldo;
  CompilerBarrier();
  _tile_loadd(2, u.p, ldp);
  if constexpr (NS > 1) _tile_loadd(3, u.p + kStep, ldp);
  if constexpr (RB > 1) _tile_loadd(4, p1, ldp);
  if constexpr (RB > 1 && NS > 1) _tile_loadd(5, p1 + kStep, ldp);
  for (int64_t c = 0; c < g.otiles; ++c) {
    const void* b0 = c < g.vtiles ? static_cast<const void*>(v + c * 2 * kTileWords) : kOnes.w;
    const void* b1 = c < g.vtiles ? static_cast<const void*>(v + (g.vtiles + c) * 2 * kTileWords) : kOnes.w;
    if (b == 0) {
      _tile_zero(0);
      if constexpr (RB > 1) _tile_zero(1);
    } else {
      _tile_loadd(0, u.o + c * 16, ldo);
      if constexpr (RB > 1) _tile_loadd(1, o1 + c * 16, ldo);
    }
    _tile_loadd(6, b0, 64);
    _tile_dpbf16ps(0, 2, 6);
    if constexpr (RB > 1) _tile_dpbf16ps(1, 4, 6);
    if constexpr (NS > 1) {
      _tile_loadd(7, b1, 64);
      _tile_dpbf16ps(0, 3, 7);
      if constexpr (RB > 1) _tile_dpbf16ps(1, 5, 7);
    }
    _tile_stored(0, u.o + c * 16, ldo);
    if constexpr (RB > 1) _tile_stored(1, o1 + c * 16, ldo);
  }
  CompilerBarrier();
}

void ScoresOf(Unit& u, int64_t b, int64_t prev) {
  if (u.row_blocks > 1) {
    Scores<2>(u, b, prev);
  } else {
    Scores<1>(u, b, prev);
  }
}

void AccumulateOf(Unit& u, int64_t b) {
  const bool two_steps = u.nmax - b * kKeyBlock > kStep;
  if (u.row_blocks > 1) {
    if (two_steps) {
      Accumulate<2, 2>(u, b);
    } else {
      Accumulate<2, 1>(u, b);
    }
  } else if (two_steps) {
    Accumulate<1, 2>(u, b);
  } else {
    Accumulate<1, 1>(u, b);
  }
}

// Tokens [t0, t0 + nt) of sequence s, head h: out[t, h, :].
void RunUnit(const MlaAttentionArgs& a, const Geometry& g, const Seq& s, const Block& blk, int64_t h, Unit& u) {
  u.h = h;
  u.row_blocks = CeilDiv(blk.nt, kTileRows);
  u.nmax = 0;
  for (int64_t i = 0; i < kRows; ++i) {
    u.n[i] = i < blk.nt ? static_cast<int32_t>(std::clamp<int64_t>(a.n_keys[blk.t0 + i], 0, s.n)) : 0;
    u.nmax = std::max<int64_t>(u.nmax, u.n[i]);
    u.m[i] = -INFINITY;
  }
  const int64_t H = g.H, dv = g.dv;
  if (u.nmax == 0) {
    for (int64_t i = 0; i < blk.nt; ++i)
      std::memset(a.out + ((blk.t0 + i) * H + h) * dv, 0, static_cast<size_t>(dv) * sizeof(float));
    return;
  }
  for (int64_t i = 0; i < u.row_blocks * kTileRows; ++i) {
    uint16_t* row = u.q + i * g.Wp;
    int64_t done = 0;
    if (i < blk.nt) {
      const int64_t t = blk.t0 + i;
      ConvertRow(a.q_latent + (t * H + h) * g.R, g.R, row);
      if (g.P > 0) ConvertRow(a.q_rope + (t * H + h) * g.P, g.P, row + g.R);
      done = g.W;
    }
    std::memset(row + done, 0, static_cast<size_t>(g.Wp - done) * sizeof(uint16_t));
  }
  CompilerBarrier();
  const int64_t blocks = CeilDiv(u.nmax, kKeyBlock);
  for (int64_t b = 0; b < blocks; ++b) {
    ScoresOf(u, b, b - 1);
    if (b > 0) AccumulateOf(u, b - 1);
  }
  for (int64_t i = 0; i < u.row_blocks * kTileRows; ++i) SoftmaxRow(u, blocks - 1, i);
  AccumulateOf(u, blocks - 1);
  for (int64_t i = 0; i < blk.nt; ++i) {
    const float* orow = u.o + i * g.ldo;
    const float sum = orow[dv];
    const __m512 inv = _mm512_set1_ps(sum > 0.0f ? 1.0f / sum : 0.0f);  // no keys: zero, not 0/0
    float* out = a.out + ((blk.t0 + i) * H + h) * dv;
    for (int64_t c = 0; c < dv; c += 16) {
      const __mmask16 m = Mask16(dv - c);
      _mm512_mask_storeu_ps(out + c, m, _mm512_mul_ps(inv, _mm512_load_ps(orow + c)));
    }
  }
}

void LogOutOfMemory() {
  LogError("cpu backend: MlaAttention (AMX) out of memory");
}

}  // namespace

void AttendValues(const MlaAttentionArgs& a, bool parallel) {
  const Geometry g(a);
  const int64_t T = a.n_tokens;
  // The plan (sequences, blocks) and the packed keys and values: the calling thread's scratch, read
  // by the whole team.
  thread_local Scratch plan_mem, pack_mem;
  int64_t n_seq = 0, n_blocks = 0;
  {
    Carver c(nullptr);
    c.Take<Seq>(T);
    c.Take<Block>(T);
    if (!plan_mem.Reserve(c.used())) {
      LogOutOfMemory();
      throw std::bad_alloc();
    }
  }
  Carver plan(plan_mem.data());
  Seq* seqs = plan.Take<Seq>(T);
  Block* blocks = plan.Take<Block>(T);
  for (int64_t t = 0; t < T; ++t) {
    const int32_t* pages = a.token_pages[t];
    const float* values = a.values[t];
    const bool same_run = t > 0 && pages == a.token_pages[t - 1] && values == a.values[t - 1];
    if (same_run && blocks[n_blocks - 1].nt < kRows) {
      ++blocks[n_blocks - 1].nt;
    } else {
      int64_t s = same_run ? blocks[n_blocks - 1].seq : 0;
      if (!same_run) {
        while (s < n_seq && (seqs[s].pages != pages || seqs[s].values != values)) ++s;
        if (s == n_seq) seqs[n_seq++] = Seq{pages, values, 0, 0, 0, 0, nullptr, nullptr};
      }
      blocks[n_blocks++] = Block{t, 1, s};
    }
    Seq& sq = seqs[blocks[n_blocks - 1].seq];
    sq.n = std::max<int64_t>(sq.n, a.n_keys[t]);
  }
  int64_t key_items = 0, value_items = 0;
  Carver count(nullptr);
  for (int64_t s = 0; s < n_seq; ++s) {
    Seq& sq = seqs[s];
    sq.n_pad = CeilDiv(sq.n, kKeyBlock) * kKeyBlock;
    sq.key_item0 = key_items;
    sq.value_item0 = value_items;
    key_items += sq.n_pad / kKeyTile;
    value_items += g.H * (sq.n_pad / kStep);
    count.Take<uint16_t>(sq.n_pad * g.Wp);
    count.Take<uint16_t>(g.H * sq.n_pad * g.vtiles * 16);
  }
  if (!pack_mem.Reserve(count.used())) {
    LogOutOfMemory();
    throw std::bad_alloc();
  }
  Carver packs(pack_mem.data());
  for (int64_t s = 0; s < n_seq; ++s) {
    seqs[s].keys = packs.Take<uint16_t>(seqs[s].n_pad * g.Wp);
    seqs[s].values_bf16 = packs.Take<uint16_t>(g.H * seqs[s].n_pad * g.vtiles * 16);
  }
  auto seq_of_item = [&](int64_t item, bool keys) {
    int64_t s = 0;
    while (s + 1 < n_seq && (keys ? seqs[s + 1].key_item0 : seqs[s + 1].value_item0) <= item) ++s;
    return s;
  };
  const int64_t n_units = n_blocks * g.H;
  bool failed = false;
#pragma omp parallel if (parallel)
  {
    // Per thread: the unit's queries, scores, probabilities and O, and the key packing rows.
    thread_local Scratch work_mem;
    Carver need(nullptr);
    need.Take<uint16_t>(kRows * g.Wp);
    need.Take<float>(2 * kRows * kKeyBlock);
    need.Take<uint16_t>(kRows * kKeyBlock);
    need.Take<float>(kRows * g.ldo);
    need.Take<uint16_t>(kKeyTile * g.Wp);
    const bool ok = work_mem.Reserve(need.used());
    if (!ok) {
#pragma omp atomic write
      failed = true;
    }
    Carver work(work_mem.data());
    Unit u;
    u.a = &a;
    u.g = &g;
    u.q = work.Take<uint16_t>(kRows * g.Wp);
    u.sc[0] = work.Take<float>(2 * kRows * kKeyBlock);
    u.sc[1] = u.sc[0] + kRows * kKeyBlock;
    u.p = work.Take<uint16_t>(kRows * kKeyBlock);
    u.o = work.Take<float>(kRows * g.ldo);
    uint16_t* tmp = work.Take<uint16_t>(kKeyTile * g.Wp);
#pragma omp for schedule(static) nowait
    for (int64_t item = 0; item < key_items; ++item) {
      if (!ok) continue;
      const Seq& sq = seqs[seq_of_item(item, true)];
      PackKeys(a, g, sq, item - sq.key_item0, tmp);
    }
#pragma omp for schedule(static)
    for (int64_t item = 0; item < value_items; ++item) {
      if (!ok) continue;
      const Seq& sq = seqs[seq_of_item(item, false)];
      const int64_t i = item - sq.value_item0, nks = sq.n_pad / kStep;
      PackValues(a, g, sq, i / nks, i % nks);
    }
    if (ok) LoadTileConfig();
    // Head by head, so that a thread's next unit mostly reads the same packed values (L2), and
    // within a head the later blocks first (they see more keys).
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = n_units - 1; i >= 0; --i) {
      if (!ok) continue;
      const Block& blk = blocks[i % n_blocks];
      u.s = &seqs[blk.seq];
      RunUnit(a, g, *u.s, blk, i / n_blocks, u);
    }
    if (ok) _tile_release();
  }
  if (failed) {
    LogOutOfMemory();
    throw std::bad_alloc();
  }
}

}  // namespace moerun::cpu::mla::amx
