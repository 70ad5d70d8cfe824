// config.json of a Hugging Face DeepSeek-V2/V3 checkpoint → ModelConfig (MODEL_SPEC §1).
//
// Behaviour follows what transformers 5.17 does with the same file:
//  * missing keys take the defaults of DeepseekV2Config / DeepseekV3Config (picked by
//    architectures / model_type); n_group / topk_group null → 1; q_lora_rank null → 0 (q_proj);
//  * V2 always scores with softmax and honours topk_method (greedy | group_limited_greedy);
//    V3 always scores with sigmoid and routes with noaux_tc. A config that asks for something else
//    (V3 with scoring_func "softmax", V2 with norm_topk_prob true, which transformers' V2 ignores)
//    is rejected with kUnsupported rather than silently reinterpreted;
//  * rope_scaling (v4 name) wins over rope_parameters (v5 name), rope_theta may sit inside either;
//    only YaRN and the default (no scaling) are supported.
// bos/eos token ids that are null or absent become -1 (a list of eos ids keeps the first).
// Errors name the key and the file: kCorruptFile for text that is not a JSON object,
// kInvalidArgument for wrong types / impossible values, kUnsupported for valid-but-unsupported
// settings. The result has passed ModelConfig::Validate().
#pragma once

#include <string>

#include "runtime/core/status.h"
#include "runtime/model/config.h"

namespace moerun::convert {

struct HfConfig {
  ModelConfig config;
  std::string architecture;       // architectures[0], or derived from model_type
  bool has_quantization_config = false;  // fp8 / e4m3 / 128x128 (anything else is rejected)
};

Result<HfConfig> ParseHfConfigFull(const std::string& json_text, const std::string& path_for_errors);
Result<ModelConfig> ParseHfConfig(const std::string& json_text, const std::string& path_for_errors);

}  // namespace moerun::convert
