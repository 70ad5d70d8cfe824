// ModelFile: a mapped and verified .moerun file. Loading is verification: the header, the
// FlatBuffers structure, and then every tensor reference, offset, size, shape and block-scale shape
// with overflow-checked arithmetic. Anything wrong is a Status naming the tensor or node.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "moerun_generated.h"
#include "runtime/core/dtype.h"
#include "runtime/core/status.h"
#include "runtime/model/config.h"

namespace moerun {

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<uint64_t> shape;
  uint64_t numel = 0;
  uint64_t size = 0;           // bytes
  const uint8_t* data = nullptr;  // inside the mapping
  int32_t scale = -1;          // index of the block-scale tensor (F8_E4M3)
  uint32_t block_rows = 0;
  uint32_t block_cols = 0;
  uint32_t crc32c = 0;
};

struct LoadProgress {
  // Called with fraction in [0, 1]; returning false cancels the load.
  bool (*callback)(void* user_data, float fraction) = nullptr;
  void* user_data = nullptr;
};

struct VerifyOptions {
  bool check_weight_checksums = false;  // reads every weight byte; off by default (mmap stays lazy)
  LoadProgress progress;
};

class ModelFile {
 public:
  ~ModelFile();
  ModelFile(const ModelFile&) = delete;
  ModelFile& operator=(const ModelFile&) = delete;

  static Result<std::shared_ptr<ModelFile>> Open(const std::string& path, const VerifyOptions& options);
  // The buffer must stay valid and unchanged for the lifetime of the returned object (zero-copy).
  static Result<std::shared_ptr<ModelFile>> FromMemory(const void* data, size_t size, const VerifyOptions& options);

  const ModelConfig& config() const { return config_; }
  const fb::Model* graph() const { return graph_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  uint64_t file_size() const { return size_; }
  // The whole file as mapped (or the caller's buffer).
  const uint8_t* data() const { return base_; }
  // True for a file that Open mapped (its path() is then the one it was opened with); false for
  // FromMemory's buffer.
  bool mapped() const { return mapped_; }
  const std::string& path() const { return path_; }
  uint64_t weights_size() const { return weights_size_; }
  uint32_t format_version() const { return format_version_; }

 private:
  ModelFile() = default;
  Status Verify(const VerifyOptions& options);

  const uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  bool mapped_ = false;
  std::string path_;
  void* owned_copy_ = nullptr;
  uint64_t weights_size_ = 0;
  uint32_t format_version_ = 0;
  const fb::Model* graph_ = nullptr;
  ModelConfig config_;
  std::vector<TensorInfo> tensors_;
};

// Conversions between the schema's config table and ModelConfig (shared by reader and writer).
ModelConfig ConfigFromFlatBuffer(const fb::Config& c);

}  // namespace moerun
