// ConvertHfCheckpoint end to end: every golden checkpoint in every weights mode, reopened with
// ModelFile and compared value by value with the source tensors (stacking, MLA split, FP8 scales,
// dtype policy, graph nodes), and FP8 experts of mixed dtypes. Broken checkpoints that must fail:
// converter_errors_test.cc.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "tests/unit/converter_test_util.h"
#include "converters/converter.h"
#include "converters/fp8_quant.h"
#include "converters/hf_config.h"
#include "converters/hf_importer.h"
#include "converters/safetensors.h"
#include "runtime/format/file_format.h"
#include "runtime/format/model_file.h"
#include "runtime/model/graph_contract.h"

namespace moerun::convert {
namespace {

using R = fb::Role;


// --- fixtures ---------------------------------------------------------------------------------

struct Fixture {
  std::string label;  // "data_v3_fp8", "shared_v2lite_bf16", ...
  std::string dir;
};

std::vector<Fixture> AllFixtures() {
  std::vector<Fixture> out;
  const std::pair<const char*, std::string> roots[] = {
      {"data", std::string(MOERUN_TEST_DATA_DIR) + "/golden"}, {"shared", MOERUN_SHARED_GOLDEN_DIR}};
  for (const auto& [label, root] : roots)
    for (const char* name : {"v2lite_bf16", "v2_grouped_bf16", "v3_bf16", "v3_fp8"})
      if (fs::exists(root + "/" + name + "/config.json")) out.push_back({std::string(label) + "_" + name, root + "/" + name});
  return out;
}


// --- source values ----------------------------------------------------------------------------

// A checkpoint tensor read whole: raw bytes and (dequantised) f32 values.
struct Src {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<uint64_t> shape;
  std::vector<uint8_t> raw;
  std::vector<float> f32;
  std::vector<uint8_t> scale_raw;  // F8 only: the F32 block scales
};

Src LoadSrc(const Checkpoint& ck, const std::string& name) {
  Src s;
  s.name = name;
  const Checkpoint::Ref* r = ck.Find(name);
  EXPECT_NE(r, nullptr) << name;
  if (!r) return s;
  EXPECT_TRUE(ToRuntimeDType(r->tensor->dtype, &s.dtype));
  s.shape = r->tensor->shape;
  s.raw.assign(r->file->Data(*r->tensor), r->file->Data(*r->tensor) + r->tensor->size());
  const uint64_t n = r->tensor->numel;
  s.f32.resize(n);
  if (s.dtype == DType::kF8E4M3) {
    const Checkpoint::Ref* sr = ck.Find(name + "_scale_inv");
    EXPECT_NE(sr, nullptr);
    if (!sr) return s;
    EXPECT_EQ(sr->tensor->dtype, StDType::kF32);
    s.scale_raw.assign(sr->file->Data(*sr->tensor), sr->file->Data(*sr->tensor) + sr->tensor->size());
    const float* scale = reinterpret_cast<const float*>(s.scale_raw.data());
    const uint64_t rows = s.shape[0], cols = s.shape[1], scols = CeilDiv(cols, 128);
    for (uint64_t i = 0; i < rows; ++i)
      for (uint64_t j = 0; j < cols; ++j)
        s.f32[i * cols + j] = F8E4M3ToF32(s.raw[i * cols + j]) * scale[(i / 128) * scols + j / 128];
  } else {
    for (uint64_t i = 0; i < n; ++i) s.f32[i] = LoadAsF32(s.dtype, s.raw.data(), i);
  }
  return s;
}

// The output tensor's elements as (source, element index) pairs.
struct Gather {
  std::vector<Src> srcs;
  std::vector<std::pair<uint32_t, uint64_t>> idx;
};

Gather Concat(std::vector<Src> srcs) {
  Gather g;
  g.srcs = std::move(srcs);
  for (uint32_t s = 0; s < g.srcs.size(); ++s)
    for (uint64_t i = 0; i < g.srcs[s].f32.size(); ++i) g.idx.push_back({s, i});
  return g;
}

// Checks the bytes of `out` against the gathered sources: bit-exact when the dtype is kept,
// otherwise f32 → dtype with round-to-nearest-even.
void ExpectValues(const TensorInfo& out, const Gather& g) {
  SCOPED_TRACE(out.name);
  ASSERT_EQ(out.numel, g.idx.size());
  int mismatches = 0;
  for (uint64_t k = 0; k < g.idx.size() && mismatches < 5; ++k) {
    const Src& s = g.srcs[g.idx[k].first];
    const uint64_t i = g.idx[k].second;
    bool same;
    if (out.dtype == s.dtype) {
      const size_t es = DTypeSize(out.dtype);
      same = std::memcmp(out.data + k * es, s.raw.data() + i * es, es) == 0;
    } else if (out.dtype == DType::kF32) {
      same = std::memcmp(out.data + k * 4, &s.f32[i], 4) == 0;
    } else if (out.dtype == DType::kBF16) {
      uint16_t got;
      std::memcpy(&got, out.data + k * 2, 2);
      same = got == F32ToBf16(s.f32[i]);
    } else {
      ADD_FAILURE() << "unexpected conversion to " << DTypeName(out.dtype);
      return;
    }
    if (!same) {
      ++mismatches;
      ADD_FAILURE() << "element " << k << " differs from " << s.name << "[" << i << "]";
    }
  }
}

// Checks an F8_E4M3 output quantised from non-FP8 sources (--weights fp8): per source (stacked
// experts: one after the other), every 128x128 block (edge blocks partial) has scale = block absmax
// / 448 (1 for an all-zero block) and codes e4m3fn(w / scale). The scalar conversion itself is
// checked bit-exactly against an independent formulation in fp8_weights_test.cc.
void ExpectQuantized(const TensorInfo& out, const TensorInfo& scale, const std::vector<Src>& srcs) {
  SCOPED_TRACE(out.name);
  uint64_t q_at = 0, s_at = 0;
  int mismatches = 0;
  for (const Src& s : srcs) {
    ASSERT_NE(s.dtype, DType::kF8E4M3);
    ASSERT_EQ(s.shape.size(), 2u);
    const uint64_t rows = s.shape[0], cols = s.shape[1];
    ASSERT_LE(q_at + rows * cols, out.numel);
    ASSERT_LE(s_at + CeilDiv(rows, 128) * CeilDiv(cols, 128), scale.numel);
    for (uint64_t br = 0; br * 128 < rows; ++br)
      for (uint64_t bc = 0; bc * 128 < cols; ++bc) {
        float absmax = 0;
        for (uint64_t i = br * 128; i < std::min(rows, br * 128 + 128); ++i)
          for (uint64_t j = bc * 128; j < std::min(cols, bc * 128 + 128); ++j)
            absmax = std::max(absmax, std::fabs(s.f32[i * cols + j]));
        const float want = absmax == 0 ? 1.0f : absmax / 448.0f;
        float got;
        std::memcpy(&got, scale.data + (s_at + br * CeilDiv(cols, 128) + bc) * 4, 4);
        EXPECT_EQ(std::memcmp(&got, &want, 4), 0) << s.name << " block " << br << "," << bc << ": " << got
                                                  << " vs " << want;
        for (uint64_t i = br * 128; i < std::min(rows, br * 128 + 128) && mismatches < 5; ++i)
          for (uint64_t j = bc * 128; j < std::min(cols, bc * 128 + 128); ++j) {
            const uint8_t code = out.data[q_at + i * cols + j];
            if (code != F32ToF8E4M3(s.f32[i * cols + j] / want)) {
              ADD_FAILURE() << s.name << "[" << i << ", " << j << "] = " << s.f32[i * cols + j] << " quantised to 0x"
                            << std::hex << int{code} << std::dec;
              if (++mismatches >= 5) break;
            }
          }
      }
    q_at += rows * cols;
    s_at += CeilDiv(rows, 128) * CeilDiv(cols, 128);
  }
  EXPECT_EQ(q_at, out.numel);
  EXPECT_EQ(s_at, scale.numel);
}

// Roles that --weights fp8 stores as F8_E4M3 (MODEL_SPEC §3, less kv_b_proj).
bool Fp8ModeRole(R role) {
  switch (role) {
    case R::QProj: case R::QAProj: case R::QBProj: case R::KvAProj: case R::OProj: case R::Gate: case R::Up:
    case R::Down: case R::ExpertsGate: case R::ExpertsUp: case R::ExpertsDown: case R::SharedGate:
    case R::SharedUp: case R::SharedDown:
      return true;
    default:
      return false;
  }
}

// Output dtype the converter must produce (converter.h).
DType ExpectedDType(R role, DType src, WeightsMode mode) {
  if (IsF32Role(role)) return DType::kF32;
  if (mode == WeightsMode::kF32) return DType::kF32;
  if (mode == WeightsMode::kBF16) return DType::kBF16;
  if (mode == WeightsMode::kFp8) return Fp8ModeRole(role) ? DType::kF8E4M3 : DType::kBF16;
  if ((role == R::UkT || role == R::Uv) && src == DType::kF8E4M3) return DType::kF32;
  return src;
}

// Independent statement of the HF name of every single-source tensor (MODEL_SPEC §2).
std::map<std::string, std::string> SingleSources(const ModelConfig& c) {
  std::map<std::string, std::string> m = {
      {"embed", "model.embed_tokens.weight"}, {"norm", "model.norm.weight"}, {"head", "lm_head.weight"}};
  auto layer = [&](uint32_t l, const std::string& o) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    m[o + "attn_norm"] = p + "input_layernorm.weight";
    m[o + "ffn_norm"] = p + "post_attention_layernorm.weight";
    if (c.q_lora_rank == 0) {
      m[o + "attn.q_proj"] = p + "self_attn.q_proj.weight";
    } else {
      m[o + "attn.q_a_proj"] = p + "self_attn.q_a_proj.weight";
      m[o + "attn.q_a_norm"] = p + "self_attn.q_a_layernorm.weight";
      m[o + "attn.q_b_proj"] = p + "self_attn.q_b_proj.weight";
    }
    m[o + "attn.kv_a_proj"] = p + "self_attn.kv_a_proj_with_mqa.weight";
    m[o + "attn.kv_a_norm"] = p + "self_attn.kv_a_layernorm.weight";
    m[o + "attn.o_proj"] = p + "self_attn.o_proj.weight";
    if (!c.IsMoeLayer(l)) {
      for (const char* k : {"gate_proj", "up_proj", "down_proj"}) m[o + "mlp." + k] = p + "mlp." + k + ".weight";
    } else {
      m[o + "moe.router"] = p + "mlp.gate.weight";
      if (c.topk_method == TopkMethod::kNoauxTc) m[o + "moe.router_bias"] = p + "mlp.gate.e_score_correction_bias";
      m[o + "moe.shared_gate"] = p + "mlp.shared_experts.gate_proj.weight";
      m[o + "moe.shared_up"] = p + "mlp.shared_experts.up_proj.weight";
      m[o + "moe.shared_down"] = p + "mlp.shared_experts.down_proj.weight";
    }
  };
  for (uint32_t l = 0; l < c.num_layers; ++l) layer(l, "layers." + std::to_string(l) + ".");
  if (c.num_nextn_predict_layers == 1) {
    const std::string p = "model.layers." + std::to_string(c.num_layers) + ".";
    layer(c.num_layers, "mtp.");
    m["mtp.embed"] = p + "embed_tokens.weight";
    m["mtp.enorm"] = p + "enorm.weight";
    m["mtp.hnorm"] = p + "hnorm.weight";
    m["mtp.eh_proj"] = p + "eh_proj.weight";
    m["mtp.norm"] = p + "shared_head.norm.weight";
    m["mtp.head"] = p + "shared_head.head.weight";
  }
  return m;
}

// --- golden conversions -----------------------------------------------------------------------

class ConverterGoldenTest : public ::testing::TestWithParam<std::tuple<Fixture, WeightsMode>> {};

TEST_P(ConverterGoldenTest, ConvertsAndMatchesSource) {
  const Fixture& fx = std::get<0>(GetParam());
  const WeightsMode mode = std::get<1>(GetParam());
  TempDir out_dir;
  const std::string out = out_dir / "model.moerun";
  ConvertOptions options;
  options.weights = mode;
  options.progress = true;  // not a TTY under the test runner: must stay silent and harmless
  const Status st = ConvertHfCheckpoint(fx.dir, out, options);
  ASSERT_TRUE(st.ok()) << st.message();
  EXPECT_EQ(std::distance(fs::directory_iterator(out_dir.path()), fs::directory_iterator()), 1);

  VerifyOptions vo;
  vo.check_weight_checksums = true;
  auto file = ModelFile::Open(out, vo);
  ASSERT_TRUE(file.ok()) << file.status().message();
  const ModelFile& mf = **file;
  const ModelConfig& c = mf.config();

  auto ck = Checkpoint::Open(fx.dir);
  ASSERT_TRUE(ck.ok()) << ck.status().message();
  auto hf = ParseHfConfigFull((*ck)->config_text(), (*ck)->config_path());
  ASSERT_TRUE(hf.ok());
  EXPECT_EQ(c.hidden_size, hf->config.hidden_size);
  EXPECT_EQ(c.n_routed_experts, hf->config.n_routed_experts);
  EXPECT_EQ(c.topk_method, hf->config.topk_method);
  EXPECT_EQ(c.num_nextn_predict_layers, hf->config.num_nextn_predict_layers);
  EXPECT_FLOAT_EQ(c.rope.factor, hf->config.rope.factor);

  // Provenance.
  const fb::Provenance* prov = mf.graph()->provenance();
  ASSERT_NE(prov, nullptr);
  EXPECT_EQ(prov->converter_version()->str(), "0.1.0");
  EXPECT_EQ(prov->source()->str(), "hf:" + hf->architecture);
  EXPECT_EQ(prov->weights_mode()->str(), WeightsModeName(mode));
  const bool fp8 = Contains(fx.label, "fp8");
  EXPECT_EQ(prov->source_dtype()->str(), fp8 ? "f8_e4m3" : "bf16");

  // Graph: Embedding, 6 per layer, RMSNorm, LmHead; MTP: MtpProject, 6, RMSNorm, LmHead.
  const auto* nodes = mf.graph()->nodes();
  ASSERT_EQ(nodes->size(), 1 + 6 * c.num_layers + 2);
  const size_t n_mtp = mf.graph()->mtp_nodes() ? mf.graph()->mtp_nodes()->size() : 0;
  EXPECT_EQ(n_mtp, c.num_nextn_predict_layers == 1 ? 9u : 0u);
  const fb::Op layer_ops[] = {fb::Op::RMSNorm, fb::Op::MlaAttention, fb::Op::ResidualAdd, fb::Op::RMSNorm,
                              fb::Op::Moe, fb::Op::ResidualAdd};
  EXPECT_EQ(nodes->Get(0)->op(), fb::Op::Embedding);
  for (uint32_t l = 0; l < c.num_layers; ++l)
    for (int k = 0; k < 6; ++k) {
      const fb::Node* n = nodes->Get(1 + 6 * l + k);
      const fb::Op want = k == 4 && !c.IsMoeLayer(l) ? fb::Op::DenseMlp : layer_ops[k];
      EXPECT_EQ(n->op(), want) << "layer " << l << " node " << k;
      EXPECT_EQ(n->layer(), static_cast<int32_t>(l));
    }
  EXPECT_EQ(nodes->Get(nodes->size() - 2)->op(), fb::Op::RMSNorm);
  EXPECT_EQ(nodes->Get(nodes->size() - 1)->op(), fb::Op::LmHead);
  if (n_mtp) {
    EXPECT_EQ(mf.graph()->mtp_nodes()->Get(0)->op(), fb::Op::MtpProject);
    EXPECT_EQ(mf.graph()->mtp_nodes()->Get(0)->layer(), static_cast<int32_t>(c.num_layers));
    EXPECT_EQ(mf.graph()->mtp_nodes()->Get(5)->op(), fb::Op::Moe);
    EXPECT_EQ(mf.graph()->mtp_nodes()->Get(8)->op(), fb::Op::LmHead);
  }

  // Every tensor is used exactly once, by a node slot or as a block scale; shapes and dtypes follow
  // the contract; values follow the source.
  const auto& ts = mf.tensors();
  std::vector<int> uses(ts.size(), 0);
  const auto single = SingleSources(c);
  size_t checked_single = 0, checked_experts = 0, checked_split = 0;
  for (const auto* list : {mf.graph()->nodes(), mf.graph()->mtp_nodes()}) {
    if (!list) continue;
    for (const fb::Node* n : *list) {
      if (!n->weights()) continue;
      const std::string layer_prefix =
          "model.layers." + std::to_string(n->layer() < 0 ? 0 : n->layer()) + ".";
      for (const fb::WeightSlot* w : *n->weights()) {
        ASSERT_LT(w->tensor(), ts.size());
        const TensorInfo& t = ts[w->tensor()];
        ++uses[w->tensor()];
        SCOPED_TRACE(t.name);
        EXPECT_EQ(t.shape, ExpectedShape(w->role(), c)) << fb::EnumNameRole(w->role());
        if (t.scale >= 0) {
          ++uses[t.scale];
          EXPECT_EQ(t.dtype, DType::kF8E4M3);
          EXPECT_EQ(ts[t.scale].name, t.name + ".scale");
          EXPECT_EQ(t.block_rows, 128u);
          EXPECT_EQ(t.block_cols, 128u);
        }
        const R role = w->role();
        if (auto it = single.find(t.name); it != single.end()) {
          Src s = LoadSrc(**ck, it->second);
          EXPECT_EQ(t.dtype, ExpectedDType(role, s.dtype, mode));
          if (t.dtype == DType::kF8E4M3 && s.dtype != DType::kF8E4M3) {
            ExpectQuantized(t, ts[t.scale], {s});
          } else {
            if (t.dtype == DType::kF8E4M3) {
              ASSERT_EQ(ts[t.scale].size, s.scale_raw.size());
              EXPECT_EQ(0, std::memcmp(ts[t.scale].data, s.scale_raw.data(), s.scale_raw.size()));
            }
            ExpectValues(t, Concat({std::move(s)}));
          }
          ++checked_single;
        } else if (role == R::ExpertsGate || role == R::ExpertsUp || role == R::ExpertsDown) {
          const char* proj = role == R::ExpertsGate ? "gate_proj" : role == R::ExpertsUp ? "up_proj" : "down_proj";
          std::vector<Src> srcs;
          std::vector<uint8_t> scales;
          for (uint32_t e = 0; e < c.n_routed_experts; ++e) {
            srcs.push_back(LoadSrc(**ck, layer_prefix + "mlp.experts." + std::to_string(e) + "." + proj + ".weight"));
            scales.insert(scales.end(), srcs.back().scale_raw.begin(), srcs.back().scale_raw.end());
          }
          EXPECT_EQ(t.dtype, ExpectedDType(role, srcs[0].dtype, mode));
          if (t.dtype == DType::kF8E4M3) {  // stacked scale [E, ceil(out/128), ceil(in/128)]
            EXPECT_EQ(ts[t.scale].shape,
                      (std::vector<uint64_t>{t.shape[0], CeilDiv(t.shape[1], 128), CeilDiv(t.shape[2], 128)}));
          }
          if (t.dtype == DType::kF8E4M3 && srcs[0].dtype != DType::kF8E4M3) {
            ExpectQuantized(t, ts[t.scale], srcs);
          } else {
            if (t.dtype == DType::kF8E4M3) {
              ASSERT_EQ(ts[t.scale].size, scales.size());
              EXPECT_EQ(0, std::memcmp(ts[t.scale].data, scales.data(), scales.size()));
            }
            ExpectValues(t, Concat(std::move(srcs)));
          }
          ++checked_experts;
        } else if (role == R::UkT || role == R::Uv) {
          Gather g;
          g.srcs.push_back(LoadSrc(**ck, layer_prefix + "self_attn.kv_b_proj.weight"));
          EXPECT_EQ(t.dtype, ExpectedDType(role, g.srcs[0].dtype, mode));
          const uint64_t H = c.num_heads, dn = c.qk_nope_head_dim, dv = c.v_head_dim, r = c.kv_lora_rank;
          for (uint64_t h = 0; h < H; ++h) {
            if (role == R::UkT) {  // UkT[h][c][i] = kv_b[h*(dn+dv) + i][c]
              for (uint64_t col = 0; col < r; ++col)
                for (uint64_t i = 0; i < dn; ++i) g.idx.push_back({0, (h * (dn + dv) + i) * r + col});
            } else {  // Uv[h][j][c] = kv_b[h*(dn+dv) + dn + j][c]
              for (uint64_t j = 0; j < dv; ++j)
                for (uint64_t col = 0; col < r; ++col) g.idx.push_back({0, (h * (dn + dv) + dn + j) * r + col});
            }
          }
          ExpectValues(t, g);
          ++checked_split;
        } else {
          ADD_FAILURE() << "tensor " << t.name << " (" << fb::EnumNameRole(role) << ") has no known source";
        }
      }
    }
  }
  for (size_t i = 0; i < ts.size(); ++i) EXPECT_EQ(uses[i], 1) << ts[i].name;
  EXPECT_EQ(checked_single, single.size());
  const uint32_t moe_layers = c.num_layers - c.first_k_dense_replace + c.num_nextn_predict_layers;
  EXPECT_EQ(checked_experts, 3u * moe_layers);
  EXPECT_EQ(checked_split, 2u * (c.num_layers + c.num_nextn_predict_layers));
}

std::string ParamName(const ::testing::TestParamInfo<std::tuple<Fixture, WeightsMode>>& info) {
  return std::get<0>(info.param).label + "_" + WeightsModeName(std::get<1>(info.param));
}

INSTANTIATE_TEST_SUITE_P(ConverterAll, ConverterGoldenTest,
                         ::testing::Combine(::testing::ValuesIn(AllFixtures()),
                                            ::testing::Values(WeightsMode::kKeep, WeightsMode::kBF16,
                                                              WeightsMode::kF32, WeightsMode::kFp8)),
                         ParamName);
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(ConverterGoldenTest);

TEST(ConverterTest, FixturesArePresent) { EXPECT_FALSE(AllFixtures().empty()); }

TEST(ConverterTest, ParseWeightsMode) {
  EXPECT_EQ(*ParseWeightsMode("keep"), WeightsMode::kKeep);
  EXPECT_EQ(*ParseWeightsMode("bf16"), WeightsMode::kBF16);
  EXPECT_EQ(*ParseWeightsMode("f32"), WeightsMode::kF32);
  EXPECT_EQ(*ParseWeightsMode("fp8"), WeightsMode::kFp8);
  EXPECT_EQ(*ParseWeightsMode("int8"), WeightsMode::kInt8);
  for (WeightsMode m :
       {WeightsMode::kKeep, WeightsMode::kBF16, WeightsMode::kF32, WeightsMode::kFp8, WeightsMode::kInt8})
    EXPECT_EQ(*ParseWeightsMode(WeightsModeName(m)), m);
  auto bad = ParseWeightsMode("int4");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(bad.status().message(), "int4"));
  EXPECT_TRUE(Contains(bad.status().message(), "int8"));
}

// --- broken checkpoints -----------------------------------------------------------------------

TEST(ConverterTest, Fp8ModeMixedExpertDtypes) {
  EditableCheckpoint ck("v3_fp8");
  REQUIRE_FIXTURE(ck);
  const std::string name = "model.layers.1.mlp.experts.4.up_proj.weight";
  const StTensorData q = ck.Get(name), sc = ck.Get(name + "_scale_inv");
  ASSERT_EQ(q.dtype, StDType::kF8E4M3);
  const uint64_t rows = q.shape[0], cols = q.shape[1], scols = CeilDiv(cols, 128);
  Src bf;
  bf.name = name;
  bf.dtype = DType::kBF16;
  bf.shape = q.shape;
  StTensorData t{name, StDType::kBF16, q.shape, std::vector<uint8_t>(rows * cols * 2)};
  for (uint64_t i = 0; i < rows; ++i)
    for (uint64_t j = 0; j < cols; ++j) {
      float scale;
      std::memcpy(&scale, sc.bytes.data() + ((i / 128) * scols + j / 128) * 4, 4);
      const uint16_t b = F32ToBf16(F8E4M3ToF32(q.bytes[i * cols + j]) * scale * 1.01f);
      std::memcpy(t.bytes.data() + (i * cols + j) * 2, &b, 2);
      bf.f32.push_back(Bf16ToF32(b));
    }
  ck.Remove(name + "_scale_inv");
  ck.Replace(t);
  ExpectConvertFails(ck, StatusCode::kUnsupported, {name, "different dtypes"});

  TempDir out;
  ConvertOptions options;
  options.weights = WeightsMode::kFp8;
  const Status st = ConvertHfCheckpoint(ck.path(), out / "model.moerun", options);
  ASSERT_TRUE(st.ok()) << st.message();
  VerifyOptions vo;
  vo.check_weight_checksums = true;
  auto file = ModelFile::Open(out / "model.moerun", vo);
  ASSERT_TRUE(file.ok()) << file.status().message();
  const TensorInfo* up = nullptr;
  for (const TensorInfo& x : (*file)->tensors())
    if (x.name == "layers.1.moe.experts_up") up = &x;
  ASSERT_NE(up, nullptr);
  ASSERT_EQ(up->dtype, DType::kF8E4M3);
  const TensorInfo& upscale = (*file)->tensors()[up->scale];
  const uint64_t per = rows * cols, sper = CeilDiv(rows, 128) * scols;
  ASSERT_EQ(up->shape[0] * per, up->numel);
  auto orig = Checkpoint::Open(FixtureDir("v3_fp8"));
  ASSERT_TRUE(orig.ok());
  for (uint64_t e = 0; e < up->shape[0]; ++e) {
    SCOPED_TRACE("expert " + std::to_string(e));
    if (e == 4) {
      TensorInfo wv = *up, sv = upscale;  // views of expert 4's slice
      wv.data += e * per;
      wv.numel = per;
      sv.data += e * sper * 4;
      sv.numel = sper;
      ExpectQuantized(wv, sv, {bf});
      continue;
    }
    const Src s = LoadSrc(**orig, "model.layers.1.mlp.experts." + std::to_string(e) + ".up_proj.weight");
    EXPECT_EQ(std::memcmp(up->data + e * per, s.raw.data(), per), 0);
    EXPECT_EQ(std::memcmp(upscale.data + e * sper * 4, s.scale_raw.data(), sper * 4), 0);
  }
}

}  // namespace
}  // namespace moerun::convert
