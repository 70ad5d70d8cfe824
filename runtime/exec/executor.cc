// The forward pass: walks the graph's nodes over activation buffers [T, D]. Each node runs its ops on
// the model's backend; routing runs here in fp32.
#include <omp.h>

#include <algorithm>
#include <cstring>

#include "runtime/core/parallel_errors.h"
#include "runtime/core/parallel_for.h"
#include "runtime/exec/session.h"
#include "runtime/moe/router.h"

namespace moerun {
namespace {

// Inner norms (q_a_layernorm, kv_a_layernorm) use transformers' default eps, not rms_norm_eps.
constexpr float kInnerNormEps = 1e-6f;

enum ScratchSlot : size_t {
  // Attention (RunMla).
  kQ, kCq, kKv, kQLatent, kQRope, kAttnOut, kHeads, kPassLatent, kPassRope, kPassOut, kExpandedKeys,
  kNumAttentionSlots,
  // Feed-forward (RunMlp, RunMoe) and the LM head's gathered rows.
  kGate = kNumAttentionSlots, kUp, kGathered, kExpertOut, kRouterLogits, kRouteScratch, kSharedGate, kSharedUp,
  kNumScratchSlots
};
// The buffer behind each slot. The attention's slots and the feed-forward's are never live together
// (a node's scratch is dead once it has written its output buffer; the LM head runs after every
// layer), so each feed-forward slot takes the buffer of an attention slot, paired so that large ones
// share: the session holds the larger phase's scratch, not both. V2-Lite in 512-token chunks at 4096
// tokens of context: kUp (22 MiB) on kKv, kGate (22) on kQLatent, kExpertOut (24) on kAttnOut (32),
// kSharedGate and kSharedUp (decode batches only, ~100 KiB) on kPassLatent and kPassRope.
constexpr size_t kBufferOf[kNumScratchSlots] = {
    kQ, kCq, kKv, kQLatent, kQRope, kAttnOut, kHeads, kPassLatent, kPassRope, kPassOut, kExpandedKeys,
    /*kGate*/ kQLatent, /*kUp*/ kKv, /*kGathered*/ kQ, /*kExpertOut*/ kAttnOut, /*kRouterLogits*/ kQRope,
    /*kRouteScratch*/ kHeads, /*kSharedGate*/ kPassLatent, /*kSharedUp*/ kPassRope};
constexpr bool OwnBufferPerSlotOfAPhase() {
  for (size_t i = 0; i < kNumScratchSlots; ++i) {
    if (i < kNumAttentionSlots ? kBufferOf[i] != i : kBufferOf[i] >= kNumAttentionSlots) return false;
    for (size_t j = i + 1; j < kNumScratchSlots; ++j)
      if (i >= kNumAttentionSlots && kBufferOf[i] == kBufferOf[j]) return false;
  }
  return true;
}
static_assert(OwnBufferPerSlotOfAPhase(), "two slots of one phase share a buffer");
static_assert(kNumAttentionSlots <= Session::kScratchSlots, "Session::kScratchSlots is too small");

void EmbeddingRow(const EmbeddingTable& t, int64_t id, float* out) {
  const uint64_t base = static_cast<uint64_t>(id) * t.cols;
  for (int64_t i = 0; i < t.cols; ++i) out[i] = LoadAsF32(t.dtype, t.data, base + i);
}

}  // namespace

float* Session::Scratch(size_t slot, size_t floats) {
  ScratchFloats& v = scratch(kBufferOf[slot]);
  v.Grow(floats);  // may throw bad_alloc: Decode turns it into a status
  return v.data();
}

void Session::Forward(int64_t T) {
  const ModelConfig& c = model_->config();
  const Backend& be = model_->backend();
  const int64_t D = c.hidden_size;
  for (const GraphNode& n : model_->nodes()) {
    float* in = buffer(n.in).data();
    float* out = buffer(n.out).data();
    switch (n.op) {
      case fb::Op::Embedding:
        for (int64_t t = 0; t < T; ++t) EmbeddingRow(n.table, tokens_[t], out + t * D);
        break;
      case fb::Op::RMSNorm:
        be.RmsNorm(in, D, n.norm, D, T, c.rms_norm_eps, out, D);
        break;
      case fb::Op::MlaAttention:
        RunMla(n, in, out, T);
        break;
      case fb::Op::DenseMlp:
        RunMlp(*n.mlp, in, out, T);
        break;
      case fb::Op::Moe:
        RunMoe(*n.moe, n.layer, in, out, T);
        break;
      case fb::Op::ResidualAdd:
        if (T * D >= (1 << 18)) {
#pragma omp parallel for simd schedule(static)
          for (int64_t i = 0; i < T * D; ++i) out[i] += in[i];
        } else {  // decode: no OpenMP region at all (see parallel_for.h)
#pragma omp simd
          for (int64_t i = 0; i < T * D; ++i) out[i] += in[i];
        }
        break;
      case fb::Op::LmHead:
        RunLmHead(n, in, T);
        break;
      case fb::Op::MtpProject:
        break;  // never in the main graph (checked at load)
    }
  }
}

void Session::RunMla(const GraphNode& n, const float* x, float* y, int64_t T) {
  const ModelConfig& c = model_->config();
  const Backend& be = model_->backend();
  const MlaWeights& w = *n.mla;
  const int64_t D = c.hidden_size, H = c.num_heads, qk = c.qk_head_dim(), dn = c.qk_nope_head_dim;
  const int64_t dr = c.qk_rope_head_dim, R = c.kv_lora_rank, dv = c.v_head_dim;
  const int64_t half = dr / 2;
  const float* inv_freq = model_->rope_inv_freq().data();
  const float af = model_->rope_attention_factor();

  // The two projections of x (q_a or q_proj, and kv_a) in one call: the int8 path quantises x once.
  const int64_t W = R + dr, rq = c.q_lora_rank;
  float* q = Scratch(kQ, T * H * qk);
  float* kv = Scratch(kKv, T * W);
  float* cq = w.q_lora ? Scratch(kCq, T * rq) : nullptr;
  {
    const WeightView from_x[2] = {w.q_lora ? w.q_a : w.q_proj, w.kv_a};
    float* const outs[2] = {w.q_lora ? cq : q, kv};
    const int64_t lds[2] = {w.q_lora ? rq : H * qk, W};
    be.LinearSameInput(from_x, 2, x, D, T, outs, lds);
  }
  // Query: [T, H, d_qk], rope part rotated in place.
  if (w.q_lora) {
    be.RmsNorm(cq, rq, w.q_a_norm, rq, T, kInnerNormEps, cq, rq);
    be.Linear(w.q_b, cq, rq, T, q, H * qk);
  }
  be.Rope(q + dn, T, H, H * qk, qk, positions_.data(), inv_freq, half, af);

  // Keys: normalised latent and rotated rope key go straight into the cache.
  be.RmsNorm(kv, W, w.kv_a_norm, R, T, kInnerNormEps, kv, W);
  be.Rope(kv + R, T, 1, W, dr, positions_.data(), inv_freq, half, af);
  for (int64_t t = 0; t < T; ++t) cache_.WriteRow(n.layer, seq_of_[t], positions_[t], kv + t * W);

  // The path. Values (prefill, MlaAttentionArgs::PreferValues): every key of the batch's sequences,
  // up to each sequence's last token in the batch, is expanded once, V[j, h] = W_UV^h ĉ_j, and
  // attention writes the heads directly; in its keys form (PreferKeys) the keys' no-rope parts too,
  // K[j, h] = W_UK^h ĉ_j (Backend::ExpandKeys), and scores take q^N·K instead of the absorbed query.
  // Else the latent path (decode, short chunks at long context).
  const int64_t n_seq = cache_.max_sequences();
  std::vector<int64_t>& seq_first = seq_first_key_;  // sized n_seq + 1 at creation
  std::fill(seq_first.begin(), seq_first.end(), 0);
  for (int64_t t = 0; t < T; ++t) seq_first[seq_of_[t] + 1] = std::max<int64_t>(seq_first[seq_of_[t] + 1], n_keys_[t]);
  for (int64_t s = 0; s < n_seq; ++s) seq_first[s + 1] += seq_first[s];
  const int64_t K = seq_first[n_seq];
  int64_t pairs = 0;
  for (int64_t t = 0; t < T; ++t) pairs += n_keys_[t];
  const int64_t budget = options_.values_scratch_bytes;
  const int64_t per_pass_values = MlaAttentionArgs::ValuesHeadsPerPass(K, H, R, dv, budget);
  const bool values = per_pass_values > 0 && MlaAttentionArgs::PreferValues(T, pairs, K, R, dv);
  const int64_t per_pass_keys = values ? MlaAttentionArgs::ValuesHeadsPerPass(K, H, R, dv + dn, budget) : 0;
  const bool keys_form = per_pass_keys > 0 && be.MlaKeysForm() && MlaAttentionArgs::PreferKeys(T, pairs, K, R, dn);
  const int64_t per_pass = keys_form ? per_pass_keys : per_pass_values;

  // Queries: q_rope packed per head; the absorbed q_latent[t, h] = W_UK^hᵀ q^N[t, h], or in the keys
  // form q^N itself packed per head.
  float* q_lat = Scratch(kQLatent, T * H * (keys_form ? dn : R));
  float* q_rope = Scratch(kQRope, T * H * dr);
  for (int64_t h = 0; h < H; ++h) key_views_[h] = w.uk_t.At(h);
  if (keys_form) {
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h)
        std::memcpy(q_lat + (t * H + h) * dn, q + t * H * qk + h * qk, dn * sizeof(float));
  } else {
    be.LinearBatch(key_views_.data(), H, q, qk, H * qk, T, q_lat, R, H * R);
  }
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h)
      std::memcpy(q_rope + (t * H + h) * dr, q + t * H * qk + h * qk + dn, dr * sizeof(float));

  MlaAttentionArgs a;
  a.n_tokens = T;
  a.n_heads = H;
  (keys_form ? a.q_nope : a.q_latent) = q_lat;
  a.q_rope = q_rope;
  a.cache = cache_.View(n.layer);
  a.token_pages = token_pages_.data();
  a.n_keys = n_keys_.data();
  a.scale = model_->softmax_scale();
  float* heads = Scratch(kHeads, T * H * dv);
  for (int64_t h = 0; h < H; ++h) head_views_[h] = w.uv.At(h);

  // The values path: the key latents are gathered from the cache into kKv (its rows are in the cache
  // already), V goes to kAttnOut, which the latent path's output would use, and K to kExpandedKeys;
  // when that scratch for all heads would exceed the session's values_scratch_bytes, heads go in
  // passes. A bf16 cache holds rounded rows: this batch's own keys then expand from their f32 latents
  // (kept aside in kAttnOut while kKv is overwritten), so that a fresh prompt expands exactly what an
  // f32 cache would give; earlier keys expand from the cache's bf16 rows.
  if (values) {
    float* own = nullptr;
    if (a.cache.bf16()) {
      own = Scratch(kAttnOut, T * R);
      for (int64_t t = 0; t < T; ++t) std::memcpy(own + t * R, kv + t * W, R * sizeof(float));
    }
    float* keys = Scratch(kKv, K * R);
    for (int64_t s = 0; s < n_seq; ++s)
      for (int64_t j = 0; j < seq_first[s + 1] - seq_first[s]; ++j)
        a.cache.CopyRow(cache_.pages(s), j, R, keys + (seq_first[s] + j) * R);
    for (int64_t t = 0; own && t < T; ++t)
      std::memcpy(keys + (seq_first[seq_of_[t]] + positions_[t]) * R, own + t * R, R * sizeof(float));
    token_values_.resize(static_cast<size_t>(T));  // may throw bad_alloc: Decode reports it
    token_keys_.resize(static_cast<size_t>(T));
    a.values = token_values_.data();
    a.v_dim = dv;
    a.v_head_stride = K * dv;
    // bf16 precision rounds every value (and K) to bf16 where it is used, once per query token:
    // rounded here once, the kernels may skip it (the same numbers: rounding twice changes nothing).
    const bool bf16 = be.precision() == Precision::kBF16;
    auto round_bf16 = [](float* p, int64_t n) {
      constexpr int64_t kChunk = 4096;
      ParallelFor((n + kChunk - 1) / kChunk, n >= (1 << 18), [&](int64_t c) {
        RoundToBf16InPlace(p + c * kChunk, std::min(kChunk, n - c * kChunk));
      });
    };
    for (int64_t h0 = 0; h0 < H; h0 += per_pass) {
      const int64_t hg = std::min(per_pass, H - h0);
      float* v = Scratch(kAttnOut, hg * K * dv);  // [hg, K, dv]
      be.LinearBatch(head_views_.data() + h0, hg, keys, 0, R, K, v, K * dv, dv);
      a.values_bf16_exact = bf16;
      if (bf16) round_bf16(v, hg * K * dv);
      for (int64_t t = 0; t < T; ++t) token_values_[t] = v + seq_first[seq_of_[t]] * dv;
      if (keys_form) {
        float* kn = Scratch(kExpandedKeys, hg * K * dn);  // [hg, K, dn]
        be.ExpandKeys(key_views_.data() + h0, hg, keys, R, K, kn, K * dn);
        a.keys_bf16_exact = bf16;
        if (bf16) round_bf16(kn, hg * K * dn);
        for (int64_t t = 0; t < T; ++t) token_keys_[t] = kn + seq_first[seq_of_[t]] * dn;
        a.keys = token_keys_.data();
        a.k_dim = dn;
        a.k_head_stride = K * dn;
      }
      a.n_heads = hg;
      if (hg == H) {
        a.out = heads;
        be.MlaAttention(a);
        continue;
      }
      // A pass over some of the heads: their queries gathered, their outputs put in place.
      const int64_t ql = keys_form ? dn : R;
      float* pl = Scratch(kPassLatent, T * hg * ql);
      float* pr = Scratch(kPassRope, T * hg * dr);
      float* po = Scratch(kPassOut, T * hg * dv);
      for (int64_t t = 0; t < T; ++t) {
        std::memcpy(pl + t * hg * ql, q_lat + (t * H + h0) * ql, hg * ql * sizeof(float));
        std::memcpy(pr + t * hg * dr, q_rope + (t * H + h0) * dr, hg * dr * sizeof(float));
      }
      (keys_form ? a.q_nope : a.q_latent) = pl;
      a.q_rope = pr;
      a.out = po;
      be.MlaAttention(a);
      for (int64_t t = 0; t < T; ++t) std::memcpy(heads + (t * H + h0) * dv, po + t * hg * dv, hg * dv * sizeof(float));
    }
  } else {
    a.out = Scratch(kAttnOut, T * H * R);
    be.MlaAttention(a);
    // Values: o[t, h] = W_UV^h ō[t, h], heads concatenated.
    be.LinearBatch(head_views_.data(), H, a.out, R, H * R, T, heads, dv, H * dv);
  }
  be.Linear(w.o, heads, H * dv, T, y, D);
}

void Session::RunMlp(const MlpWeights& w, const float* x, float* y, int64_t T) {
  const Backend& be = model_->backend();
  const int64_t D = w.gate.cols, I = w.gate.rows;
  float* g = Scratch(kGate, T * I);
  float* u = Scratch(kUp, T * I);
  const WeightView gate_up[2] = {w.gate, w.up};
  float* const gu[2] = {g, u};
  const int64_t ld[2] = {I, I};
  be.LinearSameInput(gate_up, 2, x, D, T, gu, ld);
  be.SiluMul(g, u, g, T * I);
  be.Linear(w.down, g, I, T, y, D);
}

void Session::RunMoe(const MoeWeights& w, int32_t layer, const float* x, float* y, int64_t T) {
  const ModelConfig& c = model_->config();
  const Backend& be = model_->backend();
  const int64_t D = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok, I = c.moe_intermediate_size;

  // Routing in fp32 whatever the compute precision.
  float* logits = Scratch(kRouterLogits, T * E);
  RouterLogits(x, T, D, w.router, E, logits);
  route_experts_.resize(static_cast<size_t>(T * K));
  route_weights_.resize(static_cast<size_t>(T * K));
  slot_of_.resize(static_cast<size_t>(T * K));
  slot_token_.resize(static_cast<size_t>(T * K));
  const int64_t per_thread = 2 * (E + c.n_group);
  const int max_threads = omp_get_max_threads();
  float* route_scratch = Scratch(kRouteScratch, static_cast<size_t>(per_thread * max_threads));
  // Tokens route independently (each thread with its own scratch); nothing here allocates or throws.
  ParallelFor(T, T * E >= (1 << 12), [&](int64_t t) {
    float* mine = route_scratch + per_thread * (omp_get_thread_num() % max_threads);
    RouteToken(c, logits + t * E, w.bias, mine, &route_experts_[t * K], &route_weights_[t * K]);
  });
  std::fill(expert_offset_.begin(), expert_offset_.end(), 0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t k = 0; k < K; ++k) ++expert_offset_[route_experts_[t * K + k] + 1];
  // Slots: the (token, k) pairs grouped by expert, in token order within an expert, so each
  // selected expert's weights are read once per batch on a contiguous block of rows.
  if (layer >= 0 && layer < static_cast<int32_t>(c.num_layers)) {
    uint32_t* counts = batch_expert_counts_.data() + static_cast<int64_t>(layer) * E;
    for (int64_t e = 0; e < E; ++e) counts[e] = static_cast<uint32_t>(expert_offset_[e + 1]);
  }
  for (int64_t e = 0; e < E; ++e) expert_offset_[e + 1] += expert_offset_[e];
  active_experts_.clear();
  for (int64_t e = 0; e < E; ++e)
    if (expert_offset_[e + 1] > expert_offset_[e]) active_experts_.push_back(static_cast<int32_t>(e));
  {
    std::vector<int64_t>& next = expert_next_;
    next.assign(expert_offset_.begin(), expert_offset_.end() - 1);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t k = 0; k < K; ++k) {
        const int64_t slot = next[route_experts_[t * K + k]]++;
        slot_of_[t * K + k] = static_cast<int32_t>(slot);
        slot_token_[slot] = static_cast<int32_t>(t);
      }
  }
  // Largest first, so that a dynamic schedule ends balanced.
  std::stable_sort(active_experts_.begin(), active_experts_.end(), [&](int32_t a, int32_t b) {
    return expert_offset_[a + 1] - expert_offset_[a] > expert_offset_[b + 1] - expert_offset_[b];
  });

  // The shared experts write y; without them it starts at zero. At decode sizes (up to
  // kSharedWithRoutedMaxSlots slots, the CPU backend's jobs path) they go in the routed experts' call,
  // which may stream their weights together; larger batches run them first on their own, in the
  // buffers the routed experts then use (their own scratch would add 2·T·I floats, 92 MiB for a
  // 4096-token V2-Lite batch). The same numbers either way.
  constexpr int64_t kSharedWithRoutedMaxSlots = 64;
  const bool shared_with_routed = w.has_shared && T * K <= kSharedWithRoutedMaxSlots;
  SharedMlpArgs shared;
  if (w.has_shared && !shared_with_routed) {
    RunMlp(w.shared, x, y, T);
  } else if (w.has_shared) {
    shared.gate = w.shared.gate;
    shared.up = w.shared.up;
    shared.down = w.shared.down;
    shared.I = w.shared.gate.rows;
    shared.g = Scratch(kSharedGate, T * shared.I);
    shared.u = Scratch(kSharedUp, T * shared.I);
    shared.y = y;
  } else {
    std::memset(y, 0, static_cast<size_t>(T * D) * sizeof(float));
  }
  const int64_t S = T * K;
  const int64_t n_active = static_cast<int64_t>(active_experts_.size());
  for (int64_t i = 0; i < n_active; ++i) {
    const int32_t e = active_experts_[i];
    active_begin_[i] = expert_offset_[e];
    active_count_[i] = expert_offset_[e + 1] - expert_offset_[e];
    active_gate_[i] = w.gate.At(e);
    active_up_[i] = w.up.At(e);
    active_down_[i] = w.down.At(e);
  }
  MoeExpertsArgs a;
  a.x = x;
  a.T = T;
  a.D = D;
  a.I = I;
  a.slot_token = slot_token_.data();
  a.n_active = n_active;
  a.begin = active_begin_.data();
  a.count = active_count_.data();
  a.gate = active_gate_.data();
  a.up = active_up_.data();
  a.down = active_down_.data();
  a.gathered = Scratch(kGathered, S * D);
  a.g = Scratch(kGate, S * I);
  a.u = Scratch(kUp, S * I);
  a.y = Scratch(kExpertOut, S * D);
  a.shared = shared_with_routed ? &shared : nullptr;
  be.MoeExperts(a);
  const float* ys = a.y;
  // y[t] += Σ_k weight[t, k] · expert output, in k order.
  ParallelFor(T, S * D >= (1 << 16), [&](int64_t t) {
    float* yt = y + t * D;
    for (int64_t k = 0; k < K; ++k) {
      const float wt = route_weights_[t * K + k];
      const float* src = ys + static_cast<int64_t>(slot_of_[t * K + k]) * D;
      // Vectorised over d (-O2 alone leaves it scalar for fear of aliasing); same sums per element.
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) yt[d] += wt * src[d];
    }
  });
}

void Session::RunLmHead(const GraphNode& n, const float* x, int64_t T) {
  const ModelConfig& c = model_->config();
  const int64_t D = c.hidden_size, V = c.vocab_size;
  // Only the rows that asked for logits go through the head.
  int64_t n_out = 0;
  for (int64_t t = 0; t < T; ++t) n_out += out_row_[t] >= 0;
  if (n_out == 0) return;
  float* xs = Scratch(kGathered, n_out * D);
  for (int64_t t = 0; t < T; ++t)
    if (out_row_[t] >= 0) std::memcpy(xs + out_row_[t] * D, x + t * D, D * sizeof(float));
  model_->backend().Linear(n.head, xs, D, n_out, logits_.data(), V);
}

}  // namespace moerun
