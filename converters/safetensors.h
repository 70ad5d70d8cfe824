// Reading Hugging Face checkpoints: one .safetensors file (SafetensorsFile) and a whole checkpoint
// folder with config.json and one file or an index of shards (Checkpoint). Both treat their input as
// untrusted: every header field is validated with checked arithmetic before anything is sized from
// it, and every error names the file (and tensor) it is about.
//
// safetensors layout: 8-byte little-endian header length N, N bytes of JSON
//   { "__metadata__": {str: str}, name: {"dtype": "BF16", "shape": [..], "data_offsets": [b, e]}, ... }
// then the data area; offsets are relative to its start (byte 8 + N).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "runtime/core/dtype.h"
#include "runtime/core/status.h"

namespace moerun::convert {

// Element types a safetensors header may name. Only the first four can be converted; the others
// are parsed (so sizes can be validated) and rejected by the importer with kUnsupported.
enum class StDType : uint8_t {
  kF32, kBF16, kF16, kF8E4M3,
  kF64, kF8E5M2, kI64, kI32, kI16, kI8, kU64, kU32, kU16, kU8, kBool,
};

const char* StDTypeName(StDType t);  // safetensors spelling: "BF16", "F8_E4M3", ...
size_t StDTypeSize(StDType t);
// The runtime dtype for a convertible safetensors dtype; false for the others.
bool ToRuntimeDType(StDType t, DType* out);

struct StTensor {
  std::string name;
  StDType dtype = StDType::kF32;
  std::vector<uint64_t> shape;
  uint64_t numel = 0;
  uint64_t begin = 0;  // byte offsets relative to the data area
  uint64_t end = 0;
  uint64_t size() const { return end - begin; }
};

class SafetensorsFile {
 public:
  static constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  // Opens, maps (read-only) and validates the header. Errors: kIo when the file cannot be opened,
  // stat'ed or mapped; kCorruptFile for a malformed header (truncated, length past EOF or over
  // 100 MB, bad JSON, duplicate keys, bad shape / offsets, size mismatch, overlapping tensors);
  // kUnsupported for a dtype name this reader does not know.
  static Result<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);

  const std::string& path() const { return path_; }
  uint64_t file_size() const { return file_size_; }
  uint64_t data_offset() const { return data_offset_; }  // 8 + N
  const std::vector<StTensor>& tensors() const { return tensors_; }  // in header order
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const StTensor* Find(const std::string& name) const;

  // Zero-copy view of a tensor's bytes inside the mapping, valid while this object lives.
  const uint8_t* Data(const StTensor& t) const { return base_ + data_offset_ + t.begin; }
  // Copies `bytes` bytes starting `offset` bytes into tensor `t` with pread (a clean kIo error,
  // never SIGBUS, if the file shrank since it was opened).
  Status Read(const StTensor& t, uint64_t offset, void* dst, uint64_t bytes) const;
  // Drops the pages of `t` from this process's resident set (after it was consumed via Data()).
  void Release(const StTensor& t) const;

 private:
  SafetensorsFile() = default;
  Status ParseHeader(const std::string& header);

  std::string path_;
  int fd_ = -1;
  const uint8_t* base_ = nullptr;
  uint64_t file_size_ = 0;
  uint64_t data_offset_ = 0;
  std::vector<StTensor> tensors_;
  std::unordered_map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// One tensor to write with WriteSafetensors.
struct StTensorData {
  std::string name;
  StDType dtype = StDType::kF32;
  std::vector<uint64_t> shape;
  std::vector<uint8_t> bytes;
};

// Writes a safetensors file: tensors in the given order, header padded with spaces to a multiple
// of 8 bytes. Errors: kInvalidArgument when a tensor's byte count does not match its shape, kIo.
Status WriteSafetensors(const std::string& path, const std::vector<StTensorData>& tensors,
                        const std::map<std::string, std::string>& metadata = {});

// A Hugging Face checkpoint folder: config.json plus `model.safetensors`, or
// `model.safetensors.index.json` whose weight_map names the shard of every tensor (the single file
// wins if both exist, as in transformers).
class Checkpoint {
 public:
  struct Ref {
    const SafetensorsFile* file = nullptr;
    const StTensor* tensor = nullptr;
  };

  // Errors: kIo for a missing config.json / weights / shard; kCorruptFile for a malformed index
  // (message names the index file) and whatever SafetensorsFile::Open reports; kInvalidArgument when
  // the index and the shards disagree (a mapped tensor absent from its shard, or a shard tensor the
  // index does not list: "unexpected").
  static Result<std::unique_ptr<Checkpoint>> Open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  const std::string& config_path() const { return config_path_; }
  const std::string& config_text() const { return config_text_; }
  // "model.safetensors" or "model.safetensors.index.json" (full path), for error messages.
  const std::string& weights_source() const { return weights_source_; }
  bool sharded() const { return sharded_; }

  const Ref* Find(const std::string& name) const;
  // All tensor names, sorted.
  std::vector<std::string> Names() const;
  size_t num_tensors() const { return refs_.size(); }
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }

 private:
  Checkpoint() = default;
  Status LoadIndex(const std::string& index_path);

  std::string dir_;
  std::string config_path_;
  std::string config_text_;
  std::string weights_source_;
  bool sharded_ = false;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::unordered_map<std::string, Ref> refs_;
};

}  // namespace moerun::convert
