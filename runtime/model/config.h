// ModelConfig: the typed architecture description of a DeepSeek-V2/V3-family model, shared by the
// converter (fills it from config.json) and the runtime (reads it from the file). Validate() rejects
// impossible values before anything is sized from them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/core/status.h"

namespace moerun {

enum class Architecture : uint8_t { kDeepseekV2 = 0, kDeepseekV3 = 1 };
enum class ScoringFunc : uint8_t { kSoftmax = 0, kSigmoid = 1 };
enum class TopkMethod : uint8_t { kGreedy = 0, kGroupLimitedGreedy = 1, kNoauxTc = 2 };
enum class RopeScaling : uint8_t { kNone = 0, kYarn = 1 };

struct RopeConfig {
  float theta = 10000.0f;
  RopeScaling scaling = RopeScaling::kNone;
  float factor = 1.0f;
  uint32_t original_max_position_embeddings = 0;
  float beta_fast = 32.0f;
  float beta_slow = 1.0f;
  float mscale = 0.0f;          // 0 = absent
  float mscale_all_dim = 0.0f;  // 0 = absent
  float attention_factor = 0.0f;  // 0 = absent
};

struct ModelConfig {
  Architecture architecture = Architecture::kDeepseekV3;
  uint32_t vocab_size = 0;
  uint32_t hidden_size = 0;
  uint32_t intermediate_size = 0;
  uint32_t moe_intermediate_size = 0;
  uint32_t num_layers = 0;
  uint32_t num_heads = 0;
  uint32_t q_lora_rank = 0;  // 0 = q_proj
  uint32_t kv_lora_rank = 0;
  uint32_t qk_nope_head_dim = 0;
  uint32_t qk_rope_head_dim = 0;
  uint32_t v_head_dim = 0;
  uint32_t n_routed_experts = 0;
  uint32_t n_shared_experts = 0;
  uint32_t num_experts_per_tok = 0;
  uint32_t n_group = 1;
  uint32_t topk_group = 1;
  float routed_scaling_factor = 1.0f;
  bool norm_topk_prob = false;
  uint32_t first_k_dense_replace = 0;
  ScoringFunc scoring_func = ScoringFunc::kSoftmax;
  TopkMethod topk_method = TopkMethod::kGreedy;
  float rms_norm_eps = 1e-6f;
  RopeConfig rope;
  uint32_t max_position_embeddings = 0;
  int32_t bos_token_id = -1;
  int32_t eos_token_id = -1;
  uint32_t num_nextn_predict_layers = 0;

  // Checks every field a kernel or buffer is sized from. Error messages name the field.
  Status Validate() const;

  bool IsMoeLayer(uint32_t layer) const { return layer >= first_k_dense_replace && n_routed_experts > 0; }
  uint32_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  // Values cached per token per layer by the absorbed MLA form: normalised latent + rotated rope key.
  uint32_t kv_cache_width() const { return kv_lora_rank + qk_rope_head_dim; }

  // Attention softmax scale τ = d_qk^-1/2 · m² (MODEL_SPEC §4.4).
  float SoftmaxScale() const;
  // Amplitude α applied to cos/sin (MODEL_SPEC §5.6).
  float RopeAttentionFactor() const;
  // YaRN-blended inverse frequencies, qk_rope_head_dim / 2 entries (MODEL_SPEC §5).
  std::vector<float> RopeInverseFrequencies() const;
};

const char* ArchitectureName(Architecture a);

}  // namespace moerun
