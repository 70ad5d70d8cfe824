#include "runtime/model/graph_contract.h"

namespace moerun {

std::vector<uint64_t> ExpectedShape(fb::Role role, const ModelConfig& c) {
  const uint64_t D = c.hidden_size, H = c.num_heads, V = c.vocab_size;
  const uint64_t qk = c.qk_head_dim(), E = c.n_routed_experts, Ie = c.moe_intermediate_size;
  const uint64_t Is = static_cast<uint64_t>(c.n_shared_experts) * Ie;
  using R = fb::Role;
  switch (role) {
    case R::Table: return {V, D};
    case R::Norm: return {D};
    case R::QProj: return {H * qk, D};
    case R::QAProj: return {c.q_lora_rank, D};
    case R::QANorm: return {c.q_lora_rank};
    case R::QBProj: return {H * qk, c.q_lora_rank};
    case R::KvAProj: return {static_cast<uint64_t>(c.kv_lora_rank) + c.qk_rope_head_dim, D};
    case R::KvANorm: return {c.kv_lora_rank};
    case R::UkT: return {H, c.kv_lora_rank, c.qk_nope_head_dim};
    case R::Uv: return {H, c.v_head_dim, c.kv_lora_rank};
    case R::OProj: return {D, H * c.v_head_dim};
    case R::Gate: return {c.intermediate_size, D};
    case R::Up: return {c.intermediate_size, D};
    case R::Down: return {D, c.intermediate_size};
    case R::Router: return {E, D};
    case R::RouterBias: return {E};
    case R::ExpertsGate: return {E, Ie, D};
    case R::ExpertsUp: return {E, Ie, D};
    case R::ExpertsDown: return {E, D, Ie};
    case R::SharedGate: return {Is, D};
    case R::SharedUp: return {Is, D};
    case R::SharedDown: return {D, Is};
    case R::Head: return {V, D};
    case R::EhProj: return {D, 2 * D};
    case R::ENorm: return {D};
    case R::HNorm: return {D};
  }
  return {};
}

bool IsF32Role(fb::Role role) {
  using R = fb::Role;
  switch (role) {
    case R::Norm: case R::QANorm: case R::KvANorm: case R::ENorm: case R::HNorm: case R::Router:
    case R::RouterBias:
      return true;
    default:
      return false;
  }
}

bool IsLinearRole(fb::Role role) { return !IsF32Role(role) && role != fb::Role::Table; }

}  // namespace moerun
