// The corrupt-file corpus: every damaged variant of a valid file must be rejected with the right
// status and a message naming what is wrong, and nothing may crash (this suite also runs under
// ASan+UBSan).
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <vector>

#include "runtime/format/file_format.h"
#include "runtime/format/model_file.h"
#include "runtime/model/model.h"
#include "tests/unit/tiny_model.h"

namespace moerun {
namespace {

struct AlignedBuffer {
  void* p = nullptr;
  size_t n = 0;
  explicit AlignedBuffer(const std::vector<uint8_t>& bytes) : n(bytes.size()) {
    p = std::aligned_alloc(4096, AlignUp(std::max<size_t>(n, 1), 4096));
    if (n > 0) std::memcpy(p, bytes.data(), n);
  }
  ~AlignedBuffer() { std::free(p); }
};

class CorruptFileTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string dir = testing::TempDir("corrupt");
    for (DType dt : {DType::kBF16, DType::kF8E4M3, DType::kQ8Panel}) {
      testing::TinyModelOptions o;
      o.linear_dtype = dt;
      const std::string path = dir + "/tiny_" + DTypeName(dt) + ".moerun";
      ASSERT_TRUE(testing::WriteTinyModel(path, o).ok());
      std::ifstream f(path, std::ios::binary);
      auto& dst = dt == DType::kBF16 ? *bf16_ : (dt == DType::kF8E4M3 ? *fp8_ : *q8_);
      dst.assign(std::istreambuf_iterator<char>(f), {});
    }
  }

  // Status of loading a copy of `bytes` (OK if it loaded).
  static Status Load(const std::vector<uint8_t>& bytes, bool verify_weights = false) {
    AlignedBuffer buf(bytes);
    VerifyOptions vo;
    vo.check_weight_checksums = verify_weights;
    return ModelFile::FromMemory(buf.p, buf.n, vo).status();
  }

  static void ExpectRejected(const std::vector<uint8_t>& bytes, StatusCode code, const std::string& needle,
                             bool verify_weights = false) {
    const Status st = Load(bytes, verify_weights);
    ASSERT_FALSE(st.ok()) << "corrupt file was accepted (expected: " << needle << ")";
    EXPECT_EQ(st.code(), code) << st.message();
    EXPECT_NE(st.message().find(needle), std::string::npos)
        << "message '" << st.message() << "' does not mention '" << needle << "'";
  }

  // Applies `mutate` to the graph, then fixes the graph and header checksums so that only the
  // semantic checks stand between the damage and the runtime.
  static std::vector<uint8_t> MutateGraph(const std::vector<uint8_t>& bytes, const std::function<void(fb::Model*)>& mutate) {
    std::vector<uint8_t> out = bytes;
    FileHeader h;
    std::memcpy(&h, out.data(), sizeof(h));
    uint8_t* graph = out.data() + h.graph_offset;
    mutate(fb::GetMutableModel(graph));
    h.graph_crc32c = Crc32c(graph, h.graph_size);
    h.header_crc32c = Crc32c(&h, offsetof(FileHeader, header_crc32c));
    std::memcpy(out.data(), &h, sizeof(h));
    return out;
  }

  static std::vector<uint8_t> MutateHeader(const std::vector<uint8_t>& bytes, const std::function<void(FileHeader*)>& mutate) {
    std::vector<uint8_t> out = bytes;
    FileHeader h;
    std::memcpy(&h, out.data(), sizeof(h));
    mutate(&h);
    h.header_crc32c = Crc32c(&h, offsetof(FileHeader, header_crc32c));
    std::memcpy(out.data(), &h, sizeof(h));
    return out;
  }

  static int TensorIndex(const fb::Model* m, const std::string& name) {
    for (flatbuffers::uoffset_t i = 0; i < m->tensors()->size(); ++i)
      if (m->tensors()->Get(i)->name()->str() == name) return static_cast<int>(i);
    return -1;
  }

  static inline std::vector<uint8_t>* bf16_ = new std::vector<uint8_t>();
  static inline std::vector<uint8_t>* fp8_ = new std::vector<uint8_t>();
  static inline std::vector<uint8_t>* q8_ = new std::vector<uint8_t>();
};

TEST_F(CorruptFileTest, ValidFilesLoad) {
  for (auto* bytes : {bf16_, fp8_}) {
    AlignedBuffer buf(*bytes);
    VerifyOptions vo;
    vo.check_weight_checksums = true;
    auto f = ModelFile::FromMemory(buf.p, buf.n, vo);
    ASSERT_TRUE(f.ok()) << f.status().message();
    auto m = Model::Create(f.value(), "reference", Precision::kF32, 1);
    ASSERT_TRUE(m.ok()) << m.status().message();
  }
}

TEST_F(CorruptFileTest, TruncationsAtManyOffsets) {
  const std::vector<uint8_t>& full = *fp8_;
  FileHeader h;
  std::memcpy(&h, full.data(), sizeof(h));
  std::vector<size_t> cuts = {0, 1, 8, 63, 64, 65, h.graph_offset + h.graph_size / 2, h.graph_offset + h.graph_size,
                              h.weights_offset, h.weights_offset + 1, full.size() - 1};
  for (size_t c = 97; c < full.size(); c += full.size() / 61) cuts.push_back(c);
  for (size_t cut : cuts) {
    SCOPED_TRACE("truncated to " + std::to_string(cut) + " of " + std::to_string(full.size()));
    std::vector<uint8_t> t(full.begin(), full.begin() + cut);
    AlignedBuffer buf(t);
    auto r = ModelFile::FromMemory(buf.p, buf.n, VerifyOptions{});
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kCorruptFile) << r.status().message();
  }
}

TEST_F(CorruptFileTest, BadMagic) {
  std::vector<uint8_t> b = *bf16_;
  b[0] = 'X';
  ExpectRejected(b, StatusCode::kCorruptFile, "bad magic");
}

TEST_F(CorruptFileTest, FlippedBytesEverywhereAreCaught) {
  const std::vector<uint8_t>& full = *bf16_;
  FileHeader h;
  std::memcpy(&h, full.data(), sizeof(h));
  for (size_t off = 0; off < full.size(); off += 37) {
    SCOPED_TRACE("flipped byte at " + std::to_string(off));
    std::vector<uint8_t> b = full;
    b[off] ^= 0x5a;
    const bool in_padding = (off >= h.graph_offset + h.graph_size && off < h.weights_offset);
    const Status st = Load(b, /*verify_weights=*/true);
    if (in_padding) continue;  // padding carries no information
    // In the weight area only alignment gaps between tensors may go unnoticed.
    if (off >= h.weights_offset && st.ok()) continue;
    ASSERT_FALSE(st.ok());
    EXPECT_TRUE(st.code() == StatusCode::kCorruptFile || st.code() == StatusCode::kUnsupported) << st.message();
  }
}

TEST_F(CorruptFileTest, WeightChecksumNamesTheTensor) {
  std::vector<uint8_t> b = *bf16_;
  FileHeader h;
  std::memcpy(&h, b.data(), sizeof(h));
  b[h.weights_offset + 3] ^= 1;  // first tensor is the embedding table
  ExpectRejected(b, StatusCode::kCorruptFile, "'embed': weight checksum mismatch", true);
}

TEST_F(CorruptFileTest, HeaderAndGraphChecksums) {
  std::vector<uint8_t> b = *bf16_;
  b[20] ^= 1;
  ExpectRejected(b, StatusCode::kCorruptFile, "header checksum");
  b = *bf16_;
  FileHeader h;
  std::memcpy(&h, b.data(), sizeof(h));
  b[h.graph_offset + h.graph_size / 2] ^= 1;
  ExpectRejected(b, StatusCode::kCorruptFile, "graph checksum");
}

TEST_F(CorruptFileTest, HeaderRanges) {
  ExpectRejected(MutateHeader(*bf16_, [](FileHeader* h) { h->weights_size += 4096; }), StatusCode::kCorruptFile,
                 "extends past the end");
  ExpectRejected(MutateHeader(*bf16_, [](FileHeader* h) { h->graph_offset = UINT64_MAX - 8; }),
                 StatusCode::kCorruptFile, "graph");
  ExpectRejected(MutateHeader(*bf16_, [](FileHeader* h) { h->weights_offset = UINT64_MAX - 4095; }),
                 StatusCode::kCorruptFile, "weight area");
  ExpectRejected(MutateHeader(*bf16_, [](FileHeader* h) { h->min_reader_version = kFormatVersion + 1; }),
                 StatusCode::kUnsupported, "reader version");
}

TEST_F(CorruptFileTest, TensorOffsetsAndSizes) {
  ExpectRejected(MutateGraph(*bf16_, [](fb::Model* m) { m->mutable_tensors()->GetMutableObject(2)->mutate_offset(1ull << 40); }),
                 StatusCode::kCorruptFile, "extends past the weight area");
  ExpectRejected(MutateGraph(*bf16_, [](fb::Model* m) {
                   m->mutable_tensors()->GetMutableObject(2)->mutate_offset(UINT64_MAX - 63);
                 }),
                 StatusCode::kCorruptFile, "extends past the weight area");
  ExpectRejected(MutateGraph(*bf16_, [](fb::Model* m) {
                   auto* t = m->mutable_tensors()->GetMutableObject(2);
                   t->mutate_offset(t->offset() + 4);
                 }),
                 StatusCode::kCorruptFile, "misaligned");
  ExpectRejected(MutateGraph(*bf16_, [](fb::Model* m) { m->mutable_tensors()->GetMutableObject(2)->mutate_size(7); }),
                 StatusCode::kCorruptFile, "does not match shape and dtype");
}

TEST_F(CorruptFileTest, OverflowingShapes) {
  ExpectRejected(MutateGraph(*bf16_, [](fb::Model* m) {
                   auto* shape = m->mutable_tensors()->GetMutableObject(0)->mutable_shape();
                   shape->Mutate(0, 1ull << 40);
                   shape->Mutate(1, 1ull << 40);
                 }),
                 StatusCode::kCorruptFile, "shape product overflows");
  ExpectRejected(MutateGraph(*bf16_, [](fb::Model* m) {
                   m->mutable_tensors()->GetMutableObject(0)->mutable_shape()->Mutate(0, 0);
                 }),
                 StatusCode::kCorruptFile, "zero-sized");
}

TEST_F(CorruptFileTest, UnknownEnums) {
  ExpectRejected(MutateGraph(*bf16_, [](fb::Model* m) {
                   m->mutable_tensors()->GetMutableObject(1)->mutate_dtype(static_cast<fb::DType>(200));
                 }),
                 StatusCode::kCorruptFile, "unknown dtype");
  ExpectRejected(MutateGraph(*bf16_, [](fb::Model* m) {
                   m->mutable_nodes()->GetMutableObject(1)->mutate_op(static_cast<fb::Op>(99));
                 }),
                 StatusCode::kCorruptFile, "unknown op");
}

TEST_F(CorruptFileTest, NodeReferences) {
  ExpectRejected(MutateGraph(*bf16_, [](fb::Model* m) {
                   m->mutable_nodes()->GetMutableObject(0)->mutable_weights()->GetMutableObject(0)->mutate_tensor(99999);
                 }),
                 StatusCode::kCorruptFile, "refers to tensor #99999");
  ExpectRejected(MutateGraph(*bf16_, [](fb::Model* m) {
                   m->mutable_nodes()->GetMutableObject(1)->mutable_outputs()->Mutate(0, 7);
                 }),
                 StatusCode::kCorruptFile, "activation buffer 7");
}

TEST_F(CorruptFileTest, BlockScaleShape) {
  ExpectRejected(MutateGraph(*fp8_, [](fb::Model* m) {
                   const int i = TensorIndex(m, "layers.0.q_a.scale");
                   ASSERT_GE(i, 0);
                   m->mutable_tensors()->GetMutableObject(i)->mutable_shape()->Mutate(0, 2);  // [1, 2] -> [2, 1]
                   m->mutable_tensors()->GetMutableObject(i)->mutable_shape()->Mutate(1, 1);
                 }),
                 StatusCode::kCorruptFile, "scale tensor 'layers.0.q_a.scale' has shape");
  ExpectRejected(MutateGraph(*fp8_, [](fb::Model* m) {
                   const int i = TensorIndex(m, "layers.0.q_a");
                   m->mutable_tensors()->GetMutableObject(i)->mutate_scale(i);
                 }),
                 StatusCode::kCorruptFile, "no valid scale tensor");
}

TEST_F(CorruptFileTest, Q8PanelScalesAndGroups) {
  ASSERT_TRUE(Load(*q8_).ok());
  ExpectRejected(MutateGraph(*q8_, [](fb::Model* m) {
                   const int i = TensorIndex(m, "layers.0.q_a.scale");
                   ASSERT_GE(i, 0);
                   // [.., g, 16] -> [.., 2g, 8]: the same size, the wrong shape
                   auto* shape = m->mutable_tensors()->GetMutableObject(i)->mutable_shape();
                   shape->Mutate(1, shape->Get(1) * 2);
                   shape->Mutate(2, 8);
                 }),
                 StatusCode::kCorruptFile, "scale tensor 'layers.0.q_a.scale' has shape");
  ExpectRejected(MutateGraph(*q8_, [](fb::Model* m) {
                   m->mutable_tensors()->GetMutableObject(TensorIndex(m, "layers.0.q_a"))->mutate_block_cols(64);
                 }),
                 StatusCode::kCorruptFile, "q8_panel groups must be 1x128");
  ExpectRejected(MutateGraph(*q8_, [](fb::Model* m) {
                   const int i = TensorIndex(m, "layers.0.q_a");
                   m->mutable_tensors()->GetMutableObject(i)->mutate_size(
                       m->tensors()->Get(i)->size() - 64);  // one quad short of the padded panels
                 }),
                 StatusCode::kCorruptFile, "does not match shape and dtype");
  ExpectRejected(MutateGraph(*q8_, [](fb::Model* m) {
                   m->mutable_tensors()->GetMutableObject(TensorIndex(m, "embed"))->mutate_dtype(fb::DType::Q8_PANEL);
                 }),
                 StatusCode::kCorruptFile, "embed");
}

TEST_F(CorruptFileTest, ImpossibleConfigs) {
  ExpectRejected(MutateGraph(*bf16_, [](fb::Model* m) { m->mutable_config()->mutate_num_heads(0); }),
                 StatusCode::kInvalidArgument, "num_attention_heads");
  ExpectRejected(MutateGraph(*bf16_, [](fb::Model* m) { m->mutable_config()->mutate_n_group(3); }),
                 StatusCode::kInvalidArgument, "not divisible by n_group");
  ExpectRejected(MutateGraph(*bf16_, [](fb::Model* m) { m->mutable_config()->mutate_num_experts_per_tok(9); }),
                 StatusCode::kInvalidArgument, "num_experts_per_tok");
}

// Semantic damage the file reader cannot see: the Model checks every role's shape and presence.
TEST_F(CorruptFileTest, ModelRejectsWrongRolesAndShapes) {
  auto model_status = [](const std::vector<uint8_t>& bytes) {
    AlignedBuffer buf(bytes);
    auto f = ModelFile::FromMemory(buf.p, buf.n, VerifyOptions{});
    if (!f.ok()) return f.status();
    return Model::Create(f.value(), "reference", Precision::kF32, 1).status();
  };
  // Point the first RMSNorm at the embedding table: wrong shape for role Norm.
  Status st = model_status(MutateGraph(*bf16_, [](fb::Model* m) {
    m->mutable_nodes()->GetMutableObject(1)->mutable_weights()->GetMutableObject(0)->mutate_tensor(0);
  }));
  EXPECT_EQ(st.code(), StatusCode::kCorruptFile);
  EXPECT_NE(st.message().find("Norm tensor 'embed' has shape [96, 160], expected [160]"), std::string::npos)
      << st.message();
  // A duplicated role (and so a missing one) in the attention node.
  st = model_status(MutateGraph(*bf16_, [](fb::Model* m) {
    auto* w = m->mutable_nodes()->GetMutableObject(2)->mutable_weights();
    w->GetMutableObject(1)->mutate_role(w->Get(0)->role());
  }));
  EXPECT_EQ(st.code(), StatusCode::kCorruptFile);
  EXPECT_NE(st.message().find("appears twice"), std::string::npos) << st.message();
}

TEST_F(CorruptFileTest, MissingFileAndNonFile) {
  auto r = ModelFile::Open("/nonexistent/x.moerun", VerifyOptions{});
  EXPECT_EQ(r.status().code(), StatusCode::kIo);
  EXPECT_NE(r.status().message().find("/nonexistent/x.moerun"), std::string::npos);
  r = ModelFile::Open("/tmp", VerifyOptions{});
  EXPECT_EQ(r.status().code(), StatusCode::kIo);
}

}  // namespace
}  // namespace moerun
