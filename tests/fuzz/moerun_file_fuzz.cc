// Fuzzes the .moerun loader: ModelFile::FromMemory (header, FlatBuffers verifier, tensor table) and,
// when that accepts the input, Model::Create with the reference backend (roles, shapes, expert counts).
//
// Input: one flag byte, then the file.
//   bit 0: VerifyOptions::check_weight_checksums.
//   bit 1: keep the stored header and graph CRCs. Otherwise the harness recomputes them first;
//          without that nearly every mutation dies at the checksum and the verifier behind it is
//          never reached.
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "runtime/core/dtype.h"
#include "runtime/format/file_format.h"
#include "runtime/format/model_file.h"
#include "runtime/model/model.h"

namespace {

void RepairChecksums(uint8_t* file, size_t size) {
  if (size < moerun::kHeaderSize) return;
  moerun::FileHeader h;
  std::memcpy(&h, file, sizeof(h));
  if (h.graph_size <= size && h.graph_offset <= size - h.graph_size)
    h.graph_crc32c = moerun::Crc32c(file + h.graph_offset, h.graph_size);
  h.header_crc32c = moerun::Crc32c(&h, offsetof(moerun::FileHeader, header_crc32c));
  std::memcpy(file, &h, sizeof(h));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t flags = data[0];
  ++data;
  --size;
  // Page-aligned like an mmap, so FromMemory reads in place, but exactly `size` bytes long so ASan
  // sees any read past the end.
  void* p = nullptr;
  if (posix_memalign(&p, moerun::kLargeTensorAlignment, size ? size : 1) != 0) return 0;
  std::unique_ptr<uint8_t, decltype(&std::free)> buf(static_cast<uint8_t*>(p), &std::free);
  if (size) std::memcpy(buf.get(), data, size);
  if (!(flags & 2)) RepairChecksums(buf.get(), size);

  moerun::VerifyOptions options;
  options.check_weight_checksums = flags & 1;
  auto file = moerun::ModelFile::FromMemory(buf.get(), size, options);
  if (!file.ok()) return 0;
  auto model = moerun::Model::Create(file.value(), "reference", moerun::Precision::kF32, 1);
  return 0;
}
