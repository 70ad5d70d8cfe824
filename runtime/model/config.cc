#include "runtime/model/config.h"

#include <algorithm>
#include <cmath>

namespace moerun {
namespace {

// Bounds that no real checkpoint approaches but that keep every derived size far from overflow.
constexpr uint32_t kMaxDim = 1u << 20;
constexpr uint32_t kMaxVocab = 1u << 24;
constexpr uint32_t kMaxLayers = 4096;
constexpr uint32_t kMaxExperts = 1u << 16;

Status Field(const char* name, uint32_t v, uint32_t lo, uint32_t hi) {
  if (v < lo || v > hi)
    return InvalidArgument(std::string("config: ") + name + " = " + std::to_string(v) + " is out of range [" +
                           std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return Status::Ok();
}

float YarnMscale(float scale, float mscale) {
  if (scale <= 1.0f) return 1.0f;
  return 0.1f * mscale * std::log(scale) + 1.0f;
}

}  // namespace

const char* ArchitectureName(Architecture a) {
  return a == Architecture::kDeepseekV2 ? "DeepseekV2" : "DeepseekV3";
}

Status ModelConfig::Validate() const {
  if (static_cast<int>(architecture) > 1) return InvalidArgument("config: unknown architecture");
  if (static_cast<int>(scoring_func) > 1) return InvalidArgument("config: unknown scoring_func");
  if (static_cast<int>(topk_method) > 2) return InvalidArgument("config: unknown topk_method");
  if (static_cast<int>(rope.scaling) > 1) return InvalidArgument("config: unknown rope scaling type");
  MOERUN_RETURN_IF_ERROR(Field("vocab_size", vocab_size, 1, kMaxVocab));
  MOERUN_RETURN_IF_ERROR(Field("hidden_size", hidden_size, 1, kMaxDim));
  MOERUN_RETURN_IF_ERROR(Field("num_hidden_layers", num_layers, 1, kMaxLayers));
  MOERUN_RETURN_IF_ERROR(Field("num_attention_heads", num_heads, 1, 4096));
  MOERUN_RETURN_IF_ERROR(Field("q_lora_rank", q_lora_rank, 0, kMaxDim));
  MOERUN_RETURN_IF_ERROR(Field("kv_lora_rank", kv_lora_rank, 1, kMaxDim));
  MOERUN_RETURN_IF_ERROR(Field("qk_nope_head_dim", qk_nope_head_dim, 1, 4096));
  MOERUN_RETURN_IF_ERROR(Field("qk_rope_head_dim", qk_rope_head_dim, 2, 4096));
  if (qk_rope_head_dim % 2 != 0) return InvalidArgument("config: qk_rope_head_dim must be even");
  MOERUN_RETURN_IF_ERROR(Field("v_head_dim", v_head_dim, 1, 4096));
  MOERUN_RETURN_IF_ERROR(Field("first_k_dense_replace", first_k_dense_replace, 0, num_layers));
  if (first_k_dense_replace > 0) MOERUN_RETURN_IF_ERROR(Field("intermediate_size", intermediate_size, 1, kMaxDim));
  if (first_k_dense_replace < num_layers) {
    MOERUN_RETURN_IF_ERROR(Field("n_routed_experts", n_routed_experts, 1, kMaxExperts));
    MOERUN_RETURN_IF_ERROR(Field("moe_intermediate_size", moe_intermediate_size, 1, kMaxDim));
    MOERUN_RETURN_IF_ERROR(Field("num_experts_per_tok", num_experts_per_tok, 1, n_routed_experts));
    MOERUN_RETURN_IF_ERROR(Field("n_shared_experts", n_shared_experts, 0, 1024));
    MOERUN_RETURN_IF_ERROR(Field("n_group", n_group, 1, n_routed_experts));
    if (n_routed_experts % n_group != 0)
      return InvalidArgument("config: n_routed_experts (" + std::to_string(n_routed_experts) +
                             ") is not divisible by n_group (" + std::to_string(n_group) + ")");
    MOERUN_RETURN_IF_ERROR(Field("topk_group", topk_group, 1, n_group));
    if (topk_method != TopkMethod::kGreedy) {
      const uint32_t per_group = n_routed_experts / n_group;
      if (static_cast<uint64_t>(topk_group) * per_group < num_experts_per_tok)
        return InvalidArgument("config: topk_group * experts per group is smaller than num_experts_per_tok");
      if (topk_method == TopkMethod::kNoauxTc && per_group < 2)
        return InvalidArgument("config: noaux_tc needs at least 2 experts per group");
    }
  }
  if (!(rms_norm_eps > 0.0f) || !std::isfinite(rms_norm_eps))
    return InvalidArgument("config: rms_norm_eps must be positive and finite");
  if (!std::isfinite(routed_scaling_factor)) return InvalidArgument("config: routed_scaling_factor is not finite");
  if (!(rope.theta > 1.0f) || !std::isfinite(rope.theta)) return InvalidArgument("config: rope_theta must be > 1");
  if (rope.scaling == RopeScaling::kYarn) {
    if (!(rope.factor > 0.0f) || !std::isfinite(rope.factor))
      return InvalidArgument("config: rope_scaling.factor must be positive");
    if (rope.original_max_position_embeddings == 0)
      return InvalidArgument("config: rope_scaling.original_max_position_embeddings must be positive");
    if (!std::isfinite(rope.beta_fast) || !std::isfinite(rope.beta_slow) || rope.beta_fast <= 0 ||
        rope.beta_slow <= 0)
      return InvalidArgument("config: rope_scaling beta_fast/beta_slow must be positive");
    if (!std::isfinite(rope.mscale) || !std::isfinite(rope.mscale_all_dim) || !std::isfinite(rope.attention_factor))
      return InvalidArgument("config: rope_scaling mscale values must be finite");
  }
  if (bos_token_id >= static_cast<int64_t>(vocab_size) || eos_token_id >= static_cast<int64_t>(vocab_size))
    return InvalidArgument("config: bos/eos token id is outside the vocabulary");
  if (num_nextn_predict_layers > 1)
    return Unsupported("config: num_nextn_predict_layers > 1 is not supported");
  return Status::Ok();
}

float ModelConfig::SoftmaxScale() const {
  float scale = 1.0f / std::sqrt(static_cast<float>(qk_head_dim()));
  if (rope.scaling == RopeScaling::kYarn && rope.mscale_all_dim != 0.0f) {
    const float m = YarnMscale(rope.factor, rope.mscale_all_dim);
    scale *= m * m;
  }
  return scale;
}

float ModelConfig::RopeAttentionFactor() const {
  if (rope.scaling != RopeScaling::kYarn) return 1.0f;
  if (rope.attention_factor != 0.0f) return rope.attention_factor;
  if (rope.mscale != 0.0f && rope.mscale_all_dim != 0.0f)
    return YarnMscale(rope.factor, rope.mscale) / YarnMscale(rope.factor, rope.mscale_all_dim);
  return YarnMscale(rope.factor, 1.0f);
}

std::vector<float> ModelConfig::RopeInverseFrequencies() const {
  const int d = static_cast<int>(qk_rope_head_dim);
  const int half = d / 2;
  std::vector<float> inv(half);
  for (int i = 0; i < half; ++i)
    inv[i] = 1.0f / std::pow(rope.theta, static_cast<float>(2 * i) / static_cast<float>(d));
  if (rope.scaling != RopeScaling::kYarn) return inv;
  // Same operation order as transformers' _compute_yarn_parameters (float64 for the correction range,
  // float32 for frequencies and ramp).
  const double base = rope.theta;
  const double l0 = rope.original_max_position_embeddings;
  auto correction_dim = [&](double rotations) {
    return (d * std::log(l0 / (rotations * 2.0 * M_PI))) / (2.0 * std::log(base));
  };
  double low = std::floor(correction_dim(rope.beta_fast));
  double high = std::ceil(correction_dim(rope.beta_slow));
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(d - 1));
  if (low == high) high += 0.001;
  for (int i = 0; i < half; ++i) {
    float ramp = (static_cast<float>(i) - static_cast<float>(low)) / static_cast<float>(high - low);
    ramp = std::clamp(ramp, 0.0f, 1.0f);
    const float extrapolation_factor = 1.0f - ramp;
    const float pos_freq = std::pow(rope.theta, static_cast<float>(2 * i) / static_cast<float>(d));
    const float interpolation = 1.0f / (rope.factor * pos_freq);
    const float extrapolation = 1.0f / pos_freq;
    inv[i] = interpolation * (1.0f - extrapolation_factor) + extrapolation * extrapolation_factor;
  }
  return inv;
}

}  // namespace moerun
