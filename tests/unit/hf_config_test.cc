// ParseHfConfig: the golden configs, transformers' defaults for missing keys, and one test per class
// of wrong / unsupported value. Each error must carry the right code and name the key and the file.
#include "converters/hf_config.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

namespace moerun::convert {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kPath = "/ckpt/config.json";

std::string ReadFile(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// A small valid V3 config in the hub layout.
json BaseV3() {
  return json::parse(R"({
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
    "vocab_size": 320, "hidden_size": 192, "intermediate_size": 320, "moe_intermediate_size": 48,
    "num_hidden_layers": 3, "num_attention_heads": 3, "num_key_value_heads": 3, "first_k_dense_replace": 1,
    "moe_layer_freq": 1, "kv_lora_rank": 80, "q_lora_rank": 160, "qk_nope_head_dim": 48, "qk_rope_head_dim": 32,
    "v_head_dim": 48, "n_routed_experts": 12, "n_shared_experts": 1, "num_experts_per_tok": 3,
    "hidden_act": "silu", "max_position_embeddings": 4096, "rms_norm_eps": 1e-06, "rope_theta": 10000.0,
    "tie_word_embeddings": false, "bos_token_id": 0, "eos_token_id": 1, "attention_bias": false,
    "topk_method": "noaux_tc", "n_group": 3, "topk_group": 2, "norm_topk_prob": true,
    "routed_scaling_factor": 2.5, "scoring_func": "sigmoid", "num_nextn_predict_layers": 1,
    "rope_scaling": {"type": "yarn", "factor": 16.0, "original_max_position_embeddings": 256,
                     "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}
  })");
}

json BaseV2() {
  json j = BaseV3();
  j["architectures"] = {"DeepseekV2ForCausalLM"};
  j["model_type"] = "deepseek_v2";
  j["scoring_func"] = "softmax";
  j["topk_method"] = "group_limited_greedy";
  j["norm_topk_prob"] = false;
  j["hidden_size"] = 192;
  j.erase("num_nextn_predict_layers");
  return j;
}

Result<ModelConfig> Parse(const json& j) { return ParseHfConfig(j.dump(), kPath); }

void ExpectError(const json& j, StatusCode code, const std::string& needle) {
  auto r = Parse(j);
  ASSERT_FALSE(r.ok()) << j.dump();
  EXPECT_EQ(r.status().code(), code) << r.status().message();
  EXPECT_TRUE(Contains(r.status().message(), needle)) << r.status().message();
  EXPECT_TRUE(Contains(r.status().message(), kPath)) << r.status().message();
}

// --- golden configs ---------------------------------------------------------------------------

struct GoldenExpect {
  const char* name;
  Architecture arch;
  uint32_t q_lora_rank, n_shared, n_group, topk_group;
  TopkMethod topk;
  float scaling;
  bool norm_topk;
  float mscale;
  uint32_t nextn;
  bool quantized;
};

TEST(HfConfigTest, SharedGoldenConfigs) {
  const std::string root = MOERUN_SHARED_GOLDEN_DIR;
  if (!fs::exists(root)) GTEST_SKIP() << root << " not present";
  const GoldenExpect cases[] = {
      {"v2lite_bf16", Architecture::kDeepseekV2, 0, 2, 1, 1, TopkMethod::kGreedy, 1.0f, false, 0.707f, 0, false},
      {"v2_grouped_bf16", Architecture::kDeepseekV2, 192, 1, 4, 2, TopkMethod::kGroupLimitedGreedy, 16.0f, false,
       0.707f, 0, false},
      {"v3_bf16", Architecture::kDeepseekV3, 192, 1, 4, 2, TopkMethod::kNoauxTc, 2.5f, true, 1.0f, 1, false},
      {"v3_fp8", Architecture::kDeepseekV3, 192, 1, 4, 2, TopkMethod::kNoauxTc, 2.5f, true, 1.0f, 0, true},
  };
  for (const GoldenExpect& e : cases) {
    SCOPED_TRACE(e.name);
    const std::string path = root + "/" + e.name + "/config.json";
    auto r = ParseHfConfigFull(ReadFile(path), path);
    ASSERT_TRUE(r.ok()) << r.status().message();
    const ModelConfig& c = r->config;
    EXPECT_EQ(c.architecture, e.arch);
    EXPECT_EQ(r->architecture, e.arch == Architecture::kDeepseekV2 ? "DeepseekV2ForCausalLM" : "DeepseekV3ForCausalLM");
    EXPECT_EQ(r->has_quantization_config, e.quantized);
    EXPECT_EQ(c.vocab_size, 768u);
    EXPECT_EQ(c.hidden_size, 256u);
    EXPECT_EQ(c.intermediate_size, 384u);
    EXPECT_EQ(c.moe_intermediate_size, 80u);
    EXPECT_EQ(c.num_layers, 3u);
    EXPECT_EQ(c.num_heads, 4u);
    EXPECT_EQ(c.q_lora_rank, e.q_lora_rank);
    EXPECT_EQ(c.kv_lora_rank, 96u);
    EXPECT_EQ(c.qk_nope_head_dim, 64u);
    EXPECT_EQ(c.qk_rope_head_dim, 32u);
    EXPECT_EQ(c.v_head_dim, 64u);
    EXPECT_EQ(c.n_routed_experts, 8u);
    EXPECT_EQ(c.n_shared_experts, e.n_shared);
    EXPECT_EQ(c.num_experts_per_tok, 2u);
    EXPECT_EQ(c.n_group, e.n_group);
    EXPECT_EQ(c.topk_group, e.topk_group);
    EXPECT_EQ(c.topk_method, e.topk);
    EXPECT_EQ(c.scoring_func, e.arch == Architecture::kDeepseekV2 ? ScoringFunc::kSoftmax : ScoringFunc::kSigmoid);
    EXPECT_FLOAT_EQ(c.routed_scaling_factor, e.scaling);
    EXPECT_EQ(c.norm_topk_prob, e.norm_topk);
    EXPECT_EQ(c.first_k_dense_replace, 1u);
    EXPECT_FLOAT_EQ(c.rms_norm_eps, 1e-6f);
    EXPECT_EQ(c.max_position_embeddings, 4096u);
    EXPECT_EQ(c.bos_token_id, 0);
    EXPECT_EQ(c.eos_token_id, 1);
    EXPECT_EQ(c.num_nextn_predict_layers, e.nextn);
    EXPECT_EQ(c.rope.scaling, RopeScaling::kYarn);
    EXPECT_FLOAT_EQ(c.rope.theta, 10000.0f);
    EXPECT_FLOAT_EQ(c.rope.factor, 8.0f);
    EXPECT_EQ(c.rope.original_max_position_embeddings, 512u);
    EXPECT_FLOAT_EQ(c.rope.beta_fast, 32.0f);
    EXPECT_FLOAT_EQ(c.rope.beta_slow, 1.0f);
    EXPECT_FLOAT_EQ(c.rope.mscale, e.mscale);
    EXPECT_FLOAT_EQ(c.rope.mscale_all_dim, e.mscale);
    EXPECT_FLOAT_EQ(c.rope.attention_factor, 0.0f);
  }
}

// The project's own fixtures (regenerated by tests/golden/make_golden.py): cross-check every field
// against the JSON itself.
TEST(HfConfigTest, ProjectGoldenConfigsMatchTheirJson) {
  const std::string root = std::string(MOERUN_TEST_DATA_DIR) + "/golden";
  if (!fs::exists(root)) GTEST_SKIP() << root << " not present";
  int seen = 0;
  for (const auto& entry : fs::directory_iterator(root)) {
    const std::string path = entry.path().string() + "/config.json";
    if (!fs::exists(path)) continue;
    SCOPED_TRACE(path);
    ++seen;
    const json j = json::parse(ReadFile(path));
    auto r = ParseHfConfigFull(j.dump(), path);
    ASSERT_TRUE(r.ok()) << r.status().message();
    const ModelConfig& c = r->config;
    const bool v3 = j["model_type"] == "deepseek_v3";
    EXPECT_EQ(c.architecture, v3 ? Architecture::kDeepseekV3 : Architecture::kDeepseekV2);
    EXPECT_EQ(c.vocab_size, j["vocab_size"].get<uint32_t>());
    EXPECT_EQ(c.hidden_size, j["hidden_size"].get<uint32_t>());
    EXPECT_EQ(c.intermediate_size, j["intermediate_size"].get<uint32_t>());
    EXPECT_EQ(c.moe_intermediate_size, j["moe_intermediate_size"].get<uint32_t>());
    EXPECT_EQ(c.num_layers, j["num_hidden_layers"].get<uint32_t>());
    EXPECT_EQ(c.num_heads, j["num_attention_heads"].get<uint32_t>());
    EXPECT_EQ(c.q_lora_rank, j["q_lora_rank"].is_null() ? 0u : j["q_lora_rank"].get<uint32_t>());
    EXPECT_EQ(c.kv_lora_rank, j["kv_lora_rank"].get<uint32_t>());
    EXPECT_EQ(c.qk_nope_head_dim, j["qk_nope_head_dim"].get<uint32_t>());
    EXPECT_EQ(c.qk_rope_head_dim, j["qk_rope_head_dim"].get<uint32_t>());
    EXPECT_EQ(c.v_head_dim, j["v_head_dim"].get<uint32_t>());
    EXPECT_EQ(c.n_routed_experts, j["n_routed_experts"].get<uint32_t>());
    EXPECT_EQ(c.n_shared_experts, j["n_shared_experts"].get<uint32_t>());
    EXPECT_EQ(c.num_experts_per_tok, j["num_experts_per_tok"].get<uint32_t>());
    EXPECT_EQ(c.first_k_dense_replace, j["first_k_dense_replace"].get<uint32_t>());
    EXPECT_FLOAT_EQ(c.routed_scaling_factor, j["routed_scaling_factor"].get<float>());
    EXPECT_EQ(c.norm_topk_prob, j["norm_topk_prob"].get<bool>());
    EXPECT_EQ(c.num_nextn_predict_layers, j.value("num_nextn_predict_layers", 0u));
    EXPECT_EQ(c.max_position_embeddings, j["max_position_embeddings"].get<uint32_t>());
    EXPECT_EQ(r->has_quantization_config, j.contains("quantization_config"));
    const std::string method = j["topk_method"];
    EXPECT_EQ(c.topk_method, method == "noaux_tc"   ? TopkMethod::kNoauxTc
                             : method == "greedy" ? TopkMethod::kGreedy
                                                  : TopkMethod::kGroupLimitedGreedy);
    if (method != "greedy") {
      EXPECT_EQ(c.n_group, j["n_group"].get<uint32_t>());
      EXPECT_EQ(c.topk_group, j["topk_group"].get<uint32_t>());
    }
    const json& rs = j["rope_scaling"];
    EXPECT_EQ(c.rope.scaling, RopeScaling::kYarn);
    EXPECT_FLOAT_EQ(c.rope.factor, rs["factor"].get<float>());
    EXPECT_EQ(c.rope.original_max_position_embeddings, rs["original_max_position_embeddings"].get<uint32_t>());
    EXPECT_FLOAT_EQ(c.rope.mscale, rs["mscale"].get<float>());
    EXPECT_FLOAT_EQ(c.rope.mscale_all_dim, rs["mscale_all_dim"].get<float>());
  }
  EXPECT_GT(seen, 0);
}

// --- defaults ---------------------------------------------------------------------------------

TEST(HfConfigTest, V3DefaultsForMissingKeys) {
  auto r = ParseHfConfigFull(R"({"architectures": ["DeepseekV3ForCausalLM"]})", kPath);
  ASSERT_TRUE(r.ok()) << r.status().message();
  const ModelConfig& c = r->config;
  EXPECT_EQ(c.vocab_size, 129280u);
  EXPECT_EQ(c.hidden_size, 7168u);
  EXPECT_EQ(c.intermediate_size, 18432u);
  EXPECT_EQ(c.moe_intermediate_size, 2048u);
  EXPECT_EQ(c.num_layers, 61u);
  EXPECT_EQ(c.num_heads, 128u);
  EXPECT_EQ(c.q_lora_rank, 1536u);
  EXPECT_EQ(c.kv_lora_rank, 512u);
  EXPECT_EQ(c.qk_nope_head_dim, 128u);
  EXPECT_EQ(c.qk_rope_head_dim, 64u);
  EXPECT_EQ(c.v_head_dim, 128u);
  EXPECT_EQ(c.n_routed_experts, 256u);
  EXPECT_EQ(c.n_shared_experts, 1u);
  EXPECT_EQ(c.num_experts_per_tok, 8u);
  EXPECT_EQ(c.n_group, 8u);
  EXPECT_EQ(c.topk_group, 4u);
  EXPECT_FLOAT_EQ(c.routed_scaling_factor, 2.5f);
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_EQ(c.first_k_dense_replace, 3u);
  EXPECT_EQ(c.scoring_func, ScoringFunc::kSigmoid);
  EXPECT_EQ(c.topk_method, TopkMethod::kNoauxTc);
  EXPECT_EQ(c.max_position_embeddings, 4096u);
  EXPECT_EQ(c.rope.scaling, RopeScaling::kNone);
  EXPECT_FLOAT_EQ(c.rope.theta, 10000.0f);
  EXPECT_EQ(c.bos_token_id, -1);
  EXPECT_EQ(c.eos_token_id, -1);
  EXPECT_EQ(c.num_nextn_predict_layers, 0u);
  EXPECT_FALSE(r->has_quantization_config);
}

TEST(HfConfigTest, V2DefaultsForMissingKeys) {
  auto r = ParseHfConfig(R"({"model_type": "deepseek_v2", "num_experts_per_tok": 6})", kPath);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->architecture, Architecture::kDeepseekV2);
  EXPECT_EQ(r->vocab_size, 102400u);
  EXPECT_EQ(r->hidden_size, 4096u);
  EXPECT_EQ(r->intermediate_size, 11008u);
  EXPECT_EQ(r->moe_intermediate_size, 1407u);
  EXPECT_EQ(r->num_layers, 32u);
  EXPECT_EQ(r->num_heads, 32u);
  EXPECT_EQ(r->q_lora_rank, 1536u);
  EXPECT_EQ(r->n_routed_experts, 64u);
  EXPECT_EQ(r->n_shared_experts, 2u);
  EXPECT_EQ(r->n_group, 1u);
  EXPECT_EQ(r->topk_group, 1u);
  EXPECT_EQ(r->first_k_dense_replace, 0u);
  EXPECT_FALSE(r->norm_topk_prob);
  EXPECT_FLOAT_EQ(r->routed_scaling_factor, 1.0f);
  EXPECT_EQ(r->scoring_func, ScoringFunc::kSoftmax);
  EXPECT_EQ(r->topk_method, TopkMethod::kGreedy);
  EXPECT_EQ(r->max_position_embeddings, 2048u);
  // DeepseekV2Config's num_experts_per_tok defaults to None: a MoE model must set it.
  auto missing = ParseHfConfig(R"({"model_type": "deepseek_v2"})", kPath);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(missing.status().message(), "num_experts_per_tok")) << missing.status().message();
}

TEST(HfConfigTest, NullsAndAlternativeSpellings) {
  json j = BaseV3();
  j["q_lora_rank"] = nullptr;
  j["bos_token_id"] = nullptr;
  j["eos_token_id"] = {1, 2};
  j["num_key_value_heads"] = nullptr;
  j["hidden_size"] = 192.0;  // integral floats are accepted
  j.erase("num_nextn_predict_layers");
  j["num_mtp_layers"] = 1;
  auto r = Parse(j);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->q_lora_rank, 0u);
  EXPECT_EQ(r->bos_token_id, -1);
  EXPECT_EQ(r->eos_token_id, 1);
  EXPECT_EQ(r->hidden_size, 192u);
  EXPECT_EQ(r->num_nextn_predict_layers, 1u);

  json g = BaseV2();
  g["n_group"] = nullptr;
  g["topk_group"] = nullptr;
  g["topk_method"] = "greedy";
  auto v2 = Parse(g);
  ASSERT_TRUE(v2.ok()) << v2.status().message();
  EXPECT_EQ(v2->n_group, 1u);
  EXPECT_EQ(v2->topk_group, 1u);
  // Greedy routing ignores groups, so groups that would not divide the experts do not matter.
  g["n_group"] = 5;
  EXPECT_TRUE(Parse(g).ok());
}

TEST(HfConfigTest, RopeParameterSpellings) {
  // transformers v5: rope_parameters with rope_type and rope_theta inside.
  json j = BaseV3();
  j.erase("rope_scaling");
  j.erase("rope_theta");
  j["rope_parameters"] = {{"rope_type", "yarn"}, {"rope_theta", 50000.0}, {"factor", 40},
                          {"original_max_position_embeddings", 4096}};
  j["max_position_embeddings"] = 163840;
  auto r = Parse(j);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->rope.scaling, RopeScaling::kYarn);
  EXPECT_FLOAT_EQ(r->rope.theta, 50000.0f);
  EXPECT_FLOAT_EQ(r->rope.factor, 40.0f);
  EXPECT_FLOAT_EQ(r->rope.beta_fast, 32.0f);
  EXPECT_FLOAT_EQ(r->rope.beta_slow, 1.0f);
  EXPECT_FLOAT_EQ(r->rope.mscale, 0.0f);
  EXPECT_FLOAT_EQ(r->rope.mscale_all_dim, 0.0f);

  // rope_scaling wins over rope_parameters (transformers: `rope_scaling or rope_parameters`).
  j["rope_scaling"] = {{"type", "default"}};
  j["rope_theta"] = 20000.0;
  auto s = Parse(j);
  ASSERT_TRUE(s.ok()) << s.status().message();
  EXPECT_EQ(s->rope.scaling, RopeScaling::kNone);
  EXPECT_FLOAT_EQ(s->rope.theta, 20000.0f);

  // Missing factor: max_position_embeddings / original_max_position_embeddings.
  json k = BaseV3();
  k["rope_scaling"].erase("factor");
  k["rope_scaling"]["original_max_position_embeddings"] = 1024;
  auto t = Parse(k);
  ASSERT_TRUE(t.ok()) << t.status().message();
  EXPECT_FLOAT_EQ(t->rope.factor, 4.0f);

  // No rope dictionary at all: plain RoPE.
  json n = BaseV3();
  n.erase("rope_scaling");
  auto u = Parse(n);
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->rope.scaling, RopeScaling::kNone);
}

// --- malformed input --------------------------------------------------------------------------

TEST(HfConfigTest, MalformedJson) {
  auto r = ParseHfConfig(R"({"hidden_size": 12,)", kPath);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kCorruptFile);
  EXPECT_TRUE(Contains(r.status().message(), kPath));
  auto a = ParseHfConfig("[1, 2]", kPath);
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.status().code(), StatusCode::kCorruptFile);
  auto d = ParseHfConfig(R"({"model_type": "deepseek_v3", "hidden_size": 1, "hidden_size": 2})", kPath);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), StatusCode::kCorruptFile);
  EXPECT_TRUE(Contains(d.status().message(), "duplicate key 'hidden_size'"));
}

TEST(HfConfigTest, WrongTypesNameTheKey) {
  const std::pair<const char*, json> cases[] = {
      {"hidden_size", "192"},      {"hidden_size", -192},         {"hidden_size", 191.5},
      {"hidden_size", 1e12},       {"hidden_size", true},         {"num_hidden_layers", nullptr},
      {"vocab_size", {320}},       {"rms_norm_eps", "1e-6"},      {"routed_scaling_factor", 1e300},
      {"norm_topk_prob", 1},       {"hidden_act", 3},             {"tie_word_embeddings", "false"},
      {"n_routed_experts", -1},    {"kv_lora_rank", 4294967296.0}, {"eos_token_id", "</s>"},
  };
  for (const auto& [key, value] : cases) {
    SCOPED_TRACE(std::string(key) + " = " + value.dump());
    json j = BaseV3();
    j[key] = value;
    ExpectError(j, StatusCode::kInvalidArgument, std::string("'") + key + "'");
  }
  json r = BaseV3();
  r["rope_scaling"]["factor"] = "16";
  ExpectError(r, StatusCode::kInvalidArgument, "'rope_scaling.factor'");
  json q = BaseV3();
  q["rope_scaling"] = "yarn";
  ExpectError(q, StatusCode::kInvalidArgument, "'rope_scaling'");
  json a = BaseV3();
  a["architectures"] = "DeepseekV3ForCausalLM";
  ExpectError(a, StatusCode::kInvalidArgument, "'architectures'");
}

// --- unsupported / impossible values ----------------------------------------------------------

TEST(HfConfigTest, UnsupportedArchitecture) {
  json j = BaseV3();
  j["architectures"] = {"LlamaForCausalLM"};
  ExpectError(j, StatusCode::kUnsupported, "LlamaForCausalLM");
  json t = BaseV3();
  t.erase("architectures");
  t["model_type"] = "mixtral";
  ExpectError(t, StatusCode::kUnsupported, "mixtral");
  json c = BaseV3();
  c["model_type"] = "deepseek_v2";
  ExpectError(c, StatusCode::kInvalidArgument, "contradicts");
  json none = BaseV3();
  none.erase("architectures");
  none.erase("model_type");
  ExpectError(none, StatusCode::kInvalidArgument, "model_type");
}

TEST(HfConfigTest, UnsupportedSettings) {
  struct Case {
    const char* key;
    json value;
    StatusCode code;
    const char* needle;
    bool v2 = false;
  };
  const Case cases[] = {
      {"hidden_act", "gelu", StatusCode::kUnsupported, "gelu"},
      {"tie_word_embeddings", true, StatusCode::kUnsupported, "tie_word_embeddings"},
      {"attention_bias", true, StatusCode::kUnsupported, "attention_bias"},
      {"mlp_bias", true, StatusCode::kUnsupported, "mlp_bias"},
      {"scoring_func", "softmax", StatusCode::kUnsupported, "softmax"},
      {"topk_method", "greedy", StatusCode::kUnsupported, "greedy"},
      {"scoring_func", "sigmoid", StatusCode::kUnsupported, "sigmoid", true},
      {"topk_method", "noaux_tc", StatusCode::kUnsupported, "noaux_tc", true},
      {"topk_method", nullptr, StatusCode::kInvalidArgument, "topk_method", true},
      {"norm_topk_prob", true, StatusCode::kUnsupported, "norm_topk_prob", true},
      {"num_nextn_predict_layers", 1, StatusCode::kUnsupported, "num_nextn_predict_layers", true},
      {"num_nextn_predict_layers", 2, StatusCode::kUnsupported, "num_nextn_predict_layers"},
      {"num_key_value_heads", 1, StatusCode::kUnsupported, "num_key_value_heads"},
      {"rope_interleave", false, StatusCode::kUnsupported, "rope_interleave"},
      {"moe_layer_freq", 2, StatusCode::kUnsupported, "moe_layer_freq"},
      {"quantization_config", "fp8", StatusCode::kInvalidArgument, "quantization_config"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(c.key) + " = " + c.value.dump());
    json j = c.v2 ? BaseV2() : BaseV3();
    j[c.key] = c.value;
    ExpectError(j, c.code, c.needle);
  }
  // transformers' DeepseekV2Config rejects hidden sizes that are not a multiple of the head count.
  json v2 = BaseV2();
  v2["hidden_size"] = 194;
  ExpectError(v2, StatusCode::kInvalidArgument, "hidden_size");
}

TEST(HfConfigTest, ImpossibleValues) {
  json heads = BaseV3();
  heads["num_attention_heads"] = 0;
  heads["num_key_value_heads"] = 0;
  ExpectError(heads, StatusCode::kInvalidArgument, "num_attention_heads");
  json groups = BaseV3();
  groups["n_group"] = 5;  // 12 experts
  ExpectError(groups, StatusCode::kInvalidArgument, "n_group");
  json topk = BaseV3();
  topk["num_experts_per_tok"] = 13;
  ExpectError(topk, StatusCode::kInvalidArgument, "num_experts_per_tok");
  json tg = BaseV3();
  tg["topk_group"] = 4;  // > n_group
  ExpectError(tg, StatusCode::kInvalidArgument, "topk_group");
  json layers = BaseV3();
  layers["num_hidden_layers"] = 0;
  ExpectError(layers, StatusCode::kInvalidArgument, "num_hidden_layers");
  json rope = BaseV3();
  rope["qk_rope_head_dim"] = 31;
  ExpectError(rope, StatusCode::kInvalidArgument, "qk_rope_head_dim");
  json bos = BaseV3();
  bos["bos_token_id"] = 320;
  ExpectError(bos, StatusCode::kInvalidArgument, "bos");
  json eps = BaseV3();
  eps["rms_norm_eps"] = 0;
  ExpectError(eps, StatusCode::kInvalidArgument, "rms_norm_eps");
}

TEST(HfConfigTest, RopeErrors) {
  json linear = BaseV3();
  linear["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  ExpectError(linear, StatusCode::kUnsupported, "linear");
  json llama3 = BaseV3();
  llama3.erase("rope_scaling");
  llama3["rope_parameters"] = {{"rope_type", "llama3"}, {"factor", 8.0}};
  ExpectError(llama3, StatusCode::kUnsupported, "llama3");
  json trunc = BaseV3();
  trunc["rope_scaling"]["truncate"] = false;
  ExpectError(trunc, StatusCode::kUnsupported, "truncate");
  json zero = BaseV3();
  zero["rope_scaling"]["factor"] = 0;
  ExpectError(zero, StatusCode::kInvalidArgument, "factor");
  json orig = BaseV3();
  orig["rope_scaling"]["original_max_position_embeddings"] = 0;
  ExpectError(orig, StatusCode::kInvalidArgument, "original_max_position_embeddings");
}

TEST(HfConfigTest, QuantizationConfig) {
  json ok = BaseV3();
  ok["quantization_config"] = {{"quant_method", "fp8"}, {"fmt", "e4m3"}, {"activation_scheme", "dynamic"},
                               {"weight_block_size", {128, 128}}};
  auto r = ParseHfConfigFull(ok.dump(), kPath);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_TRUE(r->has_quantization_config);
  const std::pair<const char*, json> bad[] = {
      {"quant_method", "awq"}, {"fmt", "e5m2"}, {"weight_block_size", {64, 64}}, {"activation_scheme", "static"}};
  for (const auto& [key, value] : bad) {
    SCOPED_TRACE(key);
    json j = ok;
    j["quantization_config"][key] = value;
    ExpectError(j, StatusCode::kUnsupported, "quantization_config");
  }
  json missing = ok;
  missing["quantization_config"].erase("quant_method");
  ExpectError(missing, StatusCode::kUnsupported, "quant_method");
  json shape = ok;
  shape["quantization_config"]["weight_block_size"] = 128;
  ExpectError(shape, StatusCode::kInvalidArgument, "weight_block_size");
}

}  // namespace
}  // namespace moerun::convert
