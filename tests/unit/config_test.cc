#include <gtest/gtest.h>

#include <cmath>

#include "runtime/model/config.h"

namespace moerun {
namespace {

ModelConfig V3() {
  ModelConfig c;
  c.architecture = Architecture::kDeepseekV3;
  c.vocab_size = 129280;
  c.hidden_size = 7168;
  c.intermediate_size = 18432;
  c.moe_intermediate_size = 2048;
  c.num_layers = 61;
  c.num_heads = 128;
  c.q_lora_rank = 1536;
  c.kv_lora_rank = 512;
  c.qk_nope_head_dim = 128;
  c.qk_rope_head_dim = 64;
  c.v_head_dim = 128;
  c.n_routed_experts = 256;
  c.n_shared_experts = 1;
  c.num_experts_per_tok = 8;
  c.n_group = 8;
  c.topk_group = 4;
  c.first_k_dense_replace = 3;
  c.topk_method = TopkMethod::kNoauxTc;
  c.scoring_func = ScoringFunc::kSigmoid;
  c.rope.scaling = RopeScaling::kYarn;
  c.rope.factor = 40;
  c.rope.original_max_position_embeddings = 4096;
  c.rope.mscale = c.rope.mscale_all_dim = 1.0f;
  c.max_position_embeddings = 163840;
  return c;
}

// MODEL_SPEC §4.4 and §5 give these values for the shipped V3 and V2-Lite configs.
TEST(Config, SoftmaxScaleMatchesSpec) {
  ModelConfig c = V3();
  EXPECT_NEAR(c.SoftmaxScale(), 0.1352338, 1e-6);
  c.rope.mscale = c.rope.mscale_all_dim = 0.707f;
  EXPECT_NEAR(c.SoftmaxScale(), 0.1147214, 1e-6);
  EXPECT_FLOAT_EQ(c.RopeAttentionFactor(), 1.0f);
  c.rope.mscale = 0;  // missing mscale: transformers falls back to 0.1 ln f + 1 on cos/sin
  EXPECT_NEAR(c.RopeAttentionFactor(), 0.1 * std::log(40.0) + 1.0, 1e-6);
}

TEST(Config, YarnInverseFrequenciesMatchSpec) {
  const std::vector<float> inv = V3().RopeInverseFrequencies();
  ASSERT_EQ(inv.size(), 32u);
  const double want[] = {1, 0.7499, 0.5623, 0.4217, 0.3162, 0.2371, 0.1778, 0.1334, 0.1, 0.07499, 0.05623,
                         0.03901, 0.02688, 0.01838, 0.01245, 0.008335, 0.0055, 0.003562, 0.002249, 0.001371,
                         7.906e-4, 4.15e-4, 1.778e-4, 3.334e-5, 2.5e-5, 1.875e-5, 1.406e-5, 1.054e-5, 7.906e-6,
                         5.928e-6, 4.446e-6, 3.334e-6};
  for (int i = 0; i < 32; ++i) EXPECT_NEAR(inv[i], want[i], want[i] * 2e-3) << "index " << i;
}

TEST(Config, ValidateNamesTheBadField) {
  ModelConfig c = V3();
  EXPECT_TRUE(c.Validate().ok()) << c.Validate().message();
  c.num_heads = 0;
  EXPECT_NE(c.Validate().message().find("num_attention_heads"), std::string::npos);
  c = V3();
  c.n_group = 7;
  EXPECT_NE(c.Validate().message().find("not divisible by n_group"), std::string::npos);
  c = V3();
  c.num_experts_per_tok = 300;
  EXPECT_NE(c.Validate().message().find("num_experts_per_tok"), std::string::npos);
  c = V3();
  c.qk_rope_head_dim = 63;
  EXPECT_NE(c.Validate().message().find("even"), std::string::npos);
  c = V3();
  c.rms_norm_eps = -1;
  EXPECT_NE(c.Validate().message().find("rms_norm_eps"), std::string::npos);
  c = V3();
  c.topk_group = 1;  // 1 group of 32 experts still holds top-8
  EXPECT_TRUE(c.Validate().ok());
  c.num_experts_per_tok = 33;
  EXPECT_FALSE(c.Validate().ok());
}

}  // namespace
}  // namespace moerun
