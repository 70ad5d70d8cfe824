// AMX tile setup shared by the two AMX kernels (q8_amx.cc, mla_values_amx.cc), which are built with
// different -m flags: the functions are static, so each file keeps its own copy and the linker never
// picks one file's code for the other. Include it only from files built with -mamx-tile.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace moerun::cpu::amx_tiles {

// GCC's tile intrinsics are asm statements that do not tell the compiler they touch memory: plain
// loads and stores around tile loads and stores of the same buffers (the config, padded copies)
// must be fenced off by this barrier.
static inline void CompilerBarrier() { __asm__ volatile("" ::: "memory"); }

// The 64-byte tile configuration (palette 1).
struct TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// All eight tiles 16 rows × 64 bytes. Tile configuration is per-thread state: every thread that runs
// tiles calls this first (and _tile_release when done).
static inline void LoadTileConfig16x64() {
  alignas(64) TileConfig cfg = {};
  cfg.palette_id = 1;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  CompilerBarrier();
  _tile_loadconfig(&cfg);
}

}  // namespace moerun::cpu::amx_tiles
