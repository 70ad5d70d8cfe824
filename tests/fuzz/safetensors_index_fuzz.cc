// Fuzzes the sharded-checkpoint index (model.safetensors.index.json) through Checkpoint::Open: the
// input becomes the index of a scratch checkpoint folder whose two small shards are valid, so an
// index that names them correctly reaches the cross-checks between index and shards.
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "converters/safetensors.h"

namespace {

namespace fs = std::filesystem;
using moerun::convert::StDType;
using moerun::convert::StTensorData;

// Shard names and contents the seed corpus (corpus/safetensors_index) refers to.
std::string MakeCheckpoint() {
  std::string tmpl = (fs::temp_directory_path() / "moerun_fuzz_index_XXXXXX").string();
  if (!mkdtemp(tmpl.data())) __builtin_trap();
  std::ofstream(tmpl + "/config.json") << "{}";
  const StTensorData a{"model.embed_tokens.weight", StDType::kBF16, {4, 2}, std::vector<uint8_t>(16, 1)};
  const StTensorData b{"model.norm.weight", StDType::kF32, {2}, std::vector<uint8_t>(8, 2)};
  const StTensorData c{"lm_head.weight", StDType::kBF16, {4, 2}, std::vector<uint8_t>(16, 3)};
  const StTensorData d{"lm_head.weight_scale_inv", StDType::kF32, {1, 1}, std::vector<uint8_t>(4, 4)};
  if (!moerun::convert::WriteSafetensors(tmpl + "/model-00001-of-00002.safetensors", {a, b}).ok() ||
      !moerun::convert::WriteSafetensors(tmpl + "/model-00002-of-00002.safetensors", {c, d}).ok())
    __builtin_trap();
  return tmpl;
}

std::string g_dir;  // set once by LLVMFuzzerInitialize

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  g_dir = MakeCheckpoint();
  std::atexit([] { fs::remove_all(g_dir); });
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  {
    std::ofstream out(g_dir + "/model.safetensors.index.json", std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
    if (!out) __builtin_trap();
  }
  auto c = moerun::convert::Checkpoint::Open(g_dir);
  if (!c.ok()) return 0;
  for (const std::string& name : c.value()->Names())
    if (c.value()->Find(name) == nullptr) __builtin_trap();
  return 0;
}
