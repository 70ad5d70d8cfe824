// Fuzzes SafetensorsFile::Open (8-byte length, JSON header, dtype / shape / offset validation) on the
// input as a whole file, and checks the contract the importer relies on: every accepted tensor lies
// inside the file and its byte span matches its shape and dtype.
#include <sys/mman.h>
#include <unistd.h>

#include <string>

#include "converters/safetensors.h"

namespace {

// An in-memory file reopened through /proc, so Open runs its real open/fstat/mmap path without
// touching a file system on every input.
int MemFile() {
  static const int fd = memfd_create("safetensors_fuzz", MFD_CLOEXEC);
  return fd;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const int fd = MemFile();
  if (fd < 0 || ftruncate(fd, 0) != 0) __builtin_trap();
  if (size && pwrite(fd, data, size, 0) != static_cast<ssize_t>(size)) __builtin_trap();
  auto f = moerun::convert::SafetensorsFile::Open("/proc/self/fd/" + std::to_string(fd));
  if (!f.ok()) return 0;
  const auto& file = *f.value();
  for (const auto& t : file.tensors()) {
    if (t.end > file.file_size() - file.data_offset()) __builtin_trap();
    if (t.size() != t.numel * moerun::convert::StDTypeSize(t.dtype)) __builtin_trap();
    if (file.Find(t.name) == nullptr) __builtin_trap();
  }
  return 0;
}
