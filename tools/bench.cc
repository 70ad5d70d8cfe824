// `moerun bench`: prefill and decode speed judged against floors measured in the same process: a
// memory read-bandwidth probe for decode (every decode token streams its active weights and its KV
// cache) and a GEMM probe for prefill, each also taken right before and after every run, as this
// host's speed drifts. Figures are medians over --repeat runs, with min and max.
#include <omp.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "backends/backend.h"
#include "moerun/moerun.h"
#include "runtime/format/model_file.h"
#include "runtime/format/page_sizes.h"
#include "tools/bandwidth_probe.h"
#include "tools/gemm_probe.h"
#include "tools/page_cache.h"
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

std::string Json(const Stat& s) {
  char buf[160];
  std::snprintf(buf, sizeof(buf), "{\"median\": %.4g, \"min\": %.4g, \"max\": %.4g}", s.median, s.min, s.max);
  return buf;
}

// A figure that was not measured (no runs gave one) is null.
std::string JsonOrNull(const Stat& s) { return s.median > 0 ? Json(s) : "null"; }

// The line under a decode figure for its steps between read passes (Bench::Interleaved), if any.
std::string InterleavedText(const Stat& s) {
  if (!(s.median > 0)) return "";
  char buf[256];
  std::snprintf(buf, sizeof(buf),
                "    each step between two read passes: %.1f%% [%.1f, %.1f] of the faster of the two (median over "
                "the steps of a run; medians of the runs)\n",
                100.0 * s.median, 100.0 * s.min, 100.0 * s.max);
  return buf;
}

// What one decode token touches at batch 1: every main-graph weight except the embedding table (one
// row) and the routed experts (num_experts_per_tok of them per MoE layer). Parameters count toward the
// matmul FLOPs; the embedding row does not. A prefill runs the LM head on its last row only (the
// rows that want logits), so its matmul work is body_params per token plus head_params once.
struct ActiveWork {
  uint64_t weight_bytes = 0;
  // One routed expert's bytes (gate, up, down and their scales) per layer: a decode step at batch > 1
  // reads every distinct expert its tokens chose once, counted from the session's expert counts.
  std::vector<uint64_t> expert_bytes;  // [num_layers]
  uint32_t experts_per_token = 0;      // of them in weight_bytes, per MoE layer
  uint64_t matmul_params = 0;  // all of them: body + head
  uint64_t head_params = 0;
  double PrefillMatmulOps(int64_t tokens) const {
    return 2.0 * (static_cast<double>(matmul_params - head_params) * static_cast<double>(tokens) +
                  static_cast<double>(head_params));
  }
  bool q8_weights = false;  // the routed experts are q8_panel (the int8 path at bf16 precision)
};

ActiveWork Active(const ModelFile& f) {
  const ModelConfig& c = f.config();
  ActiveWork a;
  a.expert_bytes.assign(c.num_layers, 0);
  a.experts_per_token = c.num_experts_per_tok;
  for (const fb::Node* n : *f.graph()->nodes()) {
    if (!n->weights()) continue;
    for (const fb::WeightSlot* w : *n->weights()) {
      const TensorInfo& t = f.tensors()[w->tensor()];
      const uint64_t bytes = t.size + (t.scale >= 0 ? f.tensors()[t.scale].size : 0);
      switch (w->role()) {
        case fb::Role::Table:
          a.weight_bytes += bytes / c.vocab_size;
          break;
        case fb::Role::ExpertsGate: case fb::Role::ExpertsUp: case fb::Role::ExpertsDown:
          a.q8_weights = a.q8_weights || t.dtype == DType::kQ8Panel;
          a.weight_bytes += bytes / c.n_routed_experts * c.num_experts_per_tok;
          if (n->layer() >= 0 && n->layer() < static_cast<int32_t>(c.num_layers))
            a.expert_bytes[n->layer()] += bytes / c.n_routed_experts;
          a.matmul_params += t.numel / c.n_routed_experts * c.num_experts_per_tok;
          break;
        case fb::Role::Head:
          a.head_params += t.numel;
          a.weight_bytes += bytes;
          a.matmul_params += t.numel;
          break;
        default:
          a.weight_bytes += bytes;
          a.matmul_params += t.numel;
      }
    }
  }
  return a;
}

// Seconds to read the whole file once with read() (from the page cache after the first pass).
double FileReadSeconds(const std::string& path) {
  std::vector<char> buf(16 << 20);
  double best = 1e30;
  for (int pass = 0; pass < 3; ++pass) {
    std::ifstream f(path, std::ios::binary);
    const double t0 = Now();
    while (f.read(buf.data(), static_cast<std::streamsize>(buf.size())) || f.gcount() > 0) {
    }
    best = std::min(best, Now() - t0);
  }
  return best;
}

long PeakRssKiB() {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss;
}

// Peak RSS of the model's runs without the bandwidth probes' buffers (a probe reads --probe-mib of
// its own memory, which would otherwise count on top of the model when it runs between decodes):
// the high-water mark is folded in before each probe and reset to the current RSS after it
// (/proc/self/clear_refs, Linux 4.0+). Where it cannot be reset, no probe runs while a model is
// loaded and the peak is getrusage's.
class RssWatch {
 public:
  RssWatch() : resettable_(Reset()) {}
  bool resettable() const { return resettable_; }
  void Fold() { max_kib_ = std::max(max_kib_, HighWaterKiB()); }
  bool Reset() {
    std::ofstream f("/proc/self/clear_refs");
    f << "5";
    f.flush();
    return static_cast<bool>(f);
  }
  long PeakKiB() {
    Fold();
    return resettable_ && max_kib_ > 0 ? max_kib_ : PeakRssKiB();
  }

 private:
  static long HighWaterKiB() {
    std::ifstream f("/proc/self/status");
    std::string line;
    while (std::getline(f, line))
      if (line.rfind("VmHWM:", 0) == 0) return std::strtol(line.c_str() + 6, nullptr, 10);
    return 0;
  }
  bool resettable_;
  long max_kib_ = 0;
};

struct Options {
  std::string path;
  int64_t prompt = 64, gen = 32, repeat = 5, probe_mib = 1024, context = 0;
  std::vector<int> threads = {1, 2};
  std::vector<int> batches = {1};
  moerun_precision precision = MOERUN_PRECISION_AUTO;
  std::string backend = "cpu";
  bool json = false;
};

class Bench {
 public:
  explicit Bench(const Options& o) : o_(o) {}
  // Peak RSS over the runs, the probes' buffers left out (RssWatch).
  long PeakRssKiB() { return rss_.PeakKiB(); }
  ~Bench() { moerun_model_destroy(model_); }
  // The precision the runs used (what --precision auto resolved to), once Run has loaded the model.
  moerun_precision precision() const { return precision_; }
  // The session's KV cache bytes per token (model info), once Run has loaded the model.
  uint64_t kv_bytes_per_token() const { return kv_bytes_per_token_; }

  // One thread count: load, probes, then prefill/decode runs. Appends a JSON object to out.
  bool Run(int threads, const ActiveWork& work, uint32_t vocab, std::string* out, std::string* text,
           std::string* err) {
    // The previous run's model goes first, so that its mapped pages and the probes' buffers never
    // count together in the peak RSS.
    moerun_model_destroy(model_);
    model_ = nullptr;
    double bw_median = 0.0;  // the probe's median pass, reported beside its best
    const double bw = Bandwidth(threads, false, &bw_median);
    // Prefill is judged against the GEMM that its matmuls are: int8 for q8_panel weights at bf16
    // precision, bf16 otherwise (the f32 path has no faster floor than that either).
    const double peak_bf16 = GemmPeakBf16(threads), peak_int8 = GemmPeakInt8(threads);
    rss_.Fold();
    rss_.Reset();  // the GEMM probes' buffers too
    moerun_model_options mo;
    moerun_model_options_init(&mo);
    mo.backend = o_.backend.c_str();
    mo.precision = o_.precision;
    mo.n_threads = threads;
    const double l0 = Now();
    if (moerun_model_load(o_.path.c_str(), &mo, &model_) != MOERUN_OK) return Fail(err, "loading model");
    const double load_s = Now() - l0;
    moerun_model_info info;
    moerun_model_info_init(&info);
    if (moerun_model_get_info(model_, &info) != MOERUN_OK) return Fail(err, "model info");
    precision_ = info.precision;  // what auto resolved to
    kv_bytes_per_token_ = info.kv_bytes_per_token;  // bf16 rows where the backend keeps them so
    n_expert_counts_ = size_t{info.num_layers} * info.n_routed_experts;
    const bool int8_path = work.q8_weights && precision_ == MOERUN_PRECISION_BF16;
    const double peak = int8_path ? peak_int8 : peak_bf16;

    std::mt19937 rng(1234);
    std::vector<int32_t> ids(static_cast<size_t>(std::max({o_.prompt, o_.context, int64_t{16}}) + o_.gen));
    for (auto& id : ids) id = static_cast<int32_t>(rng() % vocab);

    // Time to first token: the model is loaded; one short prompt gives the first logits.
    double ttft = 0.0;
    {
      moerun_session* s = NewSession(threads, 8, 1);
      if (!s) return Fail(err, "creating session");
      const double t0 = Now();
      const bool ok = Decode(s, ids.data(), 1, nullptr);
      ttft = load_s + (Now() - t0);
      moerun_session_destroy(s);
      if (!ok) return Fail(err, "first token");
    }

    std::vector<double> prefill_tps, prefill_fraction, prefill_bytes, prefill_roofline;
    std::vector<std::vector<double>> decode_tps(o_.batches.size());
    std::vector<std::vector<double>> decode_bytes(o_.batches.size());  // weight bytes per step, per repeat
    // Weight bytes per second over the faster of the read probes taken right before and after.
    std::vector<std::vector<double>> decode_adjacent(o_.batches.size());
    std::vector<double> decode_interleaved;  // batch 1, per repeat (Interleaved)
    for (int64_t r = 0; r < o_.repeat; ++r) {
      const int max_batch = *std::max_element(o_.batches.begin(), o_.batches.end());
      // Room for the prefill, or for every sequence's short decode prompt and its generated tokens.
      const int64_t per_sequence = std::max(o_.prompt, int64_t{kDecodePrompt} + o_.gen);
      moerun_session* s = NewSession(threads, static_cast<uint32_t>(max_batch * per_sequence), max_batch);
      if (!s) return Fail(err, "creating session");
      // This host's speed drifts over minutes, so each prefill is judged against GEMM probes taken
      // right before and right after it, the faster of the two (the once-per-run probe above is
      // reported too).
      auto probe_now = [&] { return int8_path ? GemmPeakInt8(threads) : GemmPeakBf16(threads); };
      const double probe_before = probe_now();
      bool ok = ExpertCounts(s, &counts_before_);
      const double p0 = Now();
      ok = ok && Decode(s, ids.data(), static_cast<uint32_t>(o_.prompt), nullptr);
      const double prefill_s = Now() - p0;
      ok = ok && ExpertCounts(s, &counts_after_);
      const double probe = std::max(probe_before, probe_now());
      prefill_tps.push_back(o_.prompt / prefill_s);
      if (probe > 0) prefill_fraction.push_back(work.PrefillMatmulOps(o_.prompt) / prefill_s / probe);
      // The prefill's roofline: its matmul work at the GEMM probe or its weights (every distinct
      // routed expert it ran, once) at the read probe, whichever takes longer. A prompt of a few
      // hundred tokens runs nearly every expert on few rows each, so both roofs are close.
      const double bytes = StepBytes(work, counts_before_, counts_after_);
      prefill_bytes.push_back(bytes);
      if (probe > 0 && bw > 0)
        prefill_roofline.push_back(std::max(work.PrefillMatmulOps(o_.prompt) / probe, bytes / bw) / prefill_s);
      double bw_before = ok ? Bandwidth(threads, true) : 0.0;
      for (size_t bi = 0; ok && bi < o_.batches.size(); ++bi) {
        const int B = o_.batches[bi];
        moerun_session_clear(s);
        // Every sequence starts from the same short prompt, then all decode together, one token each.
        std::vector<int32_t> seq(static_cast<size_t>(B));
        for (int b = 0; b < B && ok; ++b) {
          std::vector<int32_t> sid(kDecodePrompt, b);
          ok = Decode(s, ids.data(), kDecodePrompt, sid.data());
        }
        std::vector<int32_t> toks(static_cast<size_t>(B), ids[kDecodePrompt]);
        const std::vector<uint8_t> all_logits(static_cast<size_t>(B), 1);
        for (int b = 0; b < B; ++b) seq[b] = b;
        double step_bytes = 0.0;  // weight bytes the steps read, from the experts they ran
        double elapsed = 0.0;
        // A different token every step, so routing varies as in generation.
        for (int64_t g = 0; g < o_.gen && ok; ++g) {
          for (int b = 0; b < B; ++b) toks[b] = ids[static_cast<size_t>(kDecodePrompt + 1 + g + 3 * b) % ids.size()];
          ok = ExpertCounts(s, &counts_before_);
          const double d0 = Now();
          ok = ok && Decode(s, toks.data(), static_cast<uint32_t>(B), seq.data(), all_logits.data());
          elapsed += Now() - d0;
          ok = ok && ExpertCounts(s, &counts_after_);
          step_bytes += StepBytes(work, counts_before_, counts_after_);
        }
        decode_tps[bi].push_back(static_cast<double>(B) * o_.gen / elapsed);
        decode_bytes[bi].push_back(step_bytes / static_cast<double>(o_.gen));
        const double bw_after = ok ? Bandwidth(threads, true) : 0.0;
        if (std::max(bw_before, bw_after) > 0)
          decode_adjacent[bi].push_back(step_bytes / elapsed / std::max(bw_before, bw_after));
        bw_before = bw_after;
      }
      // Batch 1 again, each step between two read passes (Interleaved).
      if (ok && std::find(o_.batches.begin(), o_.batches.end(), 1) != o_.batches.end()) {
        moerun_session_clear(s);
        std::vector<int32_t> sid(kDecodePrompt, 0);
        ok = Decode(s, ids.data(), kDecodePrompt, sid.data());
        const double f = Interleaved(threads, o_.gen, &ok, [&](int64_t g, double* seconds, double* bytes) {
          const int32_t tok = ids[static_cast<size_t>(kDecodePrompt + 1 + g) % ids.size()];
          bool step_ok = ExpertCounts(s, &counts_before_);
          const double d0 = Now();
          step_ok = step_ok && Decode(s, &tok, 1, nullptr);
          *seconds = Now() - d0;
          step_ok = step_ok && ExpertCounts(s, &counts_after_);
          *bytes = StepBytes(work, counts_before_, counts_after_);
          return step_ok;
        });
        if (f > 0) decode_interleaved.push_back(f);
      }
      moerun_session_destroy(s);
      if (!ok) return Fail(err, "decode");
    }

    // A long prompt and decode after it, per repeat: --context tokens in chunks of kContextChunk (as
    // moerun_generate feeds a prompt), timed as a whole, then --gen tokens decoded one at a time.
    std::vector<double> ctx_tps, ctx_fill_tps, ctx_adjacent, ctx_interleaved;
    // What a decode step at --context reads: the active weights and the whole KV cache.
    const double ctx_bytes =
        static_cast<double>(work.weight_bytes) + static_cast<double>(kv_bytes_per_token_) * o_.context;
    if (o_.context > 0) {
      // Room for the timed steps and as many again between read passes (Interleaved).
      moerun_session* s = NewSession(threads, static_cast<uint32_t>(o_.context + 2 * o_.gen + 1), 1);
      if (!s) return Fail(err, "creating session");
      bool ok = true;
      for (int64_t r = 0; r < o_.repeat && ok; ++r) {
        moerun_session_clear(s);
        const double f0 = Now();
        for (int64_t i = 0; i < o_.context && ok; i += kContextChunk)
          ok = Decode(s, ids.data() + i, static_cast<uint32_t>(std::min(kContextChunk, o_.context - i)), nullptr);
        ctx_fill_tps.push_back(o_.context / (Now() - f0));
        const double bw_before = ok ? Bandwidth(threads, true) : 0.0;
        const double d0 = Now();
        for (int64_t g = 0; g < o_.gen && ok; ++g) ok = Decode(s, &ids[g], 1, nullptr);
        ctx_tps.push_back(o_.gen / (Now() - d0));
        const double adjacent = std::max(bw_before, ok ? Bandwidth(threads, true) : 0.0);
        if (adjacent > 0)
          ctx_adjacent.push_back(ctx_tps.back() * ctx_bytes / adjacent);
        const double f = Interleaved(threads, o_.gen, &ok, [&](int64_t g, double* seconds, double* bytes) {
          const double d0 = Now();
          const bool step_ok = Decode(s, &ids[static_cast<size_t>(o_.gen + g) % ids.size()], 1, nullptr);
          *seconds = Now() - d0;
          // The weights and every key the step attends to: the cache so far and its own.
          *bytes = static_cast<double>(work.weight_bytes) +
                   static_cast<double>(kv_bytes_per_token_) * static_cast<double>(o_.context + o_.gen + g + 1);
          return step_ok;
        });
        if (f > 0) ctx_interleaved.push_back(f);
      }
      moerun_session_destroy(s);
      if (!ok) return Fail(err, "long-context decode");
    }

    const Stat pf = Summarise(prefill_tps), pfrac = Summarise(prefill_fraction);
    const Stat pbytes = Summarise(prefill_bytes), proof = Summarise(prefill_roofline);
    const double prefill_flops = pf.median / static_cast<double>(o_.prompt) * work.PrefillMatmulOps(o_.prompt);
    char buf[2048];
    std::snprintf(buf, sizeof(buf),
                  "{\"threads\": %d, \"load_s\": %.4f, \"time_to_first_token_s\": %.4f, "
                  "\"bandwidth_probe_gb_per_s\": %.3f, \"bandwidth_probe_median_pass_gb_per_s\": %.3f, "
                  "\"gemm_peak_probe_bf16_gflop_per_s\": %.2f, "
                  "\"gemm_peak_probe_int8_gop_per_s\": %.2f, \"gemm_probe_used\": \"%s\", "
                  "\"prefill\": {\"tokens\": %lld, \"tokens_per_s\": %s, \"matmul_gflop_per_s\": %.2f, "
                  "\"fraction_of_gemm_peak\": %.4f, \"fraction_of_adjacent_gemm_probe\": %s, "
                  "\"weight_bytes\": %.0f, \"fraction_of_roofline\": %s}, \"decode\": [",
                  threads, load_s, ttft, bw / 1e9, bw_median / 1e9, peak_bf16 / 1e9, peak_int8 / 1e9,
                  int8_path ? "int8" : "bf16",
                  static_cast<long long>(o_.prompt), Json(pf).c_str(), prefill_flops / 1e9,
                  peak > 0 ? prefill_flops / peak : 0.0, Json(pfrac).c_str(), pbytes.median, Json(proof).c_str());
    *out += buf;
    // A probe oneDNN could not run here (0: no bf16 matmul without AVX-512) is named as such.
    auto probe = [](double ops, const char* unit) {
      char p[64];
      if (ops > 0) {
        std::snprintf(p, sizeof(p), "%.1f %s", ops / 1e9, unit);
      } else {
        std::snprintf(p, sizeof(p), "unavailable on this CPU");
      }
      return std::string(p);
    };
    std::snprintf(buf, sizeof(buf),
                  "%d thread(s): load %.3f s, first token %.3f s; probes: read %.2f GB/s (best of %d passes; median pass "
                  "%.2f), GEMM bf16 %s, int8 %s\n"
                  "  prefill %-5lld %9.2f tok/s [%.2f, %.2f]  %.1f GFLOP/s = %.1f%% of the %s GEMM probe; "
                  "%.1f%% [%.1f, %.1f] of the faster of the probes taken right before and after each prefill; "
                  "%.1f%% [%.1f, %.1f] of its roofline (that probe, or reading its %.1f MiB of weights at the read "
                  "probe, whichever is slower)\n",
                  threads, load_s, ttft, bw / 1e9, kReadPasses, bw_median / 1e9, probe(peak_bf16, "GFLOP/s").c_str(),
                  probe(peak_int8, "GOP/s").c_str(),
                  static_cast<long long>(o_.prompt), pf.median, pf.min, pf.max, prefill_flops / 1e9, peak > 0 ? 100.0 * prefill_flops / peak : 0.0,
                  int8_path ? "int8" : "bf16", 100.0 * pfrac.median, 100.0 * pfrac.min, 100.0 * pfrac.max,
                  100.0 * proof.median, 100.0 * proof.min, 100.0 * proof.max, pbytes.median / 1048576.0);
    *text += buf;
    auto of_median = [&](double gbps) { return bw_median > 0 ? gbps * 1e9 / bw_median : 0.0; };
    for (size_t bi = 0; bi < o_.batches.size(); ++bi) {
      const Stat d = Summarise(decode_tps[bi]), step_bytes = Summarise(decode_bytes[bi]);
      const Stat adj = Summarise(decode_adjacent[bi]);
      const Stat inter = o_.batches[bi] == 1 ? Summarise(decode_interleaved) : Stat{};
      // Weights are read once per step for the whole batch: the shared ones, and each distinct
      // routed expert the batch's tokens chose (from the session's expert counts).
      const double gbps = d.median / o_.batches[bi] * step_bytes.median / 1e9;
      std::snprintf(buf, sizeof(buf),
                    "%s{\"batch\": %d, \"context\": %u, \"tokens_per_s\": %s, \"ms_per_step\": %.3f, "
                    "\"weight_bytes_per_step\": %.0f, \"weight_gb_per_s\": %.3f, \"fraction_of_bandwidth\": %.4f, "
                    "\"fraction_of_bandwidth_median_pass\": %.4f, \"fraction_of_adjacent_bandwidth_probe\": %s, "
                    "\"fraction_of_interleaved_read_passes\": %s}",
                    bi ? ", " : "", o_.batches[bi], kDecodePrompt, Json(d).c_str(), 1e3 * o_.batches[bi] / d.median,
                    step_bytes.median, gbps, gbps * 1e9 / bw, of_median(gbps), Json(adj).c_str(),
                    JsonOrNull(inter).c_str());
      *out += buf;
      std::snprintf(buf, sizeof(buf),
                    "  decode batch %-3d %9.2f tok/s [%.2f, %.2f]  %.2f ms/step, %.1f MiB of weights per step, "
                    "%.2f GB/s = %.1f%% of the probe (%.1f%% of its median pass); %.1f%% [%.1f, %.1f] of the faster of "
                    "the probes taken right before and after each run\n",
                    o_.batches[bi], d.median, d.min, d.max, 1e3 * o_.batches[bi] / d.median, step_bytes.median / 1048576.0,
                    gbps, 100.0 * gbps * 1e9 / bw, 100.0 * of_median(gbps), 100.0 * adj.median, 100.0 * adj.min,
                    100.0 * adj.max);
      *text += buf;
      *text += InterleavedText(inter);
    }
    if (!ctx_tps.empty()) {
      const Stat d = Summarise(ctx_tps), adj = Summarise(ctx_adjacent), inter = Summarise(ctx_interleaved);
      const double gbps = d.median * ctx_bytes / 1e9;
      std::snprintf(buf, sizeof(buf),
                    ", {\"batch\": 1, \"context\": %lld, \"tokens_per_s\": %s, \"ms_per_step\": %.3f, "
                    "\"weight_and_kv_gb_per_s\": %.3f, \"fraction_of_bandwidth\": %.4f, "
                    "\"fraction_of_bandwidth_median_pass\": %.4f, \"fraction_of_adjacent_bandwidth_probe\": %s, "
                    "\"fraction_of_interleaved_read_passes\": %s}",
                    static_cast<long long>(o_.context), Json(d).c_str(), 1e3 / d.median, gbps, gbps * 1e9 / bw,
                    of_median(gbps), Json(adj).c_str(), JsonOrNull(inter).c_str());
      *out += buf;
      std::snprintf(buf, sizeof(buf),
                    "  decode at context %lld: %.2f tok/s [%.2f, %.2f], weights + KV %.2f GB/s = %.1f%% of the probe "
                    "(%.1f%% of its median pass); %.1f%% [%.1f, %.1f] of the faster of the probes taken right before "
                    "and after each run\n",
                    static_cast<long long>(o_.context), d.median, d.min, d.max, gbps, 100.0 * gbps * 1e9 / bw,
                    100.0 * of_median(gbps), 100.0 * adj.median, 100.0 * adj.min, 100.0 * adj.max);
      *text += buf;
      *text += InterleavedText(inter);
    }
    *out += "]";
    if (!ctx_fill_tps.empty()) {
      const Stat f = Summarise(ctx_fill_tps);
      std::snprintf(buf, sizeof(buf), ", \"context_prefill\": {\"tokens\": %lld, \"chunk\": %lld, \"tokens_per_s\": %s}",
                    static_cast<long long>(o_.context), static_cast<long long>(kContextChunk), Json(f).c_str());
      *out += buf;
      std::snprintf(buf, sizeof(buf), "  prompt of %lld tokens in chunks of %lld: %.2f tok/s [%.2f, %.2f], %.2f s\n",
                    static_cast<long long>(o_.context), static_cast<long long>(kContextChunk), f.median, f.min, f.max,
                    o_.context / f.median);
      *text += buf;
    }
    *out += "}";
    return true;
  }

 private:
  static bool Fail(std::string* err, const char* what) {
    *err = std::string(what) + ": " + moerun_last_error();
    return false;
  }

  moerun_session* NewSession(int threads, uint32_t capacity, int max_sequences) {
    moerun_session_options so;
    moerun_session_options_init(&so);
    so.kv_capacity = capacity;
    so.max_sequences = static_cast<uint32_t>(max_sequences);
    so.max_batch_tokens = static_cast<uint32_t>(std::max<int64_t>({o_.prompt, 512, max_sequences}));
    so.n_threads = threads;
    moerun_session* s = nullptr;
    return moerun_session_create(model_, &so, &s) == MOERUN_OK ? s : nullptr;
  }

  bool ExpertCounts(moerun_session* s, std::vector<uint64_t>* counts) const {
    counts->resize(n_expert_counts_);
    return moerun_session_get_expert_counts(s, counts->data(), counts->size()) == MOERUN_OK;
  }

  // Weight bytes one step read: everything but the routed experts, plus each distinct expert run.
  static double StepBytes(const ActiveWork& work, const std::vector<uint64_t>& before,
                          const std::vector<uint64_t>& after) {
    double bytes = static_cast<double>(work.weight_bytes);
    for (uint64_t b : work.expert_bytes) bytes -= static_cast<double>(b) * work.experts_per_token;
    const size_t layers = work.expert_bytes.size(), E = layers ? after.size() / layers : 0;
    for (size_t i = 0; i < after.size(); ++i)
      if (after[i] != before[i]) bytes += static_cast<double>(work.expert_bytes[i / E]);
    return bytes;
  }

  static constexpr int64_t kContextChunk = 512;
  // Each sequence of the decode runs starts from this many prompt tokens.
  static constexpr uint32_t kDecodePrompt = 8;

  // logits: one flag per token (a batched decode step wants every sequence's next token), or null
  // for the last token's only (a prompt).
  static bool Decode(moerun_session* s, const int32_t* toks, uint32_t n, const int32_t* seq_ids,
                     const uint8_t* logits = nullptr) {
    moerun_batch b;
    moerun_batch_init(&b);
    b.n_tokens = n;
    b.tokens = toks;
    b.seq_ids = seq_ids;
    b.logits = logits;
    return moerun_session_decode(s, &b) == MOERUN_OK;
  }

  // n steps, each between two passes of the read probe: per step its bytes per second over the faster
  // of the passes right before and after it, and the median of that over the steps, the fraction of
  // the memory speed at that moment (this host's drifts within seconds, between the probes around a
  // whole run too). step(g, &seconds, &bytes) runs step g and says what it took and read; false
  // stops with *ok false. 0 where no probe can run while a model is loaded (RssWatch) or its buffer
  // could not be had; the buffer is kept out of the peak RSS as Bandwidth's is.
  template <typename Step>
  double Interleaved(int threads, int64_t n, bool* ok, Step step) {
    if (!*ok || n <= 0 || !rss_.resettable()) return 0.0;
    rss_.Fold();
    std::vector<double> ratios;
    {
      ReadProbe probe(threads, static_cast<size_t>(o_.probe_mib) << 20);
      double before = probe.Pass();
      for (int64_t g = 0; g < n && *ok && before > 0; ++g) {
        double seconds = 0.0, bytes = 0.0;
        *ok = step(g, &seconds, &bytes);
        const double after = probe.Pass();
        if (*ok && seconds > 0 && after > 0) ratios.push_back(bytes / seconds / std::max(before, after));
        before = after;
      }
    }
    rss_.Reset();
    return Summarise(ratios).median;
  }

  // The read probe, its buffer kept out of the peak RSS. Adjacent ones (between decodes, with the
  // model loaded) run only where that works; they return 0 otherwise.
  double Bandwidth(int threads, bool adjacent, double* median_pass = nullptr) {
    if (adjacent && !rss_.resettable()) return 0.0;
    rss_.Fold();
    const double bw = ReadBandwidth(threads, static_cast<size_t>(o_.probe_mib) << 20, median_pass);
    rss_.Reset();
    return bw;
  }

  const Options& o_;
  RssWatch rss_;
  moerun_model* model_ = nullptr;
  moerun_precision precision_ = MOERUN_PRECISION_AUTO;
  uint64_t kv_bytes_per_token_ = 0;
  size_t n_expert_counts_ = 0;
  std::vector<uint64_t> counts_before_, counts_after_;
};

bool ParseIntList(const std::string& s, std::vector<int>* out, std::string* err, const char* flag) {
  std::vector<int32_t> v;
  if (!ParseIdList(s, &v, err) || v.empty()) {
    *err = std::string(flag) + " expects a comma-separated list of positive integers";
    return false;
  }
  out->assign(v.begin(), v.end());
  for (int x : *out)
    if (x <= 0 || x > 4096) {
      *err = std::string(flag) + " values must be in [1, 4096]";
      return false;
    }
  return true;
}

}  // namespace

int RunBench(int argc, char** argv) {
  Args args;
  std::string err;
  if (!args.Parse(argc, argv,
                  {"--prompt", "--gen", "--threads", "--repeat", "--precision", "--backend", "--probe-mib", "--context",
                   "--batch"},
                  {"--json"}, &err))
    return Fail(err);
  if (args.positional().size() != 1) return Fail("bench: expected exactly one MODEL argument");
  Options o;
  o.path = args.positional()[0];
  if (!args.GetInt("--prompt", 1, 1 << 20, &o.prompt, &err) || !args.GetInt("--gen", 1, 1 << 20, &o.gen, &err) ||
      !args.GetInt("--repeat", 1, 1000, &o.repeat, &err) || !args.GetInt("--probe-mib", 16, 1 << 16, &o.probe_mib, &err) ||
      !args.GetInt("--context", 0, 1 << 20, &o.context, &err))
    return Fail(err);
  if (args.Has("--threads") && !ParseIntList(args.Get("--threads"), &o.threads, &err, "--threads")) return Fail(err);
  if (args.Has("--batch") && !ParseIntList(args.Get("--batch"), &o.batches, &err, "--batch")) return Fail(err);
  if (!ParsePrecision(args, &o.precision, &err)) return Fail(err);
  o.backend = args.Get("--backend", "cpu");
  o.json = args.Has("--json");

  ActiveWork work;
  uint32_t vocab = 0;
  uint64_t file_bytes = 0;
  double huge_share = -1.0;
  {
    auto file = ModelFile::Open(o.path, VerifyOptions{});
    if (!file.ok()) return Fail(file.status().message());
    work = Active(*file.value());
    vocab = file.value()->config().vocab_size;
    file_bytes = file.value()->file_size();
    // Pages not yet cached come in through the loader's mapping (2 MiB folios) before the read()
    // timing below could bring them in as small ones.
    TouchPages(file.value()->data(), file_bytes);
    huge_share = HugeMappedShare(file.value()->data(), file_bytes);
  }
  const double read_s = FileReadSeconds(o.path);

  std::string runs, text;
  Bench bench(o);
  for (size_t i = 0; i < o.threads.size(); ++i) {
    std::string one;
    if (!bench.Run(o.threads[i], work, vocab, &one, &text, &err)) return Fail("bench: " + err);
    runs += (i ? ", " : "") + one;
  }
  const double rss_mib = bench.PeakRssKiB() / 1024.0;
  char head[896];
  std::snprintf(head, sizeof(head),
                "{\"model\": \"%s\", \"backend\": \"%s\", \"precision\": \"%s\", \"repeat\": %lld, \"gen_tokens\": %lld, "
                "\"file_bytes\": %llu, \"file_read_s\": %.4f, \"active_weight_bytes_per_token\": %llu, "
                "\"kv_bytes_per_token\": %llu, \"peak_rss_mib\": %.1f, \"file_2mib_page_share\": %.3f, \"runs\": [",
                JsonEscape(o.path).c_str(), o.backend.c_str(), PrecisionName(bench.precision()), static_cast<long long>(o.repeat),
                static_cast<long long>(o.gen), static_cast<unsigned long long>(file_bytes), read_s,
                static_cast<unsigned long long>(work.weight_bytes), static_cast<unsigned long long>(bench.kv_bytes_per_token()),
                rss_mib, huge_share);
  if (o.json) {
    std::printf("%s%s]}\n", head, runs.c_str());
    return 0;
  }
  std::printf("%s on %s, %s precision; medians of %lld runs [min, max]\n", o.path.c_str(), o.backend.c_str(),
              PrecisionName(bench.precision()), static_cast<long long>(o.repeat));
  // Weights streamed through 4 KiB pages read ~20% slower than through 2 MiB ones (model_file.cc).
  const std::string pages = huge_share < 0.0 ? std::string("unknown")
                                             : std::to_string(static_cast<int>(huge_share * 100.0 + 0.5)) + "%";
  std::printf("file %.1f MiB (read from page cache in %.3f s; mapped with 2 MiB pages: %s), %.1f MiB active "
              "weights per decode token, KV %llu bytes per token, peak RSS %.1f MiB\n%s",
              file_bytes / 1048576.0, read_s, pages.c_str(), work.weight_bytes / 1048576.0,
              static_cast<unsigned long long>(bench.kv_bytes_per_token()), rss_mib, text.c_str());
  return 0;
}

}  // namespace moerun::cli
