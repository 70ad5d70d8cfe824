// Backend: a device kind that runs the model's ops. A backend never reads the file: the runtime hands
// it weight views into the mapping. Ops are const and may be called concurrently from different
// sessions; everything per-call lives on the caller's side. An op that cannot allocate its scratch
// throws std::bad_alloc (never from inside its own parallel regions) and leaves its output
// unspecified; the session reports MOERUN_ERR_OUT_OF_MEMORY and a retry computes the same numbers.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "runtime/core/dtype.h"
#include "runtime/core/q8_panel.h"
#include "runtime/core/status.h"

namespace moerun {

enum class Precision : int { kF32 = 0, kBF16 = 1 };

// A linear weight [rows = out, cols = in] in the file's dtype. F8_E4M3 weights carry an f32 scale
// grid [ceil(rows/block_rows), ceil(cols/block_cols)] whose row stride is scale_cols. Q8_PANEL
// weights carry their panel scales (runtime/core/q8_panel.h); scale_cols = groups per row,
// block_rows = 1, block_cols = 128.
struct WeightView {
  DType dtype = DType::kF32;
  const void* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  const float* scale = nullptr;
  int64_t scale_cols = 0;
  int32_t block_rows = 0;
  int32_t block_cols = 0;

  // Dequantised element (reference semantics: float32(w) * scale, MODEL_SPEC §3).
  float At(int64_t r, int64_t c) const {
    if (dtype == DType::kQ8Panel) return q8::Dequant(static_cast<const uint8_t*>(data), scale, r, c, cols);
    float v = LoadAsF32(dtype, data, static_cast<size_t>(r * cols + c));
    if (dtype == DType::kF8E4M3) v *= scale[(r / block_rows) * scale_cols + c / block_cols];
    return v;
  }
};

// The latent KV cache of one layer as attention reads it: pages of page_size rows, each row holds the
// normalised latent (kv_rank values) followed by the rotated rope key (rope_dim values). The rows are
// f32 (pool), or bf16 (pool_bf16, nearest even) for a backend whose Bf16LatentCache() is true.
struct LatentCacheView {
  const float* pool = nullptr;  // [n_pages, page_size, kv_rank + rope_dim] f32, or null
  int64_t page_size = 0;
  int64_t kv_rank = 0;
  int64_t rope_dim = 0;
  const uint16_t* pool_bf16 = nullptr;  // the same in bf16, or null
  int64_t row_width() const { return kv_rank + rope_dim; }
  bool bf16() const { return pool_bf16 != nullptr; }
  int64_t RowIndex(const int32_t* pages, int64_t position) const {
    return static_cast<int64_t>(pages[position / page_size]) * page_size + position % page_size;
  }
  // f32 rows only.
  const float* Row(const int32_t* pages, int64_t position) const {
    return pool + RowIndex(pages, position) * row_width();
  }
  // bf16 rows only.
  const uint16_t* RowBf16(const int32_t* pages, int64_t position) const {
    return pool_bf16 + RowIndex(pages, position) * row_width();
  }
  // dst[0, n) = the row's first n values as f32 (bf16 rows widened exactly), n <= row_width().
  void CopyRow(const int32_t* pages, int64_t position, int64_t n, float* dst) const {
    if (!bf16()) {
      std::memcpy(dst, Row(pages, position), static_cast<size_t>(n) * sizeof(float));
      return;
    }
    const uint16_t* src = RowBf16(pages, position);
    for (int64_t i = 0; i < n; ++i) dst[i] = Bf16ToF32(src[i]);
  }
};

// Absorbed-form MLA attention (MODEL_SPEC §4.5) for T query tokens:
//   s_j = scale · (q_latent[t,h]·ĉ_j + q_rope[t,h]·k^R_j), j < n_keys[t]
//   latent path (values == null):  out[t,h] = Σ_j softmax(s)_j ĉ_j           out [T, H, kv_rank]
//   values path (values != null):  out[t,h] = Σ_j softmax(s)_j V_t[j, h]     out [T, H, v_dim]
// The values path is for prefill, where a batch's keys are few compared with its tokens: the caller
// expands every key once, V[j, h] = W_UV^h ĉ_j, and the weighted sum runs over v_dim-wide rows instead
// of kv_rank-wide latents (and no W_UV is applied to the outputs). Same math, other rounding.
struct MlaAttentionArgs {
  int64_t n_tokens = 0;
  int64_t n_heads = 0;
  const float* q_latent = nullptr;  // [T, H, kv_rank]
  const float* q_rope = nullptr;    // [T, H, rope_dim], rotated
  LatentCacheView cache;
  const int32_t* const* token_pages = nullptr;  // [T] page table of token t's sequence
  const int32_t* n_keys = nullptr;              // [T] keys visible to token t (its position + 1)
  float scale = 1.0f;
  float* out = nullptr;  // [T, H, kv_rank], or [T, H, v_dim] on the values path
  // Values path: values[t] = the values of token t's sequence, V[j, h] (v_dim floats) of the key at
  // position j < n_keys[t] at values[t] + h·v_head_stride + j·v_dim: per head, the keys' rows follow
  // each other. Tokens of one sequence share the pointer.
  const float* const* values = nullptr;  // [T] or null
  int64_t v_dim = 0;
  int64_t v_head_stride = 0;  // floats
  // Values path: true when every value is already a bf16 number (the caller rounded them once), so
  // that a kernel which rounds values to bf16 at bf16 precision may skip that; false is always right.
  bool values_bf16_exact = false;
  // Keys form of the values path (keys != null; prefill of long prompts): the caller has also
  // expanded every key's no-rope part per head, K[j, h] = W_UK^h ĉ_j (k_dim floats at keys[t] +
  // h·k_head_stride + j·k_dim, laid out like values), and q_nope holds the queries' no-rope parts
  // q^N [T, H, k_dim] (q_latent is not read):
  //   s_j = scale · (q^N[t,h]·K[j, h] + q_rope[t,h]·k^R_j)
  // The same scores as the absorbed form (q_latent = W_UK^hᵀ q^N), with k_dim instead of kv_rank
  // multiply-adds each. keys_bf16_exact: as values_bf16_exact, for K.
  const float* const* keys = nullptr;  // [T] or null
  const float* q_nope = nullptr;       // [T, H, k_dim]
  int64_t k_dim = 0;
  int64_t k_head_stride = 0;  // floats
  bool keys_bf16_exact = false;

  // The caller's choice of path for a batch of n_tokens whose tokens see `pairs` (token, key) pairs
  // in all (the sum of n_keys) and that would expand keys_to_expand keys (each sequence's keys up to
  // its last token in the batch). Per head, expanding a key costs kv_rank·v_dim multiply-adds, as
  // much as the W_UV that the latent path applies to each output token, and every (token, key) pair's
  // weighted sum gets kv_rank − v_dim cheaper. The values path wins when
  //   pairs · (kv_rank − v_dim) >= (keys_to_expand − n_tokens) · kv_rank · v_dim,
  // counting multiply-adds alike (the expansion is a GEMM, faster per multiply-add than the
  // attention, so the rule leans towards latent). A fresh prompt always expands, and so does a
  // 512-token chunk at 4k of context (~3x fewer multiply-adds); decode and short chunks at long
  // context stay latent.
  static constexpr int64_t kMinValuesTokens = 16;
  static bool PreferValues(int64_t n_tokens, int64_t pairs, int64_t keys_to_expand, int64_t kv_rank, int64_t v_dim) {
    if (n_tokens < kMinValuesTokens || kv_rank <= v_dim) return false;
    return static_cast<double>(pairs) * static_cast<double>(kv_rank - v_dim) >=
           (static_cast<double>(keys_to_expand) - static_cast<double>(n_tokens)) * static_cast<double>(kv_rank) *
               static_cast<double>(v_dim);
  }
  // Whether the values path should take the keys form: per head, expanding a key costs kv_rank·k_dim
  // multiply-adds, as much as the absorbed query of one token (which the keys form does without), and
  // every (token, key) pair's score gets kv_rank − k_dim cheaper. The same rule as PreferValues with
  // k_dim for v_dim: a fresh prompt always, and a 512-token chunk at 4k of context.
  static bool PreferKeys(int64_t n_tokens, int64_t pairs, int64_t keys_to_expand, int64_t kv_rank, int64_t k_dim) {
    return k_dim > 0 && PreferValues(n_tokens, pairs, keys_to_expand, kv_rank, k_dim);
  }
  // The values path's scratch, the gathered key latents (keys · kv_rank floats) and one pass of
  // expanded values (keys · v_dim floats per head), stays within budget_bytes: this many heads per
  // pass, at most n_heads; 0 means not even one head fits (the latent path then).
  static constexpr int64_t kMaxValuesBytes = int64_t{64} << 20;
  static int64_t ValuesHeadsPerPass(int64_t keys_to_expand, int64_t n_heads, int64_t kv_rank, int64_t v_dim,
                                    int64_t budget_bytes) {
    const int64_t keys = std::max<int64_t>(keys_to_expand, 1), f = static_cast<int64_t>(sizeof(float));
    const int64_t left = budget_bytes - keys * kv_rank * f;
    return left <= 0 ? 0 : std::min(n_heads, left / (keys * std::max<int64_t>(v_dim, 1) * f));
  }
};

// An MoE layer's shared experts as one MLP of intermediate size I, run on every token of x:
// y[t] = down(silu(gate · x[t]) ⊙ (up · x[t])), with g and u as scratch [T, I].
struct SharedMlpArgs {
  WeightView gate, up;  // [I, D]
  WeightView down;      // [D, I]
  int64_t I = 0;
  float* g = nullptr;  // scratch [T, I]
  float* u = nullptr;  // scratch [T, I]
  float* y = nullptr;  // [T, D] output
};

// The experts of one MoE layer. Routed ones over "slots" (token, k) grouped by expert: active expert i
// owns slots [begin[i], begin[i] + count[i]), and slot_token[s] is the row of x that slot s reads. For
// every slot: y[s] = down_i(silu(gate_i · x[slot_token[s]]) ⊙ (up_i · x[slot_token[s]])). The shared
// experts, when there are some, in the same call (shared), so that a backend may stream their weights
// together with the routed experts'; every output is the same as with the shared MLP run on its own
// (LinearSameInput for gate and up, SiluMul, Linear for down).
struct MoeExpertsArgs {
  const float* x = nullptr;  // [T, D]
  int64_t T = 0, D = 0, I = 0;  // tokens, hidden size, expert intermediate size
  const int32_t* slot_token = nullptr;  // [S]
  int64_t n_active = 0;                 // experts with slots, in the order to schedule them
  const int64_t* begin = nullptr;       // [n_active]
  const int64_t* count = nullptr;       // [n_active]
  const WeightView* gate = nullptr;     // [n_active] [I, D]
  const WeightView* up = nullptr;       // [n_active] [I, D]
  const WeightView* down = nullptr;     // [n_active] [D, I]
  float* gathered = nullptr;            // scratch [S, D]
  float* g = nullptr;                   // scratch [S, I]
  float* u = nullptr;                   // scratch [S, I]
  float* y = nullptr;                   // [S, D] output
  const SharedMlpArgs* shared = nullptr;  // or none
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;
  virtual Precision precision() const = 0;

  // Called once per model with every linear weight; may build converted copies (bf16 path).
  virtual Status PrepareWeights(const std::vector<WeightView>& weights) { return Status::Ok(); }

  // y[m, 0:rows] = W · x[m, 0:cols] for m < M; row strides ldx, ldy (in floats).
  virtual void Linear(const WeightView& w, const float* x, int64_t ldx, int64_t M, float* y, int64_t ldy) const = 0;

  // Independent linears, e.g. one per attention head: for i < count,
  //   y + i·y_step [m, 0:w[i].rows] = w[i] · (x + i·x_step)[m, 0:w[i].cols]   for m < M,
  // rows strided by ldx / ldy as in Linear. Backends may run the items concurrently.
  virtual void LinearBatch(const WeightView* w, int64_t count, const float* x, int64_t x_step, int64_t ldx, int64_t M,
                           float* y, int64_t y_step, int64_t ldy) const {
    for (int64_t i = 0; i < count; ++i) Linear(w[i], x + i * x_step, ldx, M, y + i * y_step, ldy);
  }

  // Several weights on one input: y[i][m, 0:w[i].rows] = w[i] · x[m, 0:cols] for i < count (all w[i]
  // have the same cols), rows strided by ldx and ldy[i]. Backends may share work on x between them.
  virtual void LinearSameInput(const WeightView* w, int64_t count, const float* x, int64_t ldx, int64_t M,
                               float* const* y, const int64_t* ldy) const {
    for (int64_t i = 0; i < count; ++i) Linear(w[i], x, ldx, M, y[i], ldy[i]);
  }

  // The experts of an MoE layer (MoeExpertsArgs). The default runs the shared MLP first (RunSharedMlp),
  // then gathers each routed expert's rows into a.gathered and runs LinearSameInput (gate, up), SiluMul
  // and Linear (down) on them.
  virtual void MoeExperts(const MoeExpertsArgs& a) const;
  // The shared experts of a.shared alone (nothing when there are none), as MoeExperts defines them.
  void RunSharedMlp(const MoeExpertsArgs& a) const;

  // The keys form's expansion (MlaAttentionArgs::keys) for heads h < H and keys j < n:
  //   out[h·out_head_stride + j·k_dim + d] = Σ_r latents[j·ldl + r] · uk_t[h].At(r, d)
  // with uk_t[h] = (W_UK^h)ᵀ [kv_rank, k_dim] dequantised exactly and the sum one chain of f32
  // fused multiply-adds over r in order, at either precision (bf16 precision rounds K where it is
  // used). The default runs that chain in scalar code; a backend's own kernel gives the same bits.
  // Throws std::bad_alloc.
  virtual void ExpandKeys(const WeightView* uk_t, int64_t H, const float* latents, int64_t ldl, int64_t n, float* out,
                          int64_t out_head_stride) const;

  // y[m] = w ⊙ x[m] / sqrt(mean(x[m]²) + eps), n values per row.
  virtual void RmsNorm(const float* x, int64_t ldx, const float* w, int64_t n, int64_t M, float eps, float* y,
                       int64_t ldy) const = 0;

  // Interleaved-pair RoPE in place on vectors of 2·half values: x[t, v, :] for v < n_vec, rotated by
  // angle position[t]·inv_freq[i] with cos/sin scaled by attention_factor.
  virtual void Rope(float* x, int64_t T, int64_t n_vec, int64_t stride_token, int64_t stride_vec,
                    const int32_t* positions, const float* inv_freq, int64_t half, float attention_factor) const = 0;

  // out[i] = silu(gate[i]) · up[i]
  virtual void SiluMul(const float* gate, const float* up, float* out, int64_t n) const = 0;

  virtual void MlaAttention(const MlaAttentionArgs& args) const = 0;

  // True when MlaAttention reads the latent cache as bf16 rows (LatentCacheView::pool_bf16): the
  // session then keeps it in bf16, half the memory. Only for a backend whose attention rounds the
  // cache rows to bf16 anyway: its attention over given rows is then the same with either cache (the
  // values path's key expansion, a Linear, sees the rounded rows).
  virtual bool Bf16LatentCache() const { return false; }

  // True when the values path should take its keys form (MlaAttentionArgs::keys) on this backend
  // where MlaAttentionArgs::PreferKeys says so: false where the absorbed form runs on much wider
  // arithmetic than the keys form (the CPU backend's AMX-BF16 and AVX-512 tiles). MlaAttention takes
  // either form whatever this says.
  virtual bool MlaKeysForm() const { return true; }

 protected:
  // Runs run_expert(i) for every active expert i: concurrently, one expert per thread, when there are
  // at least two per thread (the kernels' own parallel regions then nest inactive: one fork/join per
  // layer, and a descheduled thread holds up one expert rather than every matmul); otherwise in
  // order, each kernel splitting its work. Exceptions (std::bad_alloc) reach the caller.
  void ForEachExpert(int64_t n_active, const std::function<void(int64_t)>& run_expert) const;
};

// Backend registry: "cpu" and "reference" are built in.
Result<std::unique_ptr<Backend>> CreateBackend(const std::string& name, Precision precision);
std::vector<std::string> BackendNames();

}  // namespace moerun
