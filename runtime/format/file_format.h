// The .moerun container: a fixed 64-byte little-endian header, the FlatBuffers graph, then the
// weight area. Every tensor's bytes live in the weight area at a 64-bit offset, aligned so the CPU
// kernels can use them in place from an mmap.
//
//   [0, 64)                    FileHeader
//   [graph_offset, +graph_size)    FlatBuffer, root table moerun.fb.Model, identifier "MOER"
//   [weights_offset, +weights_size) tensors, each at weights_offset + Tensor.offset
#pragma once

#include <cstdint>

namespace moerun {

inline constexpr char kFileMagic[8] = {'M', 'O', 'E', 'R', 'U', 'N', '\r', '\n'};
// Version written by this build; readers accept files whose min_reader_version <= kFormatVersion.
inline constexpr uint32_t kFormatVersion = 1;
inline constexpr uint64_t kHeaderSize = 64;
inline constexpr uint64_t kWeightsAlignment = 4096;  // start of the weight area
inline constexpr uint64_t kSmallTensorAlignment = 64;
inline constexpr uint64_t kLargeTensorAlignment = 4096;
inline constexpr uint64_t kLargeTensorBytes = 1 << 20;
inline constexpr uint32_t kFp8BlockSize = 128;

#pragma pack(push, 1)
struct FileHeader {
  char magic[8];
  uint32_t format_version;
  uint32_t min_reader_version;
  uint64_t graph_offset;
  uint64_t graph_size;
  uint64_t weights_offset;
  uint64_t weights_size;
  uint32_t graph_crc32c;   // CRC-32C of the FlatBuffer bytes
  uint32_t flags;          // reserved, 0
  uint32_t reserved;       // 0
  uint32_t header_crc32c;  // CRC-32C of bytes [0, 60)
};
#pragma pack(pop)
static_assert(sizeof(FileHeader) == kHeaderSize, "header layout");

inline uint64_t TensorAlignment(uint64_t bytes) {
  return bytes >= kLargeTensorBytes ? kLargeTensorAlignment : kSmallTensorAlignment;
}

}  // namespace moerun
