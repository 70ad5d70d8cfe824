#include "tests/unit/tiny_model.h"

#include <unistd.h>

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <mutex>
#include <random>
#include <set>
#include <vector>

#include "converters/q8_pack.h"
#include "runtime/core/q8_panel.h"
#include "runtime/format/model_writer.h"
#include "runtime/model/graph_contract.h"

namespace moerun::testing {

ModelConfig TinyConfig(const TinyModelOptions& o) {
  ModelConfig c;
  c.architecture = o.architecture;
  c.vocab_size = 96;
  c.hidden_size = 160;
  c.intermediate_size = 192;
  c.moe_intermediate_size = 48;
  c.num_layers = 2;
  c.num_heads = 2;
  c.q_lora_rank = o.q_lora ? 64 : 0;
  c.kv_lora_rank = 48;
  c.qk_nope_head_dim = 32;
  c.qk_rope_head_dim = 16;
  c.v_head_dim = 24;
  c.n_routed_experts = 8;
  c.n_shared_experts = 1;
  c.num_experts_per_tok = 2;
  c.first_k_dense_replace = 1;
  if (o.architecture == Architecture::kDeepseekV3) {
    c.n_group = 4;
    c.topk_group = 2;
    c.scoring_func = ScoringFunc::kSigmoid;
    c.topk_method = TopkMethod::kNoauxTc;
    c.norm_topk_prob = true;
    c.routed_scaling_factor = 2.5f;
  }
  c.rope.scaling = RopeScaling::kYarn;
  c.rope.factor = 4.0f;
  c.rope.original_max_position_embeddings = 64;
  c.rope.mscale = c.rope.mscale_all_dim = 1.0f;
  c.max_position_embeddings = 256;
  c.bos_token_id = 0;
  c.eos_token_id = 1;
  if (o.minimal) {
    c.vocab_size = 16;
    c.hidden_size = 32;
    c.intermediate_size = 32;
    c.moe_intermediate_size = 16;
    c.q_lora_rank = o.q_lora ? 16 : 0;
    c.kv_lora_rank = 16;
    c.qk_nope_head_dim = 8;
    c.qk_rope_head_dim = 8;
    c.v_head_dim = 8;
  }
  return c;
}

namespace {

struct Builder {
  ModelWriter w;
  const TinyModelOptions& o;
  const ModelConfig& c;
  std::mt19937 rng;
  std::vector<std::vector<uint8_t>> data;  // per tensor, in declaration order

  Builder(const TinyModelOptions& opt, const ModelConfig& cfg) : o(opt), c(cfg), rng(opt.seed) {}

  std::vector<float> Random(uint64_t n, float scale, float offset = 0.0f) {
    std::normal_distribution<float> d(0.0f, 1.0f);
    std::vector<float> v(n);
    for (float& x : v) x = offset + scale * d(rng);
    return v;
  }

  uint32_t Add(const std::string& name, DType dtype, std::vector<uint64_t> shape, const std::vector<float>& values) {
    TensorSpec s{name, dtype, shape};
    if (dtype == DType::kQ8Panel) return AddQ8(s, values);
    std::vector<uint8_t> bytes(values.size() * DTypeSize(dtype));
    if (dtype == DType::kF32) {
      std::memcpy(bytes.data(), values.data(), bytes.size());
    } else if (dtype == DType::kBF16) {
      for (size_t i = 0; i < values.size(); ++i) {
        uint16_t b = F32ToBf16(values[i]);
        std::memcpy(&bytes[2 * i], &b, 2);
      }
    } else if (dtype == DType::kF8E4M3) {
      // Per 128x128 block: scale = absmax / 448, value = nearest e4m3 (searched in the table).
      const uint64_t cols = shape.back(), rows = values.size() / cols;
      const uint64_t bc = CeilDiv(cols, 128), br = CeilDiv(rows, 128);
      std::vector<float> scale(br * bc, 0.0f);
      for (uint64_t i = 0; i < rows; ++i)
        for (uint64_t j = 0; j < cols; ++j) {
          float& s = scale[(i / 128) * bc + j / 128];
          s = std::max(s, std::fabs(values[i * cols + j]));
        }
      for (float& s : scale) s = s > 0.0f ? s / 448.0f : 1.0f;
      const float* table = F8E4M3Table();
      for (uint64_t i = 0; i < rows; ++i)
        for (uint64_t j = 0; j < cols; ++j) {
          const float s = scale[(i / 128) * bc + j / 128];
          const float v = s > 0 ? values[i * cols + j] / s : 0.0f;
          int best = 0;
          for (int k = 0; k < 256; ++k)
            if (!std::isnan(table[k]) && std::fabs(table[k] - v) < std::fabs(table[best] - v)) best = k;
          bytes[i * cols + j] = static_cast<uint8_t>(best);
        }
      std::vector<uint64_t> sshape(shape.begin(), shape.end() - 2);
      sshape.push_back(br);
      sshape.push_back(bc);
      s.scale = static_cast<int32_t>(w.num_tensors() + 1);
      s.block_rows = s.block_cols = 128;
      const uint32_t idx = w.AddTensor(s);
      data.push_back(std::move(bytes));
      std::vector<uint8_t> sb(scale.size() * 4);
      std::memcpy(sb.data(), scale.data(), sb.size());
      w.AddTensor(TensorSpec{name + ".scale", DType::kF32, sshape});
      data.push_back(std::move(sb));
      return idx;
    }
    const uint32_t idx = w.AddTensor(s);
    data.push_back(std::move(bytes));
    return idx;
  }

  // q8_panel, every matrix of a (possibly stacked) weight packed by the converter's quantiser.
  uint32_t AddQ8(TensorSpec s, const std::vector<float>& values) {
    const uint64_t cols = s.shape.back(), rows = s.shape[s.shape.size() - 2];
    const uint64_t count = values.size() / (rows * cols);
    const int64_t mb = q8::MatrixBytes(rows, cols), ms = q8::MatrixScales(rows, cols);
    std::vector<uint8_t> bytes(count * mb);
    std::vector<float> scale(count * ms);
    for (uint64_t i = 0; i < count; ++i)
      EXPECT_TRUE(convert::PackQ8Panels(values.data() + i * rows * cols, rows, cols, bytes.data() + i * mb,
                                        scale.data() + i * ms));
    std::vector<uint64_t> sshape(s.shape.begin(), s.shape.end() - 2);
    sshape.insert(sshape.end(), {CeilDiv(rows, 16), CeilDiv(cols, 128), 16});
    s.scale = static_cast<int32_t>(w.num_tensors() + 1);
    s.block_rows = 1;
    s.block_cols = 128;
    const uint32_t idx = w.AddTensor(s);
    data.push_back(std::move(bytes));
    std::vector<uint8_t> sb(scale.size() * 4);
    std::memcpy(sb.data(), scale.data(), sb.size());
    w.AddTensor(TensorSpec{s.name + ".scale", DType::kF32, sshape});
    data.push_back(std::move(sb));
    return idx;
  }

  uint32_t Linear(const std::string& name, fb::Role role) {
    std::vector<uint64_t> shape = ExpectedShape(role, c);
    uint64_t n = 1;
    for (auto d : shape) n *= d;
    const float fan_in = static_cast<float>(shape.back());
    DType dt = o.linear_dtype;
    // F8 only for 2-D linear weights here (stacked 3-D uses bf16 to keep the writer simple).
    if (dt == DType::kF8E4M3 && shape.size() != 2) dt = DType::kBF16;
    return Add(name, dt, shape, Random(n, 1.0f / std::sqrt(fan_in)));
  }
  uint32_t Norm(const std::string& name, fb::Role role) {
    const uint64_t n = ExpectedShape(role, c)[0];
    return Add(name, DType::kF32, {n}, Random(n, 0.05f, 1.0f));
  }
};

}  // namespace

Status WriteTinyModel(const std::string& path, const TinyModelOptions& o) {
  const ModelConfig c = TinyConfig(o);
  Builder b(o, c);
  using R = fb::Role;
  b.w.SetConfig(c);
  b.w.SetProvenance({"test", "tiny", "mixed", "keep"});
  const uint32_t table = b.Add("embed", DType::kBF16, {c.vocab_size, c.hidden_size},
                               b.Random(uint64_t{c.vocab_size} * c.hidden_size, 1.0f));
  b.w.AddNode({fb::Op::Embedding, -1, {}, {0}, {{R::Table, table}}});
  for (uint32_t l = 0; l < c.num_layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    const int32_t L = static_cast<int32_t>(l);
    b.w.AddNode({fb::Op::RMSNorm, L, {0}, {1}, {{R::Norm, b.Norm(p + "input_norm", R::Norm)}}});
    std::vector<std::pair<R, uint32_t>> attn;
    if (o.q_lora) {
      attn.push_back({R::QAProj, b.Linear(p + "q_a", R::QAProj)});
      attn.push_back({R::QANorm, b.Norm(p + "q_a_norm", R::QANorm)});
      attn.push_back({R::QBProj, b.Linear(p + "q_b", R::QBProj)});
    } else {
      attn.push_back({R::QProj, b.Linear(p + "q_proj", R::QProj)});
    }
    attn.push_back({R::KvAProj, b.Linear(p + "kv_a", R::KvAProj)});
    attn.push_back({R::KvANorm, b.Norm(p + "kv_a_norm", R::KvANorm)});
    attn.push_back({R::UkT, b.Linear(p + "uk_t", R::UkT)});
    attn.push_back({R::Uv, b.Linear(p + "uv", R::Uv)});
    attn.push_back({R::OProj, b.Linear(p + "o", R::OProj)});
    b.w.AddNode({fb::Op::MlaAttention, L, {1}, {2}, attn});
    b.w.AddNode({fb::Op::ResidualAdd, L, {2}, {0}, {}});
    b.w.AddNode({fb::Op::RMSNorm, L, {0}, {1}, {{R::Norm, b.Norm(p + "post_norm", R::Norm)}}});
    if (!c.IsMoeLayer(l)) {
      b.w.AddNode({fb::Op::DenseMlp, L, {1}, {2},
                   {{R::Gate, b.Linear(p + "gate", R::Gate)}, {R::Up, b.Linear(p + "up", R::Up)},
                    {R::Down, b.Linear(p + "down", R::Down)}}});
    } else {
      const uint64_t E = c.n_routed_experts;
      std::vector<std::pair<R, uint32_t>> moe;
      moe.push_back({R::Router, b.Add(p + "router", DType::kF32, {E, c.hidden_size},
                                      b.Random(E * c.hidden_size, 1.0f / std::sqrt(float(c.hidden_size))))});
      if (c.topk_method == TopkMethod::kNoauxTc)
        moe.push_back({R::RouterBias, b.Add(p + "router_bias", DType::kF32, {E}, b.Random(E, 0.25f))});
      moe.push_back({R::ExpertsGate, b.Linear(p + "experts_gate", R::ExpertsGate)});
      moe.push_back({R::ExpertsUp, b.Linear(p + "experts_up", R::ExpertsUp)});
      moe.push_back({R::ExpertsDown, b.Linear(p + "experts_down", R::ExpertsDown)});
      moe.push_back({R::SharedGate, b.Linear(p + "shared_gate", R::SharedGate)});
      moe.push_back({R::SharedUp, b.Linear(p + "shared_up", R::SharedUp)});
      moe.push_back({R::SharedDown, b.Linear(p + "shared_down", R::SharedDown)});
      b.w.AddNode({fb::Op::Moe, L, {1}, {2}, moe});
    }
    b.w.AddNode({fb::Op::ResidualAdd, L, {2}, {0}, {}});
  }
  b.w.AddNode({fb::Op::RMSNorm, -1, {0}, {1}, {{R::Norm, b.Norm("final_norm", R::Norm)}}});
  b.w.AddNode({fb::Op::LmHead, -1, {1}, {}, {{R::Head, b.Linear("head", R::Head)}}});
  MOERUN_RETURN_IF_ERROR(b.w.Open(path));
  for (uint32_t i = 0; i < b.data.size(); ++i) MOERUN_RETURN_IF_ERROR(b.w.Append(i, b.data[i].data(), b.data[i].size()));
  return b.w.Finish();
}

namespace {

// Every directory TempDir made in this process, removed with its contents when the process exits
// (each discovered test runs in its own process, so nothing accumulates under /tmp).
class TempDirRegistry {
 public:
  void Add(const std::filesystem::path& p) {
    std::lock_guard<std::mutex> lock(mu_);
    dirs_.insert(p);
  }
  ~TempDirRegistry() {
    std::error_code ec;
    for (const auto& d : dirs_) std::filesystem::remove_all(d, ec);
  }

 private:
  std::mutex mu_;
  std::set<std::filesystem::path> dirs_;
};

}  // namespace

std::string TempDir(const std::string& name) {
  static TempDirRegistry registry;
  const char* base = std::getenv("TEST_TMPDIR");
  std::filesystem::path p = std::filesystem::path(base ? base : "/tmp") /
                            ("moerun_test_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::create_directories(p);
  registry.Add(p);
  return p.string();
}

}  // namespace moerun::testing
