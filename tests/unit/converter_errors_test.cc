// Broken copies of the golden checkpoints, each of which must make ConvertHfCheckpoint fail with the
// right code, a message naming the tensor / file, and no output (nor temporary) file left behind.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "converters/converter.h"
#include "converters/safetensors.h"
#include "runtime/format/model_file.h"
#include "tests/unit/converter_test_util.h"

namespace moerun::convert {
namespace {

TEST(ConverterTest, MissingTensorInShardedCheckpoint) {
  EditableCheckpoint ck("v3_fp8");
  REQUIRE_FIXTURE(ck);
  const std::string name = "model.layers.1.mlp.experts.3.up_proj.weight";
  ck.Remove(name);
  ck.Remove(name + "_scale_inv");
  ExpectConvertFails(ck, StatusCode::kInvalidArgument, {name, "model.safetensors.index.json", "missing"});
}

TEST(ConverterTest, MissingTensorInSingleFile) {
  EditableCheckpoint ck("v2lite_bf16");
  REQUIRE_FIXTURE(ck);
  const std::string name = "model.layers.2.self_attn.kv_a_layernorm.weight";
  ck.Remove(name);
  ExpectConvertFails(ck, StatusCode::kInvalidArgument, {name, "model.safetensors", "missing"});
}

TEST(ConverterTest, MissingRouterBiasForNoauxTc) {
  EditableCheckpoint ck("v3_bf16");
  REQUIRE_FIXTURE(ck);
  ck.Remove("model.layers.2.mlp.gate.e_score_correction_bias");
  ExpectConvertFails(ck, StatusCode::kInvalidArgument, {"model.layers.2.mlp.gate.e_score_correction_bias"});
}

TEST(ConverterTest, ExtraTensor) {
  EditableCheckpoint ck("v3_bf16");
  REQUIRE_FIXTURE(ck);
  StTensorData extra{"model.layers.0.mlp.bogus.weight", StDType::kBF16, {4}, std::vector<uint8_t>(8, 0)};
  ck.Put("model-00002-of-00002.safetensors", extra);
  ExpectConvertFails(ck, StatusCode::kInvalidArgument,
                     {"unexpected", extra.name, "model-00002-of-00002.safetensors"});
}

TEST(ConverterTest, ExtraExpertBeyondConfig) {
  EditableCheckpoint ck("v2lite_bf16");
  REQUIRE_FIXTURE(ck);
  auto cfg = ck.Config();
  const uint32_t E = cfg["n_routed_experts"];
  StTensorData t = ck.Get("model.layers.1.mlp.experts.0.gate_proj.weight");
  t.name = "model.layers.1.mlp.experts." + std::to_string(E) + ".gate_proj.weight";
  ck.Put("model.safetensors", t);
  ExpectConvertFails(ck, StatusCode::kInvalidArgument, {"unexpected", t.name});
}

TEST(ConverterTest, MtpTensorsWithoutMtpInConfig) {
  EditableCheckpoint ck("v3_bf16");
  REQUIRE_FIXTURE(ck);
  json cfg = ck.Config();
  cfg["num_nextn_predict_layers"] = 0;
  ck.SetConfig(cfg);
  ExpectConvertFails(ck, StatusCode::kInvalidArgument, {"unexpected", "model.layers.3.", "MTP"});
}

TEST(ConverterTest, MtpInConfigWithoutTensors) {
  EditableCheckpoint ck("v2_grouped_bf16");
  REQUIRE_FIXTURE(ck);
  json cfg = ck.Config();
  cfg["architectures"] = {"DeepseekV3ForCausalLM"};
  cfg["model_type"] = "deepseek_v3";
  cfg["scoring_func"] = "sigmoid";
  cfg["topk_method"] = "noaux_tc";
  cfg["num_nextn_predict_layers"] = 1;
  ck.SetConfig(cfg);
  // The first thing a V3 reading of this V2 checkpoint misses is the correction bias of layer 1.
  ExpectConvertFails(ck, StatusCode::kInvalidArgument, {"model.layers.1.mlp.gate.e_score_correction_bias"});
}

TEST(ConverterTest, WrongShape) {
  EditableCheckpoint ck("v3_bf16");
  REQUIRE_FIXTURE(ck);
  StTensorData t = ck.Get("model.layers.1.self_attn.o_proj.weight");
  ASSERT_EQ(t.shape.size(), 2u);
  t.shape[1] += 1;
  t.bytes.resize(t.shape[0] * t.shape[1] * 2);
  const std::string shard = ck.ShardOf(t.name);
  ck.Replace(t);
  ExpectConvertFails(ck, StatusCode::kInvalidArgument, {t.name, shard, "has shape", "expected"});
}

TEST(ConverterTest, WrongExpertShape) {
  EditableCheckpoint ck("v2lite_bf16");
  REQUIRE_FIXTURE(ck);
  StTensorData t = ck.Get("model.layers.2.mlp.experts.1.down_proj.weight");
  std::swap(t.shape[0], t.shape[1]);  // [I_e, D] instead of [D, I_e]
  ck.Replace(t);
  ExpectConvertFails(ck, StatusCode::kInvalidArgument, {t.name, "has shape", "expected"});
}

TEST(ConverterTest, IndexPointsToMissingShard) {
  EditableCheckpoint ck("v3_fp8");
  REQUIRE_FIXTURE(ck);
  json j = ck.Index();
  j["weight_map"]["lm_head.weight"] = "model-00003-of-00003.safetensors";
  ck.SetIndex(j);
  ExpectConvertFails(ck, StatusCode::kIo, {"model-00003-of-00003.safetensors", "model.safetensors.index.json"});
}

TEST(ConverterTest, IndexWithPathTraversal) {
  EditableCheckpoint ck("v3_fp8");
  REQUIRE_FIXTURE(ck);
  json j = ck.Index();
  j["weight_map"]["lm_head.weight"] = "../model-00001-of-00002.safetensors";
  ck.SetIndex(j);
  ExpectConvertFails(ck, StatusCode::kCorruptFile, {"model.safetensors.index.json", "lm_head.weight"});
}

TEST(ConverterTest, MalformedIndexJson) {
  EditableCheckpoint ck("v3_bf16");
  REQUIRE_FIXTURE(ck);
  const std::string text = ReadFile(ck.file("model.safetensors.index.json"));
  WriteFile(ck.file("model.safetensors.index.json"), text.substr(0, text.size() / 2));
  ExpectConvertFails(ck, StatusCode::kCorruptFile, {"model.safetensors.index.json"});
}

TEST(ConverterTest, TruncatedShard) {
  EditableCheckpoint ck("v3_bf16");
  REQUIRE_FIXTURE(ck);
  const std::string shard = ck.file("model-00002-of-00002.safetensors");
  fs::resize_file(shard, fs::file_size(shard) - 100);
  ExpectConvertFails(ck, StatusCode::kCorruptFile, {"model-00002-of-00002.safetensors"});
}

TEST(ConverterTest, Fp8WeightWithoutScale) {
  EditableCheckpoint ck("v3_fp8");
  REQUIRE_FIXTURE(ck);
  const std::string name = "model.layers.1.self_attn.o_proj.weight";
  ck.Remove(name + "_scale_inv");
  ExpectConvertFails(ck, StatusCode::kInvalidArgument, {name, "block-scale", ck.ShardOf(name)});
}

TEST(ConverterTest, Fp8WrongScaleShape) {
  EditableCheckpoint ck("v3_fp8");
  REQUIRE_FIXTURE(ck);
  const std::string name = "model.layers.2.mlp.experts.5.gate_proj.weight_scale_inv";
  StTensorData s = ck.Get(name);
  s.shape = {s.shape[0] + 1, s.shape[1]};
  s.bytes.resize(s.shape[0] * s.shape[1] * 4);
  ck.Replace(s);
  ExpectConvertFails(ck, StatusCode::kInvalidArgument, {name, "has shape", "expected"});
}

TEST(ConverterTest, Fp8ModeRejectsNonFiniteWeight) {
  EditableCheckpoint ck("v3_bf16");
  REQUIRE_FIXTURE(ck);
  const std::string name = "model.layers.2.mlp.experts.3.down_proj.weight";
  StTensorData t = ck.Get(name);
  ASSERT_EQ(t.dtype, StDType::kBF16);
  const uint16_t inf = 0x7f80;
  std::memcpy(t.bytes.data() + 2 * 7, &inf, 2);
  ck.Replace(t);
  ExpectConvertFails(ck, StatusCode::kInvalidArgument, {name, ck.ShardOf(name), "non-finite"}, WeightsMode::kFp8);
}

// Stacked experts of mixed dtypes (one expert bf16, the rest FP8): keep mode refuses; fp8 mode
// copies the FP8 experts and their scales bit for bit and quantises the bf16 one in its place.

TEST(ConverterTest, ScaleWithoutFp8Weight) {
  EditableCheckpoint ck("v3_bf16");
  REQUIRE_FIXTURE(ck);
  const std::string name = "model.layers.0.self_attn.o_proj.weight_scale_inv";
  ck.Put(ck.ShardOf("model.layers.0.self_attn.o_proj.weight"),
         StTensorData{name, StDType::kF32, {1, 1}, std::vector<uint8_t>(4, 0)});
  ExpectConvertFails(ck, StatusCode::kInvalidArgument, {"unexpected tensor", name});
}

TEST(ConverterTest, UnsupportedSourceDtype) {
  EditableCheckpoint ck("v3_bf16");
  REQUIRE_FIXTURE(ck);
  StTensorData t = ck.Get("model.layers.1.post_attention_layernorm.weight");
  t.dtype = StDType::kI16;  // same byte size as bf16
  ck.Replace(t);
  ExpectConvertFails(ck, StatusCode::kUnsupported, {t.name, "I16"});
}

TEST(ConverterTest, Fp8EmbeddingRejected) {
  EditableCheckpoint ck("v3_fp8");
  REQUIRE_FIXTURE(ck);
  StTensorData t = ck.Get("model.embed_tokens.weight");
  ASSERT_EQ(t.dtype, StDType::kBF16);
  const uint64_t rows = t.shape[0], cols = t.shape[1];
  t.dtype = StDType::kF8E4M3;
  t.bytes.assign(rows * cols, 0x38);  // 1.0
  const std::string shard = ck.ShardOf(t.name);
  ck.Replace(t);
  ck.Put(shard, StTensorData{t.name + "_scale_inv", StDType::kF32, {CeilDiv(rows, 128), CeilDiv(cols, 128)},
                             std::vector<uint8_t>(CeilDiv(rows, 128) * CeilDiv(cols, 128) * 4, 0)});
  ExpectConvertFails(ck, StatusCode::kUnsupported, {t.name, "F8_E4M3"});
}

TEST(ConverterTest, UnsupportedConfig) {
  EditableCheckpoint ck("v2lite_bf16");
  REQUIRE_FIXTURE(ck);
  json cfg = ck.Config();
  cfg["hidden_act"] = "gelu";
  ck.SetConfig(cfg);
  ExpectConvertFails(ck, StatusCode::kUnsupported, {"gelu", "config.json"});
}

TEST(ConverterTest, UnwritableOutput) {
  const std::string dir = FixtureDir("v2lite_bf16");
  ASSERT_FALSE(dir.empty()) << "fixture v2lite_bf16 not present";
  TempDir out;
  const Status st = ConvertHfCheckpoint(dir, out / "no/such/dir/model.moerun", ConvertOptions{});
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), StatusCode::kIo) << st.message();
  EXPECT_TRUE(fs::is_empty(out.path()));
}

TEST(ConverterTest, OverwritesExistingOutputAtomically) {
  const std::string dir = FixtureDir("v2lite_bf16");
  ASSERT_FALSE(dir.empty()) << "fixture v2lite_bf16 not present";
  TempDir out;
  const std::string path = out / "model.moerun";
  WriteFile(path, "old contents");
  ASSERT_TRUE(ConvertHfCheckpoint(dir, path, ConvertOptions{}).ok());
  EXPECT_TRUE(ModelFile::Open(path, VerifyOptions{}).ok());
  // A failing conversion leaves the previous file untouched.
  EditableCheckpoint ck("v2lite_bf16");
  ck.Remove("lm_head.weight");
  const auto before = fs::file_size(path);
  EXPECT_FALSE(ConvertHfCheckpoint(ck.path(), path, ConvertOptions{}).ok());
  EXPECT_EQ(fs::file_size(path), before);
  EXPECT_EQ(std::distance(fs::directory_iterator(out.path()), fs::directory_iterator()), 1);
}


}  // namespace
}  // namespace moerun::convert
