// SafetensorsFile and Checkpoint on hand-written files: a valid file, and one malformed header per
// class of bad input (DESIGN §8). Every error must carry the right code and name the file / tensor.
#include "tests/unit/scoped_temp_dir.h"
#include "converters/safetensors.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace moerun::convert {
namespace {

namespace fs = std::filesystem;

// Each test's scratch folder.
class TempDir : public testing::ScopedTempDir {
 public:
  TempDir() : ScopedTempDir("moerun_st") {}
};

void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string Le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}

// A safetensors file with a hand-written header and `data_bytes` zero bytes of data.
void WriteRaw(const std::string& path, const std::string& header, size_t data_bytes) {
  WriteBytes(path, Le64(header.size()) + header + std::string(data_bytes, '\0'));
}

std::vector<uint8_t> Bytes(size_t n, uint8_t seed) {
  std::vector<uint8_t> b(n);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<uint8_t>(seed + 7 * i);
  return b;
}

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

#define EXPECT_ERROR(result, code_, needle)                                              \
  do {                                                                                   \
    ASSERT_FALSE((result).ok());                                                         \
    EXPECT_EQ((result).status().code(), (code_)) << (result).status().message();         \
    EXPECT_TRUE(Contains((result).status().message(), (needle))) << (result).status().message(); \
  } while (0)

TEST(SafetensorsTest, ParsesValidFile) {
  TempDir dir;
  const std::string path = dir / "m.safetensors";
  std::vector<StTensorData> ts = {
      {"a.weight", StDType::kF32, {2, 3}, Bytes(24, 1)},
      {"b", StDType::kBF16, {4}, Bytes(8, 2)},
      {"c.weight", StDType::kF8E4M3, {2, 2}, Bytes(4, 3)},
      {"empty", StDType::kF16, {0, 5}, {}},
      {"ints", StDType::kI32, {2}, Bytes(8, 4)},
  };
  ASSERT_TRUE(WriteSafetensors(path, ts, {{"format", "pt"}}).ok());
  auto f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status().message();
  const SafetensorsFile& file = **f;
  ASSERT_EQ(file.tensors().size(), 5u);
  EXPECT_EQ(file.metadata().at("format"), "pt");
  EXPECT_EQ(file.data_offset() % 8, 0u);
  for (const StTensorData& want : ts) {
    const StTensor* t = file.Find(want.name);
    ASSERT_NE(t, nullptr) << want.name;
    EXPECT_EQ(t->dtype, want.dtype);
    EXPECT_EQ(t->shape, want.shape);
    EXPECT_EQ(t->size(), want.bytes.size());
    if (!want.bytes.empty()) {
      EXPECT_EQ(0, std::memcmp(file.Data(*t), want.bytes.data(), want.bytes.size()));
      std::vector<uint8_t> buf(want.bytes.size() - 1);
      ASSERT_TRUE(file.Read(*t, 1, buf.data(), buf.size()).ok());
      EXPECT_EQ(0, std::memcmp(buf.data(), want.bytes.data() + 1, buf.size()));
      file.Release(*t);
      EXPECT_EQ(0, std::memcmp(file.Data(*t), want.bytes.data(), want.bytes.size()));  // re-faults from the file
    }
  }
  EXPECT_EQ(file.Find("nope"), nullptr);
  DType d;
  EXPECT_TRUE(ToRuntimeDType(StDType::kF8E4M3, &d));
  EXPECT_EQ(d, DType::kF8E4M3);
  EXPECT_FALSE(ToRuntimeDType(StDType::kI32, &d));
  uint8_t x;
  EXPECT_EQ(file.Read(*file.Find("b"), 8, &x, 1).code(), StatusCode::kInternal);  // past the tensor
}

TEST(SafetensorsTest, HeaderMayHaveTrailingSpacesAndUnknownEntryKeys) {
  TempDir dir;
  const std::string path = dir / "m.safetensors";
  WriteRaw(path, R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"extra":1}})" + std::string(5, ' '), 4);
  auto f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status().message();
  EXPECT_EQ((*f)->tensors().size(), 1u);
}

TEST(SafetensorsTest, MissingFileIsIoError) {
  TempDir dir;
  auto f = SafetensorsFile::Open(dir / "absent.safetensors");
  EXPECT_ERROR(f, StatusCode::kIo, "absent.safetensors");
}

TEST(SafetensorsTest, TruncatedHeaderLength) {
  TempDir dir;
  WriteBytes(dir / "t.safetensors", std::string("\x10\x00\x00", 3));
  auto f = SafetensorsFile::Open(dir / "t.safetensors");
  EXPECT_ERROR(f, StatusCode::kCorruptFile, "t.safetensors");
}

TEST(SafetensorsTest, HeaderLengthPastEndOfFile) {
  TempDir dir;
  WriteBytes(dir / "t.safetensors", Le64(1000) + "{}");
  auto f = SafetensorsFile::Open(dir / "t.safetensors");
  EXPECT_ERROR(f, StatusCode::kCorruptFile, "past the end of the file");
}

TEST(SafetensorsTest, HeaderLengthOverLimit) {
  TempDir dir;
  WriteBytes(dir / "t.safetensors", Le64((100ull << 20) + 1) + "{}");
  auto f = SafetensorsFile::Open(dir / "t.safetensors");
  EXPECT_ERROR(f, StatusCode::kCorruptFile, "100 MB");
  WriteBytes(dir / "u.safetensors", Le64(~0ull) + "{}");
  auto g = SafetensorsFile::Open(dir / "u.safetensors");
  EXPECT_ERROR(g, StatusCode::kCorruptFile, "u.safetensors");
}

TEST(SafetensorsTest, BadJson) {
  TempDir dir;
  WriteRaw(dir / "t.safetensors", R"({"t": {"dtype": "F32", "shape": [1], )", 0);
  auto f = SafetensorsFile::Open(dir / "t.safetensors");
  EXPECT_ERROR(f, StatusCode::kCorruptFile, "invalid JSON");
  EXPECT_TRUE(Contains(f.status().message(), "t.safetensors"));
}

TEST(SafetensorsTest, HeaderMustBeAnObject) {
  TempDir dir;
  WriteRaw(dir / "t.safetensors", "[1, 2]", 0);
  auto f = SafetensorsFile::Open(dir / "t.safetensors");
  EXPECT_ERROR(f, StatusCode::kCorruptFile, "expected an object");
}

TEST(SafetensorsTest, DeepNestingRejected) {
  TempDir dir;
  WriteRaw(dir / "t.safetensors", R"({"__metadata__":)" + std::string(200, '[') + std::string(200, ']') + "}", 0);
  auto f = SafetensorsFile::Open(dir / "t.safetensors");
  EXPECT_ERROR(f, StatusCode::kCorruptFile, "nesting");
}

TEST(SafetensorsTest, DataOffsetsOutOfRange) {
  TempDir dir;
  WriteRaw(dir / "t.safetensors", R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8);
  auto f = SafetensorsFile::Open(dir / "t.safetensors");
  EXPECT_ERROR(f, StatusCode::kCorruptFile, "'w'");
  EXPECT_TRUE(Contains(f.status().message(), "past the data area"));

  WriteRaw(dir / "u.safetensors", R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", 8);
  auto g = SafetensorsFile::Open(dir / "u.safetensors");
  EXPECT_ERROR(g, StatusCode::kCorruptFile, "begin > end");

  WriteRaw(dir / "v.safetensors", R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})", 8);
  auto h = SafetensorsFile::Open(dir / "v.safetensors");
  EXPECT_ERROR(h, StatusCode::kCorruptFile, "'w'");

  WriteRaw(dir / "x.safetensors", R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", 8);
  auto k = SafetensorsFile::Open(dir / "x.safetensors");
  EXPECT_ERROR(k, StatusCode::kCorruptFile, "data_offsets");
}

TEST(SafetensorsTest, SizeMismatchWithShape) {
  TempDir dir;
  WriteRaw(dir / "t.safetensors", R"({"w":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,8]}})", 16);
  auto f = SafetensorsFile::Open(dir / "t.safetensors");
  EXPECT_ERROR(f, StatusCode::kCorruptFile, "'w'");
  EXPECT_TRUE(Contains(f.status().message(), "need 12")) << f.status().message();
}

TEST(SafetensorsTest, OverflowingShape) {
  TempDir dir;
  WriteRaw(dir / "t.safetensors",
           R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,0]}})", 0);
  auto f = SafetensorsFile::Open(dir / "t.safetensors");
  EXPECT_ERROR(f, StatusCode::kCorruptFile, "overflows");
  // Product fits in 64 bits but the byte size does not.
  WriteRaw(dir / "u.safetensors", R"({"w":{"dtype":"F32","shape":[4611686018427387904,2],"data_offsets":[0,0]}})",
           0);
  auto g = SafetensorsFile::Open(dir / "u.safetensors");
  EXPECT_ERROR(g, StatusCode::kCorruptFile, "overflows");
}

TEST(SafetensorsTest, BadShapeEntries) {
  TempDir dir;
  for (const char* shape : {"[-1]", "[1.5]", "[true]", "\"4\"", "[[2]]"}) {
    WriteRaw(dir / "t.safetensors",
             std::string(R"({"w":{"dtype":"F32","shape":)") + shape + R"(,"data_offsets":[0,4]}})", 4);
    auto f = SafetensorsFile::Open(dir / "t.safetensors");
    EXPECT_ERROR(f, StatusCode::kCorruptFile, "'w'");
  }
}

TEST(SafetensorsTest, DuplicateKeys) {
  TempDir dir;
  WriteRaw(dir / "t.safetensors",
           R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
           8);
  auto f = SafetensorsFile::Open(dir / "t.safetensors");
  EXPECT_ERROR(f, StatusCode::kCorruptFile, "duplicate key 'w'");
  WriteRaw(dir / "u.safetensors", R"({"w":{"dtype":"F32","dtype":"BF16","shape":[1],"data_offsets":[0,4]}})", 4);
  auto g = SafetensorsFile::Open(dir / "u.safetensors");
  EXPECT_ERROR(g, StatusCode::kCorruptFile, "duplicate key 'dtype'");
}

TEST(SafetensorsTest, OverlappingTensors) {
  TempDir dir;
  WriteRaw(dir / "t.safetensors",
           R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
           12);
  auto f = SafetensorsFile::Open(dir / "t.safetensors");
  EXPECT_ERROR(f, StatusCode::kCorruptFile, "overlap");
  EXPECT_TRUE(Contains(f.status().message(), "'a'") && Contains(f.status().message(), "'b'"));
}

TEST(SafetensorsTest, UnknownDtype) {
  TempDir dir;
  WriteRaw(dir / "t.safetensors", R"({"w":{"dtype":"Q4_K","shape":[1],"data_offsets":[0,1]}})", 1);
  auto f = SafetensorsFile::Open(dir / "t.safetensors");
  EXPECT_ERROR(f, StatusCode::kUnsupported, "Q4_K");
  EXPECT_TRUE(Contains(f.status().message(), "'w'") && Contains(f.status().message(), "t.safetensors"));
  WriteRaw(dir / "u.safetensors", R"({"w":{"dtype":7,"shape":[1],"data_offsets":[0,1]}})", 1);
  auto g = SafetensorsFile::Open(dir / "u.safetensors");
  EXPECT_ERROR(g, StatusCode::kCorruptFile, "dtype");
}

TEST(SafetensorsTest, BadMetadata) {
  TempDir dir;
  WriteRaw(dir / "t.safetensors", R"({"__metadata__":{"format":1}})", 0);
  auto f = SafetensorsFile::Open(dir / "t.safetensors");
  EXPECT_ERROR(f, StatusCode::kCorruptFile, "__metadata__");
  WriteRaw(dir / "u.safetensors", R"({"w": [1, 2]})", 0);
  auto g = SafetensorsFile::Open(dir / "u.safetensors");
  EXPECT_ERROR(g, StatusCode::kCorruptFile, "'w'");
}

// --- Checkpoint folders -----------------------------------------------------------------------

void WriteShard(const std::string& path, const std::vector<std::string>& names) {
  std::vector<StTensorData> ts;
  for (size_t i = 0; i < names.size(); ++i) ts.push_back({names[i], StDType::kBF16, {2}, Bytes(4, uint8_t(i))});
  ASSERT_TRUE(WriteSafetensors(path, ts).ok());
}

void WriteIndex(const std::string& path, const std::string& weight_map) {
  WriteBytes(path, R"({"metadata": {"total_size": 16}, "weight_map": )" + weight_map + "}");
}

TEST(SafetensorsCheckpointTest, SingleFile) {
  TempDir dir;
  WriteBytes(dir / "config.json", "{}");
  WriteShard(dir / "model.safetensors", {"a", "b"});
  auto c = Checkpoint::Open(dir.path());
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_FALSE((*c)->sharded());
  EXPECT_EQ((*c)->Names(), (std::vector<std::string>{"a", "b"}));
  ASSERT_NE((*c)->Find("b"), nullptr);
  EXPECT_EQ((*c)->Find("b")->tensor->name, "b");
  EXPECT_EQ((*c)->config_text(), "{}");
}

TEST(SafetensorsCheckpointTest, ShardedWithIndex) {
  TempDir dir;
  WriteBytes(dir / "config.json", "{}");
  WriteShard(dir / "s1.safetensors", {"a", "b"});
  WriteShard(dir / "s2.safetensors", {"c"});
  WriteIndex(dir / "model.safetensors.index.json", R"({"a":"s1.safetensors","b":"s1.safetensors","c":"s2.safetensors"})");
  auto c = Checkpoint::Open(dir.path());
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_TRUE((*c)->sharded());
  EXPECT_EQ((*c)->num_tensors(), 3u);
  EXPECT_TRUE(Contains((*c)->Find("c")->file->path(), "s2.safetensors"));
}

TEST(SafetensorsCheckpointTest, IndexErrors) {
  TempDir dir;
  WriteBytes(dir / "config.json", "{}");
  WriteShard(dir / "s1.safetensors", {"a", "b"});
  const std::string index = dir / "model.safetensors.index.json";
  struct Case {
    std::string weight_map;
    StatusCode code;
    std::string needle;
  };
  const std::vector<Case> cases = {
      {R"({"a":"../s1.safetensors","b":"s1.safetensors"})", StatusCode::kCorruptFile, "not a plain file name"},
      {R"({"a":"sub/s1.safetensors","b":"s1.safetensors"})", StatusCode::kCorruptFile, "not a plain file name"},
      {R"({"a":"..","b":"s1.safetensors"})", StatusCode::kCorruptFile, "not a plain file name"},
      {R"({"a":"s1.safetensors","b":"gone.safetensors"})", StatusCode::kIo, "gone.safetensors"},
      {R"({"a":"s1.safetensors","b":"s1.safetensors","z":"s1.safetensors"})", StatusCode::kInvalidArgument, "'z'"},
      {R"({"a":"s1.safetensors"})", StatusCode::kInvalidArgument, "unexpected tensor 'b'"},
      {R"({"a":"s1.safetensors","b":3})", StatusCode::kCorruptFile, "'b'"},
      {R"([1])", StatusCode::kCorruptFile, "weight_map"},
      {R"({})", StatusCode::kCorruptFile, "empty"},
  };
  for (const Case& c : cases) {
    WriteIndex(index, c.weight_map);
    auto r = Checkpoint::Open(dir.path());
    EXPECT_ERROR(r, c.code, c.needle);
    EXPECT_TRUE(Contains(r.status().message(), "model.safetensors.index.json") ||
                Contains(r.status().message(), "s1.safetensors"))
        << r.status().message();
  }
  WriteBytes(index, R"({"weight_map": {"a": "s1.safetensors",)");
  auto r = Checkpoint::Open(dir.path());
  EXPECT_ERROR(r, StatusCode::kCorruptFile, "model.safetensors.index.json");
}

TEST(SafetensorsCheckpointTest, MissingFiles) {
  TempDir dir;
  auto r = Checkpoint::Open(dir.path());
  EXPECT_ERROR(r, StatusCode::kIo, "config.json");
  WriteBytes(dir / "config.json", "{}");
  auto s = Checkpoint::Open(dir.path());
  EXPECT_ERROR(s, StatusCode::kIo, "model.safetensors");
  auto t = Checkpoint::Open(dir / "nope");
  EXPECT_ERROR(t, StatusCode::kIo, "nope");
}

}  // namespace
}  // namespace moerun::convert
