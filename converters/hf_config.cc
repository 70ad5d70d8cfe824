#include "converters/hf_config.h"

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>

#include "converters/json_util.h"

namespace moerun::convert {
namespace {

using nlohmann::json;

// HF class defaults (transformers 5.17 DeepseekV2Config / DeepseekV3Config) for keys that may be
// missing from config.json. MODEL_SPEC §1.1.
struct Defaults {
  uint32_t vocab_size, hidden_size, intermediate_size, moe_intermediate_size, num_hidden_layers;
  uint32_t num_attention_heads;
  std::optional<uint32_t> num_key_value_heads;  // nullopt: = num_attention_heads
  uint32_t n_shared_experts, n_routed_experts;
  std::optional<uint32_t> num_experts_per_tok;  // nullopt: None (must be given for MoE layers)
  float routed_scaling_factor;
  uint32_t n_group, topk_group;  // None → 1
  bool norm_topk_prob;
  uint32_t first_k_dense_replace, q_lora_rank, kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim, v_head_dim;
  uint32_t max_position_embeddings;
};

constexpr Defaults kV3Defaults{129280, 7168, 18432, 2048, 61, 128, 128u,  1,   256, 8u,  2.5f,
                               8,      4,    true,  3,    1536, 512, 128, 64, 128, 4096};
constexpr Defaults kV2Defaults{102400, 4096, 11008, 1407, 32, 32, std::nullopt, 2,   64,  std::nullopt, 1.0f,
                               1,      1,    false, 0,    1536, 512, 128,       64, 128, 2048};

std::string Short(const json& v) {
  std::string s = v.dump();
  if (s.size() > 40) s = s.substr(0, 37) + "...";
  return s;
}

// Typed access to config.json keys with errors that name the key and the file.
class Keys {
 public:
  Keys(const json& obj, std::string file, std::string prefix = "")
      : obj_(obj), file_(std::move(file)), prefix_(std::move(prefix)) {}

  const json* Get(const char* key) const {
    auto it = obj_.find(key);
    return it == obj_.end() ? nullptr : &*it;
  }
  bool Has(const char* key) const { return Get(key) != nullptr; }
  bool IsNullOrAbsent(const char* key) const {
    const json* v = Get(key);
    return v == nullptr || v->is_null();
  }
  std::string Name(const char* key) const { return "'" + prefix_ + key + "'"; }

  Status Error(const char* key, const std::string& what) const {
    return InvalidArgument(file_ + ": " + Name(key) + " " + what);
  }
  Status TypeError(const char* key, const char* expected, const json& v) const {
    return Error(key, std::string("must be ") + expected + ", got " + JsonTypeName(v) + " " + Short(v));
  }

  // Non-negative integer. Absent → `def`; null → `if_null` when given, else an error.
  Result<uint32_t> Uint(const char* key, uint32_t def, std::optional<uint32_t> if_null = std::nullopt) const {
    const json* v = Get(key);
    if (!v) return def;
    if (v->is_null()) {
      if (if_null) return *if_null;
      return Error(key, "must be a non-negative integer, got null");
    }
    return ToUint(key, *v);
  }
  Result<uint32_t> ToUint(const char* key, const json& v) const {
    if (v.is_number_unsigned()) {
      const uint64_t x = v.get<uint64_t>();
      if (x > std::numeric_limits<uint32_t>::max()) return Error(key, "= " + Short(v) + " is too large");
      return static_cast<uint32_t>(x);
    }
    if (v.is_number_integer()) return Error(key, "must be non-negative, got " + Short(v));
    if (v.is_number_float()) {
      const double d = v.get<double>();
      if (!std::isfinite(d) || d != std::floor(d)) return Error(key, "must be an integer, got " + Short(v));
      if (d < 0) return Error(key, "must be non-negative, got " + Short(v));
      if (d > static_cast<double>(std::numeric_limits<uint32_t>::max()))
        return Error(key, "= " + Short(v) + " is too large");
      return static_cast<uint32_t>(d);
    }
    return TypeError(key, "a non-negative integer", v);
  }

  // Finite number representable as float. Absent (or null when `null_ok`) → `def`.
  Result<float> Float(const char* key, float def, bool null_ok = false) const {
    const json* v = Get(key);
    if (!v || (null_ok && v->is_null())) return def;
    if (!v->is_number()) return TypeError(key, "a number", *v);
    const double d = v->get<double>();
    if (!std::isfinite(d) || std::fabs(d) > FLT_MAX) return Error(key, "= " + Short(*v) + " is not a finite float");
    return static_cast<float>(d);
  }

  Result<bool> Bool(const char* key, bool def, bool null_ok = false) const {
    const json* v = Get(key);
    if (!v || (null_ok && v->is_null())) return def;
    if (!v->is_boolean()) return TypeError(key, "true or false", *v);
    return v->get<bool>();
  }

  // Absent or null → nullopt.
  Result<std::optional<std::string>> String(const char* key) const {
    const json* v = Get(key);
    if (!v || v->is_null()) return std::optional<std::string>();
    if (!v->is_string()) return TypeError(key, "a string", *v);
    return std::optional<std::string>(v->get<std::string>());
  }

  // Token id: absent / null → -1; a list (several eos ids) → its first entry.
  Result<int32_t> TokenId(const char* key) const {
    const json* v = Get(key);
    if (!v || v->is_null()) return -1;
    const json* x = v;
    if (v->is_array()) {
      if (v->empty()) return -1;
      x = &(*v)[0];
    }
    MOERUN_ASSIGN_OR_RETURN(uint32_t id, ToUint(key, *x));
    if (id > static_cast<uint32_t>(std::numeric_limits<int32_t>::max())) return Error(key, "is too large");
    return static_cast<int32_t>(id);
  }

  const std::string& file() const { return file_; }

 private:
  const json& obj_;
  std::string file_;
  std::string prefix_;
};

Status MustBeFalse(const Keys& k, const char* key) {
  MOERUN_ASSIGN_OR_RETURN(bool v, k.Bool(key, false));
  if (v) return Unsupported(k.file() + ": " + k.Name(key) + " = true is not supported (DeepSeek models have none)");
  return Status::Ok();
}

Result<Architecture> DetectArchitecture(const Keys& k, std::string* arch_name) {
  std::optional<Architecture> from_arch, from_type;
  if (const json* a = k.Get("architectures"); a && !a->is_null()) {
    if (!a->is_array() || a->empty() || !(*a)[0].is_string())
      return k.Error("architectures", "must be a non-empty list of strings");
    const std::string name = (*a)[0].get<std::string>();
    if (name == "DeepseekV2ForCausalLM") from_arch = Architecture::kDeepseekV2;
    else if (name == "DeepseekV3ForCausalLM") from_arch = Architecture::kDeepseekV3;
    else return Unsupported(k.file() + ": architecture '" + name + "' is not supported (expected DeepseekV2ForCausalLM "
                            "or DeepseekV3ForCausalLM)");
    *arch_name = name;
  }
  MOERUN_ASSIGN_OR_RETURN(std::optional<std::string> model_type, k.String("model_type"));
  if (model_type) {
    if (*model_type == "deepseek_v2") from_type = Architecture::kDeepseekV2;
    else if (*model_type == "deepseek_v3") from_type = Architecture::kDeepseekV3;
    else return Unsupported(k.file() + ": model_type '" + *model_type + "' is not supported (expected deepseek_v2 or "
                            "deepseek_v3)");
  }
  if (from_arch && from_type && *from_arch != *from_type)
    return InvalidArgument(k.file() + ": architectures '" + *arch_name + "' contradicts model_type '" + *model_type +
                           "'");
  if (!from_arch && !from_type)
    return InvalidArgument(k.file() + ": neither 'architectures' nor 'model_type' says which model this is");
  const Architecture a = from_arch ? *from_arch : *from_type;
  if (arch_name->empty())
    *arch_name = a == Architecture::kDeepseekV2 ? "DeepseekV2ForCausalLM" : "DeepseekV3ForCausalLM";
  return a;
}

// rope_scaling / rope_parameters → RopeConfig (MODEL_SPEC §5; transformers' standardize_rope_params
// and _compute_yarn_parameters).
Status ParseRope(const Keys& top, ModelConfig* c) {
  const char* key = nullptr;
  // transformers: `rope_parameters = rope_scaling or rope_parameters`.
  if (const json* rs = top.Get("rope_scaling"); rs && !rs->is_null() && !(rs->is_object() && rs->empty())) {
    key = "rope_scaling";
  } else if (const json* rp = top.Get("rope_parameters"); rp && !rp->is_null()) {
    key = "rope_parameters";
  }
  MOERUN_ASSIGN_OR_RETURN(float top_theta, top.Float("rope_theta", 10000.0f));
  c->rope = RopeConfig{};
  c->rope.theta = top_theta;
  if (!key) return Status::Ok();
  const json& r = *top.Get(key);
  if (!r.is_object()) return top.TypeError(key, "an object", r);
  const Keys k(r, top.file(), std::string(key) + ".");
  MOERUN_ASSIGN_OR_RETURN(c->rope.theta, k.Float("rope_theta", top_theta));
  MOERUN_ASSIGN_OR_RETURN(std::optional<std::string> type, k.String("rope_type"));
  if (!type) {
    MOERUN_ASSIGN_OR_RETURN(type, k.String("type"));
  }
  if (!type || *type == "default") return Status::Ok();
  if (*type != "yarn")
    return Unsupported(top.file() + ": " + key + " type '" + *type + "' is not supported (only yarn or default)");
  c->rope.scaling = RopeScaling::kYarn;
  MOERUN_ASSIGN_OR_RETURN(c->rope.original_max_position_embeddings,
                          k.Uint("original_max_position_embeddings", c->max_position_embeddings,
                                 c->max_position_embeddings));
  if (c->rope.original_max_position_embeddings == 0)
    return k.Error("original_max_position_embeddings", "must be positive");
  if (k.IsNullOrAbsent("factor")) {
    c->rope.factor = static_cast<float>(static_cast<double>(c->max_position_embeddings) /
                                        c->rope.original_max_position_embeddings);
  } else {
    MOERUN_ASSIGN_OR_RETURN(c->rope.factor, k.Float("factor", 1.0f));
  }
  if (!(c->rope.factor > 0.0f)) return k.Error("factor", "must be positive");
  // transformers: `beta_fast or 32`, `beta_slow or 1` (0 and null mean the default).
  MOERUN_ASSIGN_OR_RETURN(c->rope.beta_fast, k.Float("beta_fast", 32.0f, true));
  MOERUN_ASSIGN_OR_RETURN(c->rope.beta_slow, k.Float("beta_slow", 1.0f, true));
  if (c->rope.beta_fast == 0.0f) c->rope.beta_fast = 32.0f;
  if (c->rope.beta_slow == 0.0f) c->rope.beta_slow = 1.0f;
  MOERUN_ASSIGN_OR_RETURN(c->rope.mscale, k.Float("mscale", 0.0f, true));
  MOERUN_ASSIGN_OR_RETURN(c->rope.mscale_all_dim, k.Float("mscale_all_dim", 0.0f, true));
  MOERUN_ASSIGN_OR_RETURN(c->rope.attention_factor, k.Float("attention_factor", 0.0f, true));
  if (c->rope.attention_factor < 0.0f) return k.Error("attention_factor", "must not be negative");
  MOERUN_ASSIGN_OR_RETURN(bool truncate, k.Bool("truncate", true, true));
  if (!truncate)
    return Unsupported(top.file() + ": " + key + ".truncate = false is not supported (YaRN with truncated "
                       "correction range only)");
  MOERUN_ASSIGN_OR_RETURN(float partial, k.Float("partial_rotary_factor", 1.0f, true));
  if (partial != 1.0f) return Unsupported(top.file() + ": " + key + ".partial_rotary_factor != 1 is not supported");
  return Status::Ok();
}

// quantization_config: only DeepSeek's block FP8 (MODEL_SPEC §3).
Status ParseQuantization(const Keys& top, bool* present) {
  *present = false;
  const json* q = top.Get("quantization_config");
  if (!q || q->is_null()) return Status::Ok();
  if (!q->is_object()) return top.TypeError("quantization_config", "an object", *q);
  const Keys k(*q, top.file(), "quantization_config.");
  auto unsupported = [&](const std::string& what) {
    return Unsupported(top.file() + ": quantization_config " + what +
                       " is not supported (only quant_method fp8, fmt e4m3, weight_block_size [128, 128])");
  };
  MOERUN_ASSIGN_OR_RETURN(std::optional<std::string> method, k.String("quant_method"));
  if (!method || *method != "fp8") return unsupported("quant_method '" + method.value_or("<missing>") + "'");
  MOERUN_ASSIGN_OR_RETURN(std::optional<std::string> fmt, k.String("fmt"));
  if (fmt && *fmt != "e4m3") return unsupported("fmt '" + *fmt + "'");
  MOERUN_ASSIGN_OR_RETURN(std::optional<std::string> act, k.String("activation_scheme"));
  if (act && *act != "dynamic") return unsupported("activation_scheme '" + *act + "'");
  if (const json* b = k.Get("weight_block_size"); b && !b->is_null()) {
    if (!b->is_array() || b->size() != 2) return k.TypeError("weight_block_size", "a list of two integers", *b);
    for (const json& x : *b) {
      MOERUN_ASSIGN_OR_RETURN(uint32_t n, k.ToUint("weight_block_size", x));
      if (n != 128) return unsupported("weight_block_size " + Short(*b));
    }
  }
  *present = true;
  return Status::Ok();
}

Status ParseRouting(const Keys& k, const Defaults& d, ModelConfig* c) {
  MOERUN_ASSIGN_OR_RETURN(std::optional<std::string> scoring, k.String("scoring_func"));
  MOERUN_ASSIGN_OR_RETURN(std::optional<std::string> method, k.String("topk_method"));
  MOERUN_ASSIGN_OR_RETURN(c->norm_topk_prob, k.Bool("norm_topk_prob", d.norm_topk_prob, /*null_ok=*/true));
  if (k.Has("norm_topk_prob") && k.Get("norm_topk_prob")->is_null()) c->norm_topk_prob = false;
  if (c->architecture == Architecture::kDeepseekV3) {
    // transformers' DeepseekV3 hard-wires sigmoid scoring with noaux_tc routing.
    if (scoring && *scoring != "sigmoid")
      return Unsupported(k.file() + ": DeepseekV3 always scores experts with sigmoid; scoring_func '" + *scoring +
                         "' is not supported");
    if (method && *method != "noaux_tc")
      return Unsupported(k.file() + ": DeepseekV3 always routes with noaux_tc; topk_method '" + *method +
                         "' is not supported");
    c->scoring_func = ScoringFunc::kSigmoid;
    c->topk_method = TopkMethod::kNoauxTc;
    return Status::Ok();
  }
  // DeepseekV2: softmax hard-wired; topk_method honoured (null selects no router at all there).
  if (k.Has("topk_method") && !method) return k.Error("topk_method", "must be a string, got null");
  if (scoring && *scoring != "softmax")
    return Unsupported(k.file() + ": DeepseekV2 always scores experts with softmax; scoring_func '" + *scoring +
                       "' is not supported");
  c->scoring_func = ScoringFunc::kSoftmax;
  const std::string m = method.value_or("greedy");
  if (m == "greedy") {
    // Groups play no part in greedy routing; keep the config valid whatever they say.
    c->topk_method = TopkMethod::kGreedy;
    c->n_group = 1;
    c->topk_group = 1;
  } else if (m == "group_limited_greedy") {
    c->topk_method = TopkMethod::kGroupLimitedGreedy;
  } else {
    return Unsupported(k.file() + ": DeepseekV2 topk_method '" + m +
                       "' is not supported (greedy or group_limited_greedy)");
  }
  if (c->norm_topk_prob)
    return Unsupported(k.file() + ": norm_topk_prob = true is not supported for DeepseekV2 (transformers ignores it, "
                       "the original remote code renormalised: the two disagree)");
  return Status::Ok();
}

}  // namespace

namespace {

Result<HfConfig> ParseImpl(const std::string& json_text, const std::string& path) {
  // Used in place (not moved out) so that the releaser empties the only copy of the document.
  Result<json> parsed = ParseJsonStrict(json_text, "'" + path + "'");
  if (!parsed.ok()) return parsed.status();
  json& j = parsed.value();
  const JsonReleaser release_j(j);
  if (!j.is_object()) return CorruptFile("'" + path + "': config is a JSON " + JsonTypeName(j) + ", expected an object");
  const Keys k(j, "'" + path + "'");
  HfConfig out;
  ModelConfig& c = out.config;
  MOERUN_ASSIGN_OR_RETURN(c.architecture, DetectArchitecture(k, &out.architecture));
  const bool v3 = c.architecture == Architecture::kDeepseekV3;
  const Defaults& d = v3 ? kV3Defaults : kV2Defaults;

  MOERUN_ASSIGN_OR_RETURN(c.vocab_size, k.Uint("vocab_size", d.vocab_size));
  MOERUN_ASSIGN_OR_RETURN(c.hidden_size, k.Uint("hidden_size", d.hidden_size));
  MOERUN_ASSIGN_OR_RETURN(c.intermediate_size, k.Uint("intermediate_size", d.intermediate_size));
  MOERUN_ASSIGN_OR_RETURN(c.moe_intermediate_size, k.Uint("moe_intermediate_size", d.moe_intermediate_size));
  MOERUN_ASSIGN_OR_RETURN(c.num_layers, k.Uint("num_hidden_layers", d.num_hidden_layers));
  MOERUN_ASSIGN_OR_RETURN(c.num_heads, k.Uint("num_attention_heads", d.num_attention_heads));
  MOERUN_ASSIGN_OR_RETURN(uint32_t kv_heads,
                          k.Uint("num_key_value_heads", d.num_key_value_heads.value_or(c.num_heads), c.num_heads));
  if (kv_heads != c.num_heads)
    return Unsupported(k.file() + ": num_key_value_heads (" + std::to_string(kv_heads) +
                       ") must equal num_attention_heads (" + std::to_string(c.num_heads) + ") for MLA");
  MOERUN_ASSIGN_OR_RETURN(c.q_lora_rank, k.Uint("q_lora_rank", d.q_lora_rank, 0u));
  MOERUN_ASSIGN_OR_RETURN(c.kv_lora_rank, k.Uint("kv_lora_rank", d.kv_lora_rank));
  MOERUN_ASSIGN_OR_RETURN(c.qk_nope_head_dim, k.Uint("qk_nope_head_dim", d.qk_nope_head_dim));
  MOERUN_ASSIGN_OR_RETURN(c.qk_rope_head_dim, k.Uint("qk_rope_head_dim", d.qk_rope_head_dim));
  MOERUN_ASSIGN_OR_RETURN(c.v_head_dim, k.Uint("v_head_dim", d.v_head_dim));
  MOERUN_ASSIGN_OR_RETURN(c.n_routed_experts, k.Uint("n_routed_experts", d.n_routed_experts));
  MOERUN_ASSIGN_OR_RETURN(c.n_shared_experts, k.Uint("n_shared_experts", d.n_shared_experts));
  MOERUN_ASSIGN_OR_RETURN(c.num_experts_per_tok,
                          k.Uint("num_experts_per_tok", d.num_experts_per_tok.value_or(0), 0u));
  MOERUN_ASSIGN_OR_RETURN(c.n_group, k.Uint("n_group", d.n_group, 1u));
  MOERUN_ASSIGN_OR_RETURN(c.topk_group, k.Uint("topk_group", d.topk_group, 1u));
  MOERUN_ASSIGN_OR_RETURN(c.routed_scaling_factor, k.Float("routed_scaling_factor", d.routed_scaling_factor));
  MOERUN_ASSIGN_OR_RETURN(c.first_k_dense_replace, k.Uint("first_k_dense_replace", d.first_k_dense_replace));
  MOERUN_ASSIGN_OR_RETURN(c.max_position_embeddings, k.Uint("max_position_embeddings", d.max_position_embeddings));
  MOERUN_ASSIGN_OR_RETURN(c.rms_norm_eps, k.Float("rms_norm_eps", 1e-6f));
  MOERUN_ASSIGN_OR_RETURN(c.bos_token_id, k.TokenId("bos_token_id"));
  MOERUN_ASSIGN_OR_RETURN(c.eos_token_id, k.TokenId("eos_token_id"));
  MOERUN_RETURN_IF_ERROR(ParseRouting(k, d, &c));
  MOERUN_RETURN_IF_ERROR(ParseRope(k, &c));
  MOERUN_RETURN_IF_ERROR(ParseQuantization(k, &out.has_quantization_config));

  // Multi-token prediction layers (transformers 5.17 V3 also spells it num_mtp_layers). Absent → 0:
  // MTP weights are only expected when the config says so.
  const char* mtp_key = k.Has("num_nextn_predict_layers") ? "num_nextn_predict_layers" : "num_mtp_layers";
  MOERUN_ASSIGN_OR_RETURN(c.num_nextn_predict_layers, k.Uint(mtp_key, 0, 0u));
  if (!v3 && c.num_nextn_predict_layers != 0)
    return Unsupported(k.file() + ": '" + mtp_key + "' must be 0 for DeepseekV2");

  // Architecture knobs this runtime implements only one way.
  MOERUN_ASSIGN_OR_RETURN(std::optional<std::string> act, k.String("hidden_act"));
  if (act && *act != "silu")
    return Unsupported(k.file() + ": hidden_act '" + *act + "' is not supported (only silu)");
  MOERUN_RETURN_IF_ERROR(MustBeFalse(k, "attention_bias"));
  MOERUN_RETURN_IF_ERROR(MustBeFalse(k, "mlp_bias"));
  MOERUN_RETURN_IF_ERROR(MustBeFalse(k, "tie_word_embeddings"));
  if (v3) {
    MOERUN_ASSIGN_OR_RETURN(bool interleave, k.Bool("rope_interleave", true, true));
    if (!interleave)
      return Unsupported(k.file() + ": rope_interleave = false is not supported (weights must keep DeepSeek's "
                         "interleaved rope layout)");
  }
  MOERUN_ASSIGN_OR_RETURN(uint32_t freq, k.Uint("moe_layer_freq", 1));
  if (freq != 1) return Unsupported(k.file() + ": moe_layer_freq " + std::to_string(freq) + " is not supported (only 1)");
  if (!v3 && c.num_heads != 0 && c.hidden_size % c.num_heads != 0)
    return InvalidArgument(k.file() + ": hidden_size (" + std::to_string(c.hidden_size) +
                           ") is not a multiple of num_attention_heads (" + std::to_string(c.num_heads) +
                           "), which transformers' DeepseekV2Config rejects");
  MOERUN_RETURN_IF_ERROR(c.Validate().WithContext(k.file()));
  // Validate() checks the MoE fields only when the main stack has a MoE layer; the MTP layer
  // (index num_layers) would be one.
  if (c.num_nextn_predict_layers > 0 && c.first_k_dense_replace >= c.num_layers && c.n_routed_experts > 0)
    return Unsupported(k.file() + ": an MTP layer after an all-dense main stack is not supported");
  return out;
}

}  // namespace

Result<HfConfig> ParseHfConfigFull(const std::string& json_text, const std::string& path) {
  try {
    return ParseImpl(json_text, path);
  } catch (const std::bad_alloc&) {
    return OutOfMemory("'" + path + "': out of memory while reading the config");
  } catch (const std::exception& e) {  // defensive: typed accessors check before every get<>()
    return InvalidArgument("'" + path + "': " + e.what());
  }
}

Result<ModelConfig> ParseHfConfig(const std::string& json_text, const std::string& path) {
  MOERUN_ASSIGN_OR_RETURN(HfConfig h, ParseHfConfigFull(json_text, path));
  return h.config;
}

}  // namespace moerun::convert
