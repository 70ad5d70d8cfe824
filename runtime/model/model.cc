#include "runtime/model/model.h"

#include <map>
#include <set>

#include "runtime/format/page_sizes.h"
#include "runtime/model/graph_contract.h"

namespace moerun {
namespace {

const char* RoleName(fb::Role r) { return fb::EnumNameRole(r); }
const char* OpName(fb::Op o) { return fb::EnumNameOp(o); }

// Resolves the weight slots of one node, checking presence, shape and dtype of each role.
class NodeResolver {
 public:
  NodeResolver(const ModelFile& file, const fb::Node& node, std::string label)
      : file_(file), node_(node), label_(std::move(label)) {}

  Status Init(const std::set<fb::Role>& required, const std::set<fb::Role>& optional) {
    if (node_.weights()) {
      for (const fb::WeightSlot* w : *node_.weights()) {
        if (!required.count(w->role()) && !optional.count(w->role()))
          return CorruptFile(label_ + ": unexpected weight role " + RoleName(w->role()));
        if (!slots_.emplace(w->role(), w->tensor()).second)
          return CorruptFile(label_ + ": weight role " + RoleName(w->role()) + " appears twice");
      }
    }
    for (fb::Role r : required)
      if (!slots_.count(r)) return CorruptFile(label_ + ": missing weight role " + RoleName(r));
    return Status::Ok();
  }

  bool Has(fb::Role r) const { return slots_.count(r) != 0; }

  Result<const TensorInfo*> Tensor(fb::Role role, const ModelConfig& config) const {
    const TensorInfo& t = file_.tensors()[slots_.at(role)];
    const std::vector<uint64_t> want = ExpectedShape(role, config);
    const std::string what = label_ + ": " + RoleName(role) + " tensor '" + t.name + "'";
    if (t.shape != want)
      return CorruptFile(what + " has shape " + ShapeString(t.shape) + ", expected " + ShapeString(want));
    if (IsF32Role(role) && t.dtype != DType::kF32) return CorruptFile(what + " must be f32, is " + DTypeName(t.dtype));
    if (role == fb::Role::Table && (t.dtype == DType::kF8E4M3 || t.dtype == DType::kQ8Panel))
      return CorruptFile(what + ": " + DTypeName(t.dtype) + " embedding tables are not supported");
    return &t;
  }

  Result<const float*> F32(fb::Role role, const ModelConfig& config) const {
    MOERUN_ASSIGN_OR_RETURN(const TensorInfo* t, Tensor(role, config));
    return reinterpret_cast<const float*>(t->data);
  }

  Result<WeightView> View(fb::Role role, const ModelConfig& config) const {
    MOERUN_ASSIGN_OR_RETURN(const TensorInfo* t, Tensor(role, config));
    return ViewOf(*t);
  }

  Result<StackedWeight> Stacked(fb::Role role, const ModelConfig& config) const {
    MOERUN_ASSIGN_OR_RETURN(const TensorInfo* t, Tensor(role, config));
    StackedWeight s;
    s.first = ViewOf(*t);
    s.count = static_cast<int64_t>(t->shape[0]);
    s.stride_bytes = t->size / t->shape[0];
    if (t->scale >= 0) {
      const TensorInfo& sc = file_.tensors()[t->scale];
      s.scale_stride = static_cast<int64_t>(sc.numel / sc.shape[0]);
    }
    return s;
  }

 private:
  WeightView ViewOf(const TensorInfo& t) const {
    WeightView w;
    w.dtype = t.dtype;
    w.data = t.data;
    w.rows = static_cast<int64_t>(t.shape.size() >= 2 ? t.shape[t.shape.size() - 2] : 1);
    w.cols = static_cast<int64_t>(t.shape.back());
    if (t.scale >= 0) {
      const TensorInfo& sc = file_.tensors()[t.scale];
      w.scale = reinterpret_cast<const float*>(sc.data);
      // q8_panel: groups per row ([..., panels, groups, 16]); f8_e4m3: the grid's row stride.
      w.scale_cols = static_cast<int64_t>(sc.shape[sc.shape.size() - (t.dtype == DType::kQ8Panel ? 2 : 1)]);
      w.block_rows = static_cast<int32_t>(t.block_rows);
      w.block_cols = static_cast<int32_t>(t.block_cols);
    }
    return w;
  }

  const ModelFile& file_;
  const fb::Node& node_;
  std::string label_;
  std::map<fb::Role, uint32_t> slots_;
};

void AddStacked(std::vector<WeightView>* out, const StackedWeight& s) {
  for (int64_t i = 0; i < s.count; ++i) out->push_back(s.At(i));
}

}  // namespace

uint64_t Model::kv_bytes_per_token() const {
  // The session's cache holds bf16 rows when the backend reads them so (Backend::Bf16LatentCache).
  const uint64_t bytes = backend().Bf16LatentCache() ? 2 : 4;
  return static_cast<uint64_t>(config().num_layers) * config().kv_cache_width() * bytes;
}

void Model::NotePageSizes() const { NoteFilePages(*file_, &pages_noted_, kNotedFileBytes); }

Result<std::shared_ptr<Model>> Model::Create(std::shared_ptr<ModelFile> file, const std::string& backend,
                                             Precision precision, int n_threads) {
  std::shared_ptr<Model> m(new (std::nothrow) Model());
  if (!m) return OutOfMemory("allocating the model");
  m->file_ = std::move(file);
  m->n_threads_ = n_threads;
  MOERUN_ASSIGN_OR_RETURN(m->backend_, CreateBackend(backend, precision));
  const ModelConfig& c = m->config();
  m->rope_inv_freq_ = c.RopeInverseFrequencies();
  m->softmax_scale_ = c.SoftmaxScale();
  m->rope_attention_factor_ = c.RopeAttentionFactor();
  MOERUN_RETURN_IF_ERROR(m->Build(false));
  MOERUN_RETURN_IF_ERROR(m->Build(true));
  MOERUN_RETURN_IF_ERROR(m->backend_->PrepareWeights(m->linear_weights_));
  return m;
}

Status Model::Build(bool mtp) {
  const ModelConfig& c = config();
  const auto* list = mtp ? file_->graph()->mtp_nodes() : file_->graph()->nodes();
  std::vector<GraphNode>& out = mtp ? mtp_nodes_ : nodes_;
  if (mtp) has_mtp_ = list && list->size() > 0;
  if (!list) return Status::Ok();
  using R = fb::Role;
  std::set<int32_t> attention_layers;
  const int32_t max_layer = static_cast<int32_t>(c.num_layers) + (mtp ? 1 : 0);
  for (flatbuffers::uoffset_t i = 0; i < list->size(); ++i) {
    const fb::Node& fn = *list->Get(i);
    const std::string label = std::string(mtp ? "mtp" : "graph") + " node #" + std::to_string(i) + " (" +
                              OpName(fn.op()) + ", layer " + std::to_string(fn.layer()) + ")";
    GraphNode g;
    g.op = fn.op();
    g.layer = fn.layer();
    const size_t n_in = fn.inputs() ? fn.inputs()->size() : 0;
    const size_t n_out = fn.outputs() ? fn.outputs()->size() : 0;
    size_t want_in = 1, want_out = 1;
    if (g.op == fb::Op::Embedding) want_in = 0;
    if (g.op == fb::Op::LmHead) want_out = 0;
    if (n_in != want_in || n_out != want_out)
      return CorruptFile(label + ": expected " + std::to_string(want_in) + " input(s) and " + std::to_string(want_out) +
                         " output(s)");
    if (n_in) g.in = fn.inputs()->Get(0);
    if (n_out) g.out = fn.outputs()->Get(0);
    const bool layered = g.op == fb::Op::MlaAttention || g.op == fb::Op::DenseMlp || g.op == fb::Op::Moe;
    if (layered && (g.layer < 0 || g.layer >= max_layer)) return CorruptFile(label + ": layer out of range");
    if (layered && g.in == g.out) return CorruptFile(label + ": input and output buffer must differ");
    if (g.op == fb::Op::ResidualAdd && g.in == g.out) return CorruptFile(label + ": adds a buffer to itself");

    NodeResolver r(*file_, fn, label);
    switch (g.op) {
      case fb::Op::Embedding: {
        MOERUN_RETURN_IF_ERROR(r.Init({R::Table}, {}));
        MOERUN_ASSIGN_OR_RETURN(const TensorInfo* t, r.Tensor(R::Table, c));
        g.table = {t->dtype, t->data, static_cast<int64_t>(t->shape[0]), static_cast<int64_t>(t->shape[1])};
        break;
      }
      case fb::Op::RMSNorm: {
        MOERUN_RETURN_IF_ERROR(r.Init({R::Norm}, {}));
        MOERUN_ASSIGN_OR_RETURN(g.norm, r.F32(R::Norm, c));
        break;
      }
      case fb::Op::ResidualAdd:
        MOERUN_RETURN_IF_ERROR(r.Init({}, {}));
        break;
      case fb::Op::LmHead: {
        MOERUN_RETURN_IF_ERROR(r.Init({R::Head}, {}));
        MOERUN_ASSIGN_OR_RETURN(g.head, r.View(R::Head, c));
        linear_weights_.push_back(g.head);
        break;
      }
      case fb::Op::MtpProject:
        // Stored for a later release; checked now so a file that loads today stays loadable.
        MOERUN_RETURN_IF_ERROR(r.Init({R::Table, R::ENorm, R::HNorm, R::EhProj}, {}));
        for (R role : {R::Table, R::ENorm, R::HNorm, R::EhProj}) MOERUN_RETURN_IF_ERROR(r.Tensor(role, c).status());
        break;
      case fb::Op::MlaAttention: {
        if (!attention_layers.insert(g.layer).second) return CorruptFile(label + ": second attention node for layer");
        MlaWeights w;
        w.q_lora = c.q_lora_rank > 0;
        if (w.q_lora) {
          MOERUN_RETURN_IF_ERROR(r.Init({R::QAProj, R::QANorm, R::QBProj, R::KvAProj, R::KvANorm, R::UkT, R::Uv, R::OProj}, {}));
          MOERUN_ASSIGN_OR_RETURN(w.q_a, r.View(R::QAProj, c));
          MOERUN_ASSIGN_OR_RETURN(w.q_a_norm, r.F32(R::QANorm, c));
          MOERUN_ASSIGN_OR_RETURN(w.q_b, r.View(R::QBProj, c));
          linear_weights_.push_back(w.q_a);
          linear_weights_.push_back(w.q_b);
        } else {
          MOERUN_RETURN_IF_ERROR(r.Init({R::QProj, R::KvAProj, R::KvANorm, R::UkT, R::Uv, R::OProj}, {}));
          MOERUN_ASSIGN_OR_RETURN(w.q_proj, r.View(R::QProj, c));
          linear_weights_.push_back(w.q_proj);
        }
        MOERUN_ASSIGN_OR_RETURN(w.kv_a, r.View(R::KvAProj, c));
        MOERUN_ASSIGN_OR_RETURN(w.kv_a_norm, r.F32(R::KvANorm, c));
        MOERUN_ASSIGN_OR_RETURN(w.uk_t, r.Stacked(R::UkT, c));
        MOERUN_ASSIGN_OR_RETURN(w.uv, r.Stacked(R::Uv, c));
        MOERUN_ASSIGN_OR_RETURN(w.o, r.View(R::OProj, c));
        linear_weights_.push_back(w.kv_a);
        AddStacked(&linear_weights_, w.uk_t);
        AddStacked(&linear_weights_, w.uv);
        linear_weights_.push_back(w.o);
        mla_.push_back(w);
        g.mla = &mla_.back();
        break;
      }
      case fb::Op::DenseMlp: {
        MOERUN_RETURN_IF_ERROR(r.Init({R::Gate, R::Up, R::Down}, {}));
        MlpWeights w;
        MOERUN_ASSIGN_OR_RETURN(w.gate, r.View(R::Gate, c));
        MOERUN_ASSIGN_OR_RETURN(w.up, r.View(R::Up, c));
        MOERUN_ASSIGN_OR_RETURN(w.down, r.View(R::Down, c));
        for (const WeightView& v : {w.gate, w.up, w.down}) linear_weights_.push_back(v);
        mlp_.push_back(w);
        g.mlp = &mlp_.back();
        break;
      }
      case fb::Op::Moe: {
        if (c.n_routed_experts == 0 || c.moe_intermediate_size == 0) return CorruptFile(label + ": config has no experts");
        std::set<R> required = {R::Router, R::ExpertsGate, R::ExpertsUp, R::ExpertsDown};
        if (c.topk_method == TopkMethod::kNoauxTc) required.insert(R::RouterBias);
        if (c.n_shared_experts > 0) required.insert({R::SharedGate, R::SharedUp, R::SharedDown});
        MOERUN_RETURN_IF_ERROR(r.Init(required, {}));
        MoeWeights w;
        MOERUN_ASSIGN_OR_RETURN(w.router, r.F32(R::Router, c));
        MOERUN_ASSIGN_OR_RETURN(w.router_view, r.View(R::Router, c));
        if (r.Has(R::RouterBias)) {
          MOERUN_ASSIGN_OR_RETURN(w.bias, r.F32(R::RouterBias, c));
        }
        MOERUN_ASSIGN_OR_RETURN(w.gate, r.Stacked(R::ExpertsGate, c));
        MOERUN_ASSIGN_OR_RETURN(w.up, r.Stacked(R::ExpertsUp, c));
        MOERUN_ASSIGN_OR_RETURN(w.down, r.Stacked(R::ExpertsDown, c));
        AddStacked(&linear_weights_, w.gate);
        AddStacked(&linear_weights_, w.up);
        AddStacked(&linear_weights_, w.down);
        if (c.n_shared_experts > 0) {
          w.has_shared = true;
          MOERUN_ASSIGN_OR_RETURN(w.shared.gate, r.View(R::SharedGate, c));
          MOERUN_ASSIGN_OR_RETURN(w.shared.up, r.View(R::SharedUp, c));
          MOERUN_ASSIGN_OR_RETURN(w.shared.down, r.View(R::SharedDown, c));
          for (const WeightView& v : {w.shared.gate, w.shared.up, w.shared.down}) linear_weights_.push_back(v);
        }
        moe_.push_back(w);
        g.moe = &moe_.back();
        break;
      }
    }
    out.push_back(g);
  }
  if (mtp) return Status::Ok();
  if (out.empty() || out.front().op != fb::Op::Embedding || out.front().out != 0)
    return CorruptFile("graph: the first node must be an Embedding writing buffer 0");
  if (out.back().op != fb::Op::LmHead) return CorruptFile("graph: the last node must be the LmHead");
  for (size_t i = 0; i + 1 < out.size(); ++i)
    if (out[i].op == fb::Op::LmHead || (i > 0 && out[i].op == fb::Op::Embedding) || out[i].op == fb::Op::MtpProject)
      return CorruptFile("graph node #" + std::to_string(i) + ": " + OpName(out[i].op) + " is only allowed once, at its end");
  if (attention_layers.size() != c.num_layers)
    return CorruptFile("graph: " + std::to_string(attention_layers.size()) + " attention layers, config says " +
                       std::to_string(c.num_layers));
  return Status::Ok();
}

}  // namespace moerun
