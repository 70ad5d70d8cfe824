// The graph contract between the converter (which writes nodes) and the runtime (which checks and
// runs them). Each layer l of the main stack is six nodes; activation buffers are
// 0 = residual stream h, 1 = normalised x, 2 = branch output y:
//
//   RMSNorm      in {0} out {1}  Norm = input_layernorm
//   MlaAttention in {1} out {2}  QProj | (QAProj, QANorm, QBProj), KvAProj, KvANorm, UkT, Uv, OProj
//   ResidualAdd  in {2} out {0}
//   RMSNorm      in {0} out {1}  Norm = post_attention_layernorm
//   DenseMlp     in {1} out {2}  Gate, Up, Down                      (l < first_k_dense_replace)
//   Moe          in {1} out {2}  Router, [RouterBias], ExpertsGate, ExpertsUp, ExpertsDown,
//                                [SharedGate, SharedUp, SharedDown]  (otherwise)
//   ResidualAdd  in {2} out {0}
//
// preceded by Embedding out {0} (Table) and followed by RMSNorm in {0} out {1} (Norm = model.norm)
// and LmHead in {1} (Head). The MTP module (mtp_nodes, layer = num_layers) is MtpProject in {0}
// out {0} (Table, ENorm, HNorm, EhProj: fuses the token embedding with the main model's hidden
// state), the six layer nodes, RMSNorm (shared_head.norm) and LmHead.
//
// Dtypes: Norm, QANorm, KvANorm, ENorm, HNorm, Router and RouterBias are F32; Table is F32, BF16 or
// F16; every other role is a linear weight in any dtype (F8_E4M3 with its block scale).
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "moerun_generated.h"
#include "runtime/model/config.h"

namespace moerun {

// Shape a weight of `role` must have under `config` (MODEL_SPEC §2 plus the absorbed MLA split:
// UkT = W_UK transposed per head [H, r_kv, d_n], Uv = W_UV per head [H, d_v, r_kv]). `norm_size`
// disambiguates Norm, whose size is hidden_size everywhere in the graph.
std::vector<uint64_t> ExpectedShape(fb::Role role, const ModelConfig& config);

// True for roles read as linear weights [.., out, in].
bool IsLinearRole(fb::Role role);
// True for roles that must be stored as F32.
bool IsF32Role(fb::Role role);

}  // namespace moerun
