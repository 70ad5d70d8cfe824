// `moerun bench`: prefill and decode speed, judged against a memory-bandwidth probe run in the same
// process. Figures are medians over --repeat runs, with min and max.
#include <omp.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "moerun/moerun.h"
#include "runtime/format/model_file.h"
#include "tools/bandwidth_probe.h"
#include "tools/cli_util.h"

namespace moerun::cli {
namespace {

double Now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

struct Stat {
  double median = 0, min = 0, max = 0;
};

Stat Summarise(std::vector<double> v) {
  Stat s;
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  s.min = v.front();
  s.max = v.back();
  s.median = v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
  return s;
}

// Weight bytes one decode token reads at batch 1: every main-graph weight except the embedding
// table (one row) and the routed experts (num_experts_per_tok of them per MoE layer).
uint64_t ActiveWeightBytes(const ModelFile& f) {
  const ModelConfig& c = f.config();
  uint64_t bytes = 0;
  auto tensor_bytes = [&](uint32_t i) {
    const TensorInfo& t = f.tensors()[i];
    return t.size + (t.scale >= 0 ? f.tensors()[t.scale].size : 0);
  };
  for (const fb::Node* n : *f.graph()->nodes()) {
    if (!n->weights()) continue;
    for (const fb::WeightSlot* w : *n->weights()) {
      const uint64_t b = tensor_bytes(w->tensor());
      switch (w->role()) {
        case fb::Role::Table: bytes += b / c.vocab_size; break;
        case fb::Role::ExpertsGate: case fb::Role::ExpertsUp: case fb::Role::ExpertsDown:
          bytes += b / c.n_routed_experts * c.num_experts_per_tok;
          break;
        default: bytes += b;
      }
    }
  }
  return bytes;
}

long PeakRssKiB() {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss;
}

}  // namespace

int RunBench(int argc, char** argv) {
  Args args;
  std::string err;
  if (!args.Parse(argc, argv, {"--prompt", "--gen", "--threads", "--repeat", "--precision", "--backend", "--probe-mib"},
                  {"--json"}, &err))
    return Fail(err);
  if (args.positional().size() != 1) return Fail("bench: expected exactly one MODEL argument");
  int64_t prompt = 64, gen = 32, threads = 0, repeat = 3, probe_mib = 1024;
  if (!args.GetInt("--prompt", 1, 1 << 20, &prompt, &err) || !args.GetInt("--gen", 1, 1 << 20, &gen, &err) ||
      !args.GetInt("--threads", 0, 1024, &threads, &err) || !args.GetInt("--repeat", 1, 1000, &repeat, &err) ||
      !args.GetInt("--probe-mib", 16, 1 << 16, &probe_mib, &err))
    return Fail(err);
  const std::string precision = args.Get("--precision", "f32");
  if (precision != "f32" && precision != "bf16") return Fail("--precision must be f32 or bf16");
  const std::string backend = args.Get("--backend", "cpu");
  const int nthreads = threads > 0 ? static_cast<int>(threads) : omp_get_max_threads();

  const double bw = ReadBandwidth(nthreads, static_cast<size_t>(probe_mib) << 20);

  auto file = ModelFile::Open(args.positional()[0], VerifyOptions{});
  if (!file.ok()) return Fail(file.status().message());
  const uint64_t active = ActiveWeightBytes(*file.value());
  const uint32_t vocab = file.value()->config().vocab_size;
  file = Status(StatusCode::kCancelled, "released");  // unmap before the timed load

  moerun_model_options mo;
  moerun_model_options_init(&mo);
  mo.backend = backend.c_str();
  mo.precision = precision == "bf16" ? MOERUN_PRECISION_BF16 : MOERUN_PRECISION_F32;
  mo.n_threads = nthreads;
  moerun_model* model = nullptr;
  const double l0 = Now();
  moerun_status st = moerun_model_load(args.positional()[0].c_str(), &mo, &model);
  const double load_s = Now() - l0;
  if (st != MOERUN_OK) return Fail(std::string("loading model: ") + moerun_last_error());

  std::mt19937 rng(1234);
  std::vector<int32_t> ids(static_cast<size_t>(prompt));
  for (auto& id : ids) id = static_cast<int32_t>(rng() % vocab);
  std::vector<double> prefill_tps, decode_tps, ttft;
  for (int64_t r = 0; r < repeat; ++r) {
    moerun_session_options so;
    moerun_session_options_init(&so);
    so.kv_capacity = static_cast<uint32_t>(prompt + gen + 1);
    so.max_batch_tokens = static_cast<uint32_t>(prompt);
    so.n_threads = nthreads;
    moerun_session* s = nullptr;
    if ((st = moerun_session_create(model, &so, &s)) != MOERUN_OK) {
      moerun_model_destroy(model);
      return Fail(std::string("creating session: ") + moerun_last_error());
    }
    moerun_batch b;
    moerun_batch_init(&b);
    b.n_tokens = static_cast<uint32_t>(prompt);
    b.tokens = ids.data();
    const double p0 = Now();
    st = moerun_session_decode(s, &b);
    const double p1 = Now();
    int32_t tok = ids.back();
    const double d0 = Now();
    for (int64_t g = 0; g < gen && st == MOERUN_OK; ++g) {
      const float* logits = nullptr;
      st = moerun_session_get_logits(s, g == 0 ? static_cast<uint32_t>(prompt - 1) : 0, &logits);
      if (st != MOERUN_OK) break;
      tok = static_cast<int32_t>(std::max_element(logits, logits + vocab) - logits);
      moerun_batch one;
      moerun_batch_init(&one);
      one.n_tokens = 1;
      one.tokens = &tok;
      st = moerun_session_decode(s, &one);
    }
    const double d1 = Now();
    moerun_session_destroy(s);
    if (st != MOERUN_OK) {
      moerun_model_destroy(model);
      return Fail(std::string("bench decode: ") + moerun_last_error());
    }
    prefill_tps.push_back(prompt / (p1 - p0));
    decode_tps.push_back(gen / (d1 - d0));
    ttft.push_back(p1 - p0);
  }
  moerun_model_destroy(model);
  const Stat pf = Summarise(prefill_tps), dc = Summarise(decode_tps);
  const double achieved = dc.median * static_cast<double>(active);
  const double rss_mib = PeakRssKiB() / 1024.0;
  if (args.Has("--json")) {
    std::printf(
        "{\"backend\": \"%s\", \"precision\": \"%s\", \"threads\": %d, \"prompt_tokens\": %lld, \"gen_tokens\": %lld, "
        "\"repeat\": %lld, \"load_s\": %.4f, "
        "\"prefill_tokens_per_s\": {\"median\": %.3f, \"min\": %.3f, \"max\": %.3f}, "
        "\"decode_tokens_per_s\": {\"median\": %.3f, \"min\": %.3f, \"max\": %.3f}, "
        "\"decode_ms_per_token\": %.3f, \"active_weight_bytes_per_token\": %llu, \"decode_weight_gb_per_s\": %.3f, "
        "\"bandwidth_probe_gb_per_s\": %.3f, \"fraction_of_probe\": %.4f, \"peak_rss_mib\": %.1f}\n",
        backend.c_str(), precision.c_str(), nthreads, static_cast<long long>(prompt), static_cast<long long>(gen),
        static_cast<long long>(repeat), load_s, pf.median, pf.min, pf.max, dc.median, dc.min, dc.max,
        1e3 / dc.median, static_cast<unsigned long long>(active), achieved / 1e9, bw / 1e9, achieved / bw, rss_mib);
  } else {
    std::printf("backend %s, precision %s, %d threads, %lld runs (median [min, max])\n", backend.c_str(),
                precision.c_str(), nthreads, static_cast<long long>(repeat));
    std::printf("load           %.3f s\n", load_s);
    std::printf("prefill %4lld   %.2f tokens/s [%.2f, %.2f]\n", static_cast<long long>(prompt), pf.median, pf.min,
                pf.max);
    std::printf("decode  %4lld   %.2f tokens/s [%.2f, %.2f], %.2f ms/token\n", static_cast<long long>(gen), dc.median,
                dc.min, dc.max, 1e3 / dc.median);
    std::printf("weights        %.1f MiB active per decode token -> %.2f GB/s = %.1f%% of the %.2f GB/s probe\n",
                active / 1048576.0, achieved / 1e9, 100.0 * achieved / bw, bw / 1e9);
    std::printf("peak RSS       %.1f MiB\n", rss_mib);
  }
  return 0;
}

}  // namespace moerun::cli
