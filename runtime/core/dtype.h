// Element types and scalar conversions shared by the converter, the runtime and every backend.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace moerun {

// kQ8Panel: int8 with per-row 128-column group scales in the CPU's panel layout (runtime/core/q8_panel.h);
// its bytes are not in row-major element order, so size and element access go through that header.
enum class DType : uint8_t { kF32 = 0, kBF16 = 1, kF16 = 2, kF8E4M3 = 3, kQ8Panel = 4 };

constexpr int kMaxDType = 4;

inline size_t DTypeSize(DType t) {
  switch (t) {
    case DType::kF32: return 4;
    case DType::kBF16: return 2;
    case DType::kF16: return 2;
    case DType::kF8E4M3: return 1;
    case DType::kQ8Panel: return 1;
  }
  return 0;
}

inline const char* DTypeName(DType t) {
  switch (t) {
    case DType::kF32: return "f32";
    case DType::kBF16: return "bf16";
    case DType::kF16: return "f16";
    case DType::kF8E4M3: return "f8_e4m3";
    case DType::kQ8Panel: return "q8_panel";
  }
  return "unknown";
}

inline float Bf16ToF32(uint16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Round to nearest even; NaN stays NaN.
inline uint16_t F32ToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

// p[i] = Bf16ToF32(F32ToBf16(p[i])) for i < n, without branches so that the loop vectorises.
inline void RoundToBf16InPlace(float* p, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    uint32_t x;
    std::memcpy(&x, p + i, 4);
    const uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) & 0xffff0000u;
    const uint32_t quiet = (x | 0x00400000u) & 0xffff0000u;  // NaN stays NaN, as F32ToBf16
    x = (x & 0x7fffffffu) > 0x7f800000u ? quiet : rounded;
    std::memcpy(p + i, &x, 4);
  }
}

inline float F16ToF32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  float f;
  if (exp == 0) {
    f = std::ldexp(static_cast<float>(man), -24);
  } else if (exp == 31) {
    f = man ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
  } else {
    f = std::ldexp(static_cast<float>(man | 0x400u), static_cast<int>(exp) - 25);
  }
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  bits |= sign;
  std::memcpy(&f, &bits, 4);
  return f;
}

// float8_e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa; no infinities; 0x7f/0xff are NaN; max 448.
inline float F8E4M3ToF32(uint8_t v) {
  const uint32_t sign = v >> 7;
  const uint32_t exp = (v >> 3) & 0xfu;
  const uint32_t man = v & 0x7u;
  float f;
  if (exp == 0xf && man == 0x7) {
    f = std::numeric_limits<float>::quiet_NaN();
  } else if (exp == 0) {
    f = std::ldexp(static_cast<float>(man), -9);
  } else {
    f = std::ldexp(static_cast<float>(man | 0x8u), static_cast<int>(exp) - 10);
  }
  return sign ? -f : f;
}

// Lookup table form used by kernels (256 entries, built once).
const float* F8E4M3Table();

inline float LoadAsF32(DType t, const void* base, size_t index) {
  switch (t) {
    case DType::kF32: return static_cast<const float*>(base)[index];
    case DType::kBF16: return Bf16ToF32(static_cast<const uint16_t*>(base)[index]);
    case DType::kF16: return F16ToF32(static_cast<const uint16_t*>(base)[index]);
    case DType::kF8E4M3: return F8E4M3ToF32(static_cast<const uint8_t*>(base)[index]);
    case DType::kQ8Panel: return static_cast<float>(static_cast<int>(static_cast<const uint8_t*>(base)[index]) - 128);
  }
  return 0.0f;
}

// Checked arithmetic for sizes computed from untrusted input.
inline bool CheckedMul(uint64_t a, uint64_t b, uint64_t* out) { return !__builtin_mul_overflow(a, b, out); }
inline bool CheckedAdd(uint64_t a, uint64_t b, uint64_t* out) { return !__builtin_add_overflow(a, b, out); }

inline uint64_t CeilDiv(uint64_t a, uint64_t b) { return (a + b - 1) / b; }
inline uint64_t AlignUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

// Bytes a tensor of this dtype and shape occupies; false on overflow or a shape the dtype cannot hold
// (q8_panel needs rank >= 2: [..., rows, cols], each matrix padded to whole panels and quads).
inline bool StorageBytes(DType t, const std::vector<uint64_t>& shape, uint64_t* bytes) {
  uint64_t n = 1;
  if (t != DType::kQ8Panel) {
    for (uint64_t d : shape)
      if (!CheckedMul(n, d, &n)) return false;
    return CheckedMul(n, DTypeSize(t), bytes);
  }
  if (shape.size() < 2) return false;
  for (size_t i = 0; i + 2 < shape.size(); ++i)
    if (!CheckedMul(n, shape[i], &n)) return false;
  const uint64_t rows = shape[shape.size() - 2], cols = shape.back();
  if (rows > (uint64_t{1} << 40) || cols > (uint64_t{1} << 40)) return false;
  const uint64_t matrix = CeilDiv(rows, 16) * 16 * CeilDiv(cols, 4) * 4;
  return CheckedMul(n, matrix, bytes);
}

uint32_t Crc32c(const void* data, size_t size, uint32_t crc = 0);

// "[a, b, c]" for error messages.
inline std::string ShapeString(const std::vector<uint64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

}  // namespace moerun
