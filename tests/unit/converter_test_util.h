// Shared by the converter tests (converter_test.cc, converter_errors_test.cc): scratch folders,
// fixture lookup, and EditableCheckpoint, a writable copy of a golden checkpoint whose shards and
// index the error tests break one way at a time.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "converters/converter.h"
#include "converters/safetensors.h"
#include "tests/unit/scoped_temp_dir.h"

namespace moerun::convert {

namespace fs = std::filesystem;
using nlohmann::json;

// Each test's scratch folder.
class TempDir : public testing::ScopedTempDir {
 public:
  TempDir() : ScopedTempDir("moerun_conv") {}
};

inline bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

inline std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

inline void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << text;
}

// The project's fixture if present, else the shared one.
inline std::string FixtureDir(const std::string& name) {
  for (const std::string& root : {std::string(MOERUN_TEST_DATA_DIR) + "/golden", std::string(MOERUN_SHARED_GOLDEN_DIR)})
    if (fs::exists(root + "/" + name + "/config.json")) return root + "/" + name;
  return "";
}

// A writable copy of a golden checkpoint with helpers that edit its shards and index.
class EditableCheckpoint {
 public:
  explicit EditableCheckpoint(const std::string& fixture) {
    src_ = FixtureDir(fixture);
    if (src_.empty()) return;
    for (const auto& e : fs::directory_iterator(src_)) {
      const std::string name = e.path().filename().string();
      if (name == "golden.safetensors") continue;
      fs::copy_file(e.path(), dir_ / name);
    }
  }
  bool ok() const { return !src_.empty(); }
  std::string path() const { return dir_.path(); }
  std::string file(const std::string& name) const { return dir_ / name; }
  bool sharded() const { return fs::exists(dir_ / "model.safetensors.index.json"); }

  json Index() const { return json::parse(ReadFile(dir_ / "model.safetensors.index.json")); }
  void SetIndex(const json& j) const { WriteFile(dir_ / "model.safetensors.index.json", j.dump(2)); }
  json Config() const { return json::parse(ReadFile(dir_ / "config.json")); }
  void SetConfig(const json& j) const { WriteFile(dir_ / "config.json", j.dump(2)); }

  std::string ShardOf(const std::string& tensor) const {
    if (!sharded()) return "model.safetensors";
    return Index()["weight_map"].value(tensor, std::string("model-00001-of-00002.safetensors"));
  }
  std::vector<StTensorData> Load(const std::string& shard) const {
    std::vector<StTensorData> out;
    auto f = SafetensorsFile::Open(dir_ / shard);
    EXPECT_TRUE(f.ok()) << f.status().message();
    if (!f.ok()) return out;
    for (const StTensor& t : (*f)->tensors())
      out.push_back({t.name, t.dtype, t.shape,
                     std::vector<uint8_t>((*f)->Data(t), (*f)->Data(t) + t.size())});
    return out;
  }
  void Save(const std::string& shard, const std::vector<StTensorData>& ts) const {
    ASSERT_TRUE(WriteSafetensors(dir_ / shard, ts, {{"format", "pt"}}).ok());
  }
  StTensorData Get(const std::string& name) const {
    for (StTensorData& t : Load(ShardOf(name)))
      if (t.name == name) return t;
    ADD_FAILURE() << "no tensor " << name;
    return {};
  }
  void Remove(const std::string& name) const {
    const std::string shard = ShardOf(name);
    auto ts = Load(shard);
    std::erase_if(ts, [&](const StTensorData& t) { return t.name == name; });
    Save(shard, ts);
    if (sharded()) {
      json j = Index();
      j["weight_map"].erase(name);
      SetIndex(j);
    }
  }
  // Adds (or replaces) a tensor in `shard` and lists it in the index.
  void Put(const std::string& shard, const StTensorData& t) const {
    auto ts = Load(shard);
    std::erase_if(ts, [&](const StTensorData& x) { return x.name == t.name; });
    ts.push_back(t);
    Save(shard, ts);
    if (sharded()) {
      json j = Index();
      j["weight_map"][t.name] = shard;
      SetIndex(j);
    }
  }
  void Replace(const StTensorData& t) const { Put(ShardOf(t.name), t); }

 private:
  std::string src_;
  TempDir dir_;
};

// Converts and expects failure: code, message fragments, and an empty output folder.
inline void ExpectConvertFails(const EditableCheckpoint& ck, StatusCode code, const std::vector<std::string>& needles,
                        WeightsMode mode = WeightsMode::kKeep) {
  TempDir out;
  ConvertOptions options;
  options.weights = mode;
  const Status st = ConvertHfCheckpoint(ck.path(), out / "model.moerun", options);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), code) << st.message();
  for (const std::string& n : needles) EXPECT_TRUE(Contains(st.message(), n)) << "'" << n << "' not in: " << st.message();
  EXPECT_TRUE(fs::is_empty(out.path())) << "output or temporary file left behind";
}

// The fixtures are committed (tests/data/golden), so a missing one is a broken checkout, not a skip.
#define REQUIRE_FIXTURE(ck) ASSERT_TRUE((ck).ok()) << "fixture not present"

}  // namespace moerun::convert
