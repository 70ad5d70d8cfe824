// AMX int8 Linear on Q8_PANEL weights: the prefill path (many activation rows).
//
// tdpbsud multiplies a signed A tile by an unsigned B tile in VNNI layout, which is exactly the
// format: A = 16 activation rows × 64 bytes of xq, B = 16 consecutive quads of one panel read
// straight from the weights (stride 64), C = 16 activation rows × 16 output rows of int32. A
// 128-column group is two tile products; then C goes through memory, is corrected for the +128
// (−128·Σq), converted and scaled into f32 accumulators. The C tiles of the next group are computed
// by the AMX unit while the vector units do that epilogue. With a single group (K <= 128: MLA's
// per-head absorption, 16 heads × 8 layers of them per prefill) the epilogue writes y directly, with
// no accumulators to clear, update and copy out (N = 512, M = 512: 2.0× faster).
//
// Register tile: up to 2 row blocks × 2 panels (4 C, 2 A, 2 B tiles: all 8), so each tile load feeds
// two products. The epilogue, not the AMX unit, bounds the kernel (without it: 1.4× faster), mostly
// through its loads; it handles both panels of a row block together so that xs and Σq are loaded
// once per row for two C tiles (−25% epilogue loads: M = 512 hot +4..12%, M = 48 +3..7%).
//
// Weights come from DRAM in prefill (a layer's panels are read once per forward), and the hardware
// prefetcher runs only ~20 lines ahead: the tile loads then wait for memory while the vector units
// idle. So each block also prefetches (into L2) a slice of the next panel pair the thread will run,
// the slices spread evenly over all blocks of the current pair: the DRAM stream runs at a steady rate
// alongside the compute. Experts of 1408×2048 from DRAM, 32-64 rows each: +7..19% (1 and 2 threads).
// The next pair is also known across chunk boundaries (a thread claims its next chunk early): whole
// experts from DRAM (gate, up, down at 48 rows, one expert per thread) +5% at 1 thread and +8% at 2
// (medians of 11 interleaved runs), no change with the weights in cache. The price is
// one prefetch instruction per weight line: when the weights were already in L2/L3 and M is small
// (M = 48: ~8 prefetches per tile product), up to ~8% slower; at M = 512 it is 1/16 of that. In a
// whole V2-Lite prefill (512 tokens, int8) this was 5-6% faster on 1 and on 2 threads.
//
// Tried and dropped: K-blocking so that B stays in L1 across row blocks (no gain); C tiles
// double-buffered across groups with the epilogue two groups behind (no gain); prefetching the next
// step's A and B into L1 (hot -5..10%); starting each group's C tiles from a tile of −128·Σq written
// by vector stores, instead of zero, to drop the epilogue's vpdpwssd (same bits, hot M = 48..512:
// 9-24% slower with the tile written just before, 1-11% slower written a group ahead: the C tile
// loads cost more than the correction); prefetching two or four panel pairs ahead instead of one
// (cold experts, 1 thread: no change).
//
// An M that is not a multiple of 16 ends with a row block that overlaps the previous
// one (rows are recomputed, not read past M); a K that is not a multiple of 64 ends with a partial
// step whose B quads are copied to a zero-padded buffer (xq is zero there, and the panel may be the
// last bytes of the mapping).
//
// Built with -mavx512* -mamx-tile -mamx-int8; called only after DetectSupport().amx (which asked
// Linux for the tile state). Uses no inline functions or templates from other headers (see
// q8_avx512.cc), except amx_tiles.h's static ones.
#include "backends/cpu/simd_avx512.h"  // first: see there

#include <omp.h>

#include "backends/cpu/amx_tiles.h"
#include "backends/cpu/q8_kernels.h"

namespace moerun::cpu::q8::amx {
namespace {

constexpr int64_t kQuadsPerGroup = kGroupCols / 4;
constexpr int64_t kStepQuads = 16;  // quads per tile product: 64 bytes of K
// Panels per unit of work handed to a thread: at most 4 panel pairs, and at least 4 units per thread
// when the matrix is small enough for that, down to one pair.
constexpr int64_t kMaxChunkPanels = 8;
// Waking the OpenMP team is worth it above this many multiply-adds.
constexpr int64_t kMinParallelMacs = int64_t{1} << 22;

inline int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline __mmask16 TailMask16(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << n) - 1u);
}

using amx_tiles::CompilerBarrier;

// Tiles 0-3: C (row block r, panel t) = 2r + t; 4-5: A of row block r; 6-7: B of panel t. All are
// 16 rows × 64 bytes (amx_tiles::LoadTileConfig16x64).
void LoadTileConfig() { amx_tiles::LoadTileConfig16x64(); }

using Args = Int8Args;

// The tile register file as a template: RB row blocks starting at rows[], PB panels from p.
template <int RB, int PB>
class Block {
 public:
  // [pf, pf_end): bytes of the next panel pair for this block to prefetch, spread over its steps.
  Block(const Args& a, const int64_t* rows, int64_t p, const uint8_t* pf, const uint8_t* pf_end)
      : a_(a), p_(p), pf_(pf), pf_end_(pf_end) {
    pf_lines_ = pf_end > pf ? CeilDiv(CeilDiv(pf_end - pf, 64), CeilDiv(a.quads, kStepQuads)) : 0;
    for (int r = 0; r < RB; ++r) rows_[r] = rows[r];
    for (int t = 0; t < PB; ++t) panel_[t] = a.data + (p + t) * a.panel_bytes;
    // The y rows this block ends with are far apart and usually not cached; missing stores at the
    // end would hold up the store buffer (it commits in order) and with it the next block's
    // accumulator updates. Fetched now, they arrive while the block computes (~10% at M = 512).
    for (int r = 0; r < RB; ++r)
      for (int t = 0; t < PB; ++t)
        for (int i = 0; i < 16; ++i) {
          const char* y = reinterpret_cast<const char*>(a.y + (rows_[r] + i) * a.ldy + (p + t) * kPanelRows);
          _mm_prefetch(y, _MM_HINT_T0);
          _mm_prefetch(y + 63, _MM_HINT_T0);
        }
    const int64_t tail = a.quads % kStepQuads;
    if (tail != 0) {
      for (int t = 0; t < PB; ++t) {
        const uint8_t* src = panel_[t] + (a.quads - tail) * kQuadBytes;
        for (int64_t q = 0; q < kStepQuads; ++q)
          _mm512_store_si512(btail_[t] + q * kQuadBytes,
                             q < tail ? _mm512_loadu_si512(src + q * kQuadBytes) : _mm512_setzero_si512());
      }
      CompilerBarrier();
    }
  }

  void Run() {
    Products(0, -1);
    if (a_.G == 1) {
      // One group (K <= 128, as in MLA's per-head absorptions): the epilogue writes y directly.
      StoreC();
      for (int r = 0; r < RB; ++r) Epilogue</*kToY=*/true>(0, r);
      return;
    }
    for (int c = 0; c < RB * PB; ++c)
      for (int i = 0; i < 16; ++i) _mm512_store_ps(facc_[c] + 16 * i, _mm512_setzero_ps());
    for (int64_t g = 0; g < a_.G; ++g) {
      StoreC();
      if (g + 1 < a_.G) {
        Products(g + 1, g);
      } else {
        for (int r = 0; r < RB; ++r) Epilogue<false>(g, r);
      }
    }
    for (int r = 0; r < RB; ++r)
      for (int t = 0; t < PB; ++t) {
        const __mmask16 mask = TailMask16(a_.N - (p_ + t) * kPanelRows);
        float* y = a_.y + rows_[r] * a_.ldy + (p_ + t) * kPanelRows;
        for (int i = 0; i < 16; ++i) _mm512_mask_storeu_ps(y + i * a_.ldy, mask, _mm512_load_ps(facc_[r * PB + t] + 16 * i));
      }
  }

 private:
  // C = Σ over group g's 64-byte steps of A · B, with the epilogue of group `done` (stored in c_)
  // spread between the tile products: the AMX unit and the vector units then work side by side
  // within the out-of-order window instead of taking turns.
  void Products(int64_t g, int64_t done) {
    _tile_zero(0);
    if constexpr (PB > 1) _tile_zero(1);
    if constexpr (RB > 1) _tile_zero(2);
    if constexpr (RB > 1 && PB > 1) _tile_zero(3);
    int pending = done >= 0 ? 0 : RB;  // next row block of group `done` to finish
    const int64_t q0 = g * kQuadsPerGroup;
    const int64_t q1 = q0 + kQuadsPerGroup < a_.quads ? q0 + kQuadsPerGroup : a_.quads;
    for (int64_t q = q0; q < q1; q += kStepQuads) {
      const bool full = q + kStepQuads <= a_.quads;
      for (int64_t i = 0; i < pf_lines_; ++i, pf_ += 64)
        if (pf_ < pf_end_) _mm_prefetch(reinterpret_cast<const char*>(pf_), _MM_HINT_T1);
      _tile_loadd(4, a_.xq + rows_[0] * a_.xstride + q * 4, a_.xstride);
      if constexpr (RB > 1) _tile_loadd(5, a_.xq + rows_[1] * a_.xstride + q * 4, a_.xstride);
      _tile_loadd(6, full ? panel_[0] + q * kQuadBytes : btail_[0], kQuadBytes);
      if constexpr (PB > 1) _tile_loadd(7, full ? panel_[1] + q * kQuadBytes : btail_[1], kQuadBytes);
      _tile_dpbsud(0, 4, 6);
      if constexpr (PB > 1) _tile_dpbsud(1, 4, 7);
      if (pending < RB) Epilogue<false>(done, pending++);
      if constexpr (RB > 1) {
        _tile_dpbsud(2, 5, 6);
        if constexpr (PB > 1) _tile_dpbsud(3, 5, 7);
      }
    }
    while (pending < RB) Epilogue<false>(done, pending++);
  }

  void StoreC() {
    _tile_stored(0, c_[0], 64);
    if constexpr (PB > 1) _tile_stored(1, c_[1], 64);
    if constexpr (RB > 1) _tile_stored(2, c_[PB], 64);
    if constexpr (RB > 1 && PB > 1) _tile_stored(3, c_[3], 64);
  }

  // facc += float(C − 128·Σq) · (sw · xs), row by row: the same operations as the scalar kernel.
  // C − 128·Σq is one vpdpwssd with Σq broadcast from memory: its low int16 times −128, its high
  // int16 (the sign, as |Σq| <= 127·128) times 0; that saves a broadcast shuffle per row. The C tiles
  // of row block r (all panels) go together: the row's Σq and xs are broadcast once for them.
  // kToY (a single group): y = fma(float(C − 128·Σq), sw · xs, 0), the first and only step of the
  // sum, stored straight to y without the f32 accumulators.
  template <bool kToY>
  void Epilogue(int64_t g, int r) {
    const __m512i minus128 = _mm512_set1_epi32(0x0000ff80);
    // Locals only: intrinsic stores go through may_alias vector types, so anything read through
    // a_ or this would be reloaded after every accumulator store.
    const int64_t G = a_.G;
    __m512 sw[PB];
    for (int t = 0; t < PB; ++t) sw[t] = _mm512_loadu_ps(a_.scale + ((p_ + t) * G + g) * kPanelRows);
    const float* xs = a_.xs + rows_[r] * G + g;
    const int32_t* xsum = a_.xsum + rows_[r] * G + g;
    [[maybe_unused]] float* y[PB];
    [[maybe_unused]] __mmask16 mask[PB];
    [[maybe_unused]] const int64_t ldy = a_.ldy;
    if constexpr (kToY)
      for (int t = 0; t < PB; ++t) {
        y[t] = a_.y + rows_[r] * ldy + (p_ + t) * kPanelRows;
        mask[t] = TailMask16(a_.N - (p_ + t) * kPanelRows);
      }
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) {
      const __m512i qsum = _mm512_set1_epi32(xsum[i * G]);
      const __m512 x = _mm512_set1_ps(xs[i * G]);
      for (int t = 0; t < PB; ++t) {
        const int32_t* cbuf = c_[r * PB + t];
        const __m512i isum = _mm512_dpwssd_epi32(_mm512_load_si512(cbuf + 16 * i), minus128, qsum);
        const __m512 scale = _mm512_mul_ps(sw[t], x);
        if constexpr (kToY) {
          _mm512_mask_storeu_ps(y[t] + i * ldy, mask[t], _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), scale, _mm512_setzero_ps()));
        } else {
          float* facc = facc_[r * PB + t];
          _mm512_store_ps(facc + 16 * i, _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), scale, _mm512_load_ps(facc + 16 * i)));
        }
      }
    }
  }

  const Args& a_;
  int64_t p_;
  const uint8_t* pf_;
  const uint8_t* pf_end_;
  int64_t pf_lines_;  // prefetches per step
  int64_t rows_[RB];
  const uint8_t* panel_[PB];
  alignas(64) int32_t c_[RB * PB][256];
  alignas(64) uint8_t btail_[PB][kStepQuads * kQuadBytes];
  alignas(64) float facc_[RB * PB][256];  // f32 accumulators, laid out as the C tiles
};

// All row blocks of panels [p, p + PB), prefetching [next, next + next_bytes) (the panels this
// thread runs next) into L2 in one slice per block.
template <int PB>
void RowBlocks(const Args& a, int64_t M, int64_t p, const uint8_t* next, int64_t next_bytes) {
  // Block b starts at 16b, the last one at M − 16 so that it stays inside the activations.
  const int64_t nb = CeilDiv(M, 16);
  const int64_t runs = CeilDiv(nb, 2);
  auto slice = [&](int64_t b) { return next + next_bytes * (b / 2) / runs; };
  int64_t b = 0;
  for (; b + 2 <= nb; b += 2) {
    const int64_t rows[2] = {16 * b, 16 * (b + 1) < M - 16 ? 16 * (b + 1) : M - 16};
    Block<2, PB>(a, rows, p, slice(b), slice(b + 2)).Run();
  }
  if (b < nb) {
    const int64_t rows[1] = {M - 16};
    Block<1, PB>(a, rows, p, slice(b), slice(b + 2)).Run();
  }
}

}  // namespace

void LinearInt8(const WeightView& w, const int8_t* xq, const float* xs, const int32_t* xsum, int64_t M, float* y,
                int64_t ldy) {
  const Args a = MakeInt8Args(w, xq, xs, xsum, y, ldy);
  const int64_t P = CeilDiv(a.N, kPanelRows);
  int64_t next_chunk = 0;
#pragma omp parallel if (M * P * kPanelRows * w.cols >= kMinParallelMacs)
  {
    // Tile configuration is per-thread state: set it up in every thread that runs tiles.
    LoadTileConfig();
    // Threads split the panels (never the rows, whose blocks may overlap), each panel pair staying
    // in cache while all row blocks go by. They take chunks of panels in turn rather than one
    // fixed range each: when one core runs slower (this host's cores drift apart), the other takes
    // more chunks instead of waiting at the end (2 threads, M = 512: median +4..31%). Every output
    // is still computed by one thread in the same order, so the results do not depend on the split.
    const int64_t T = omp_get_num_threads();
    int64_t chunk_panels = P / (4 * T) / 2 * 2;
    chunk_panels = chunk_panels < 2 ? 2 : (chunk_panels > kMaxChunkPanels ? kMaxChunkPanels : chunk_panels);
    auto claim = [&] {
      int64_t chunk;
#pragma omp atomic capture
      chunk = next_chunk++;
      return chunk * chunk_panels < P ? chunk * chunk_panels : P;
    };
    // A thread claims its next chunk as it starts the last pair of the current one, so that this
    // pair can prefetch the next chunk's first pair: the DRAM stream then never waits on a chunk
    // boundary (one thread runs the whole matrix as 4-pair chunks when experts go one per thread).
    for (int64_t p0 = claim(); p0 < P;) {
      const int64_t p1 = p0 + chunk_panels < P ? p0 + chunk_panels : P;
      int64_t following = P;
      for (int64_t p = p0; p < p1; p += 2) {
        const int64_t pb = p + 2 <= p1 ? 2 : 1;
        int64_t q = p + pb;
        if (q >= p1) q = following = claim();
        const int64_t np = P - q < 2 ? P - q : 2;
        const uint8_t* next = a.data + q * a.panel_bytes;
        if (pb == 2) RowBlocks<2>(a, M, p, next, np * a.panel_bytes);
        else RowBlocks<1>(a, M, p, next, np * a.panel_bytes);
      }
      p0 = following;
    }
    _tile_release();
  }
}

}  // namespace moerun::cpu::q8::amx
