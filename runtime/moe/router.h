// Expert routing (MODEL_SPEC §6), all in fp32 as transformers does it.
#pragma once

#include <cstdint>

#include "runtime/model/config.h"

namespace moerun {

// logits: [n_routed_experts] gate logits for one token; bias: correction bias (noaux_tc) or null.
// Writes num_experts_per_tok expert ids and weights (already scaled by routed_scaling_factor).
// scratch must hold 2 * (n_routed_experts + n_group) floats.
void RouteToken(const ModelConfig& config, const float* logits, const float* bias, float* scratch, int32_t* experts,
                float* weights);

// Router logits in fp32 for T tokens: logits[t, e] = Σ_d x[t, d] · router[e, d], summed in one fixed
// order (16 lane sums, then the tail, then the lanes), so the AVX-512, AVX2 and portable paths give
// the same bits. Parallel over tokens with OpenMP when T·E·D is large.
void RouterLogits(const float* x, int64_t T, int64_t D, const float* router, int64_t E, float* logits);
// The portable path (neither AVX-512 nor AVX2), for tests.
void RouterLogitsScalar(const float* x, int64_t T, int64_t D, const float* router, int64_t E, float* logits);

}  // namespace moerun
