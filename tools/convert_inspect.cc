// `moerun convert` and `moerun inspect`.
#include <unistd.h>

#include <cstdio>
#include <string>

#include "converters/converter.h"
#include "runtime/format/model_file.h"
#include "tools/cli_util.h"

namespace moerun::cli {
namespace {

const char* ScoringName(ScoringFunc s) { return s == ScoringFunc::kSoftmax ? "softmax" : "sigmoid"; }
const char* TopkName(TopkMethod t) {
  switch (t) {
    case TopkMethod::kGreedy: return "greedy";
    case TopkMethod::kGroupLimitedGreedy: return "group_limited_greedy";
    case TopkMethod::kNoauxTc: return "noaux_tc";
  }
  return "?";
}

}  // namespace

int RunConvert(int argc, char** argv) {
  Args args;
  std::string err;
  if (!args.Parse(argc, argv, {"-o", "--output", "--weights"}, {"--no-progress"}, &err)) return Fail(err);
  if (args.positional().size() != 1) return Fail("convert: expected exactly one HF_DIR argument");
  const std::string out = args.Has("-o") ? args.Get("-o") : args.Get("--output");
  if (out.empty()) return Fail("convert: missing -o MODEL.moerun");
  convert::ConvertOptions opt;
  auto mode = convert::ParseWeightsMode(args.Get("--weights", "keep"));
  if (!mode.ok()) return Fail(mode.status().message());
  opt.weights = mode.value();
  opt.progress = !args.Has("--no-progress") && isatty(2);
  Status st = convert::ConvertHfCheckpoint(args.positional()[0], out, opt);
  if (!st.ok()) return Fail("convert: " + st.message());
  std::fprintf(stderr, "moerun: wrote %s\n", out.c_str());
  return 0;
}

int RunInspect(int argc, char** argv) {
  Args args;
  std::string err;
  if (!args.Parse(argc, argv, {}, {"--json", "--verify"}, &err)) return Fail(err);
  if (args.positional().size() != 1) return Fail("inspect: expected exactly one MODEL argument");
  VerifyOptions vo;
  vo.check_weight_checksums = args.Has("--verify");
  auto file = ModelFile::Open(args.positional()[0], vo);
  if (!file.ok()) return Fail(file.status().message());
  const ModelFile& f = *file.value();
  const ModelConfig& c = f.config();
  const uint64_t kv_per_token = static_cast<uint64_t>(c.num_layers) * c.kv_cache_width() * sizeof(float);
  const fb::Provenance* prov = f.graph()->provenance();
  auto pstr = [](const flatbuffers::String* s) { return s ? s->str() : std::string(); };
  if (args.Has("--json")) {
    std::printf("{\"format_version\": %u, \"file_bytes\": %llu, \"weight_bytes\": %llu, ", f.format_version(),
                static_cast<unsigned long long>(f.file_size()), static_cast<unsigned long long>(f.weights_size()));
    std::printf("\"kv_cache_bytes_per_token\": %llu, ", static_cast<unsigned long long>(kv_per_token));
    if (prov)
      std::printf("\"provenance\": {\"converter_version\": \"%s\", \"source\": \"%s\", \"weights_mode\": \"%s\"}, ",
                  JsonEscape(pstr(prov->converter_version())).c_str(), JsonEscape(pstr(prov->source())).c_str(),
                  JsonEscape(pstr(prov->weights_mode())).c_str());
    std::printf(
        "\"config\": {\"architecture\": \"%s\", \"vocab_size\": %u, \"hidden_size\": %u, \"intermediate_size\": %u, "
        "\"moe_intermediate_size\": %u, \"num_layers\": %u, \"num_heads\": %u, \"q_lora_rank\": %u, "
        "\"kv_lora_rank\": %u, \"qk_nope_head_dim\": %u, \"qk_rope_head_dim\": %u, \"v_head_dim\": %u, "
        "\"n_routed_experts\": %u, \"n_shared_experts\": %u, \"num_experts_per_tok\": %u, \"n_group\": %u, "
        "\"topk_group\": %u, \"routed_scaling_factor\": %g, \"norm_topk_prob\": %s, \"first_k_dense_replace\": %u, "
        "\"scoring_func\": \"%s\", \"topk_method\": \"%s\", \"rms_norm_eps\": %g, \"rope_theta\": %g, "
        "\"rope_scaling\": \"%s\", \"rope_factor\": %g, \"max_position_embeddings\": %u, \"bos_token_id\": %d, "
        "\"eos_token_id\": %d, \"num_nextn_predict_layers\": %u, \"softmax_scale\": %.9g}, ",
        ArchitectureName(c.architecture), c.vocab_size, c.hidden_size, c.intermediate_size, c.moe_intermediate_size,
        c.num_layers, c.num_heads, c.q_lora_rank, c.kv_lora_rank, c.qk_nope_head_dim, c.qk_rope_head_dim,
        c.v_head_dim, c.n_routed_experts, c.n_shared_experts, c.num_experts_per_tok, c.n_group, c.topk_group,
        c.routed_scaling_factor, c.norm_topk_prob ? "true" : "false", c.first_k_dense_replace,
        ScoringName(c.scoring_func), TopkName(c.topk_method), c.rms_norm_eps, c.rope.theta,
        c.rope.scaling == RopeScaling::kYarn ? "yarn" : "none", c.rope.factor, c.max_position_embeddings,
        c.bos_token_id, c.eos_token_id, c.num_nextn_predict_layers, c.SoftmaxScale());
    std::printf("\"tensors\": [");
    for (size_t i = 0; i < f.tensors().size(); ++i) {
      const TensorInfo& t = f.tensors()[i];
      std::printf("%s{\"name\": \"%s\", \"dtype\": \"%s\", \"shape\": %s, \"bytes\": %llu%s}", i ? ", " : "",
                  JsonEscape(t.name).c_str(), DTypeName(t.dtype), ShapeString(t.shape).c_str(),
                  static_cast<unsigned long long>(t.size),
                  t.scale >= 0 ? (", \"scale\": \"" + JsonEscape(f.tensors()[t.scale].name) + "\"").c_str() : "");
    }
    std::printf("]}\n");
    return 0;
  }
  std::printf("moerun file   %s (format %u, %.1f MiB, weights %.1f MiB)\n", args.positional()[0].c_str(),
              f.format_version(), f.file_size() / 1048576.0, f.weights_size() / 1048576.0);
  if (prov)
    std::printf("provenance    %s, converter %s, weights %s\n", pstr(prov->source()).c_str(),
                pstr(prov->converter_version()).c_str(), pstr(prov->weights_mode()).c_str());
  std::printf("architecture  %s  vocab %u  hidden %u  layers %u (first %u dense)  heads %u\n",
              ArchitectureName(c.architecture), c.vocab_size, c.hidden_size, c.num_layers, c.first_k_dense_replace,
              c.num_heads);
  std::printf("attention     MLA q_lora_rank %u kv_lora_rank %u nope %u rope %u v %u  softmax scale %.7f\n",
              c.q_lora_rank, c.kv_lora_rank, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim, c.SoftmaxScale());
  std::printf("rope          theta %g  %s factor %g original %u  max positions %u\n", c.rope.theta,
              c.rope.scaling == RopeScaling::kYarn ? "yarn" : "none", c.rope.factor,
              c.rope.original_max_position_embeddings, c.max_position_embeddings);
  std::printf("moe           %u routed + %u shared experts, top-%u, %s/%s, groups %u keep %u, scale %g, renorm %s\n",
              c.n_routed_experts, c.n_shared_experts, c.num_experts_per_tok, ScoringName(c.scoring_func),
              TopkName(c.topk_method), c.n_group, c.topk_group, c.routed_scaling_factor,
              c.norm_topk_prob ? "yes" : "no");
  std::printf("kv cache      %llu bytes per token (f32 latent %u + rope key %u, %u layers; half that in bf16 where "
              "bf16 attention runs on AMX-BF16 or AVX2)\n",
              static_cast<unsigned long long>(kv_per_token), c.kv_lora_rank, c.qk_rope_head_dim, c.num_layers);
  std::printf("mtp           %s\n", f.graph()->mtp_nodes() && f.graph()->mtp_nodes()->size() ? "stored (not run)" : "none");
  std::printf("\n%-48s %-8s %-22s %12s\n", "tensor", "dtype", "shape", "bytes");
  for (const TensorInfo& t : f.tensors())
    std::printf("%-48s %-8s %-22s %12llu\n", t.name.c_str(), DTypeName(t.dtype), ShapeString(t.shape).c_str(),
                static_cast<unsigned long long>(t.size));
  return 0;
}

}  // namespace moerun::cli
