// `moerun run`: goes through the public C API only.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "moerun/moerun.h"
#include "tools/cli_util.h"

namespace moerun::cli {
namespace {

double NowSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

int ApiFail(const char* what, moerun_status st) {
  return Fail(std::string(what) + ": " + moerun_status_string(st) + ": " + moerun_last_error());
}

// Options shared by run and bench.
struct CommonOptions {
  moerun_model_options model;
  int64_t threads = 0;
};

bool ParseCommon(const Args& args, CommonOptions* o, std::string* err) {
  moerun_model_options_init(&o->model);
  if (!ParsePrecision(args, &o->model.precision, err)) return false;
  if (!args.GetInt("--threads", 0, 1024, &o->threads, err)) return false;
  o->model.n_threads = static_cast<int32_t>(o->threads);
  return true;
}

struct Handles {
  moerun_model* model = nullptr;
  moerun_session* session = nullptr;
  moerun_sampler* sampler = nullptr;
  ~Handles() {
    moerun_sampler_destroy(sampler);
    moerun_session_destroy(session);
    moerun_model_destroy(model);
  }
};

// Decodes `ids` into sequence 0 in chunks; if rows is non-null, collects every position's logits.
moerun_status Prefill(moerun_session* s, const std::vector<int32_t>& ids, uint32_t chunk, uint32_t vocab,
                      std::vector<float>* rows) {
  std::vector<uint8_t> want;
  for (size_t i = 0; i < ids.size(); i += chunk) {
    const uint32_t n = static_cast<uint32_t>(std::min<size_t>(chunk, ids.size() - i));
    want.assign(n, rows ? 1 : 0);
    want[n - 1] = 1;
    moerun_batch b;
    moerun_batch_init(&b);
    b.n_tokens = n;
    b.tokens = ids.data() + i;
    b.logits = want.data();
    moerun_status st = moerun_session_decode(s, &b);
    if (st != MOERUN_OK) return st;
    if (rows) {
      for (uint32_t j = 0; j < n; ++j) {
        const float* l = nullptr;
        if ((st = moerun_session_get_logits(s, j, &l)) != MOERUN_OK) return st;
        rows->insert(rows->end(), l, l + vocab);
      }
    }
  }
  return MOERUN_OK;
}

moerun_status DecodeOne(moerun_session* s, int32_t token) {
  moerun_batch b;
  moerun_batch_init(&b);
  b.n_tokens = 1;
  b.tokens = &token;
  return moerun_session_decode(s, &b);
}

}  // namespace

int RunRun(int argc, char** argv) {
  Args args;
  std::string err;
  if (!args.Parse(argc, argv,
                  {"--ids", "--max-tokens", "--temperature", "--top-k", "--top-p", "--min-p", "--seed", "--dump-logits",
                   "--precision", "--backend", "--threads"},
                  {"--greedy", "--json"}, &err))
    return Fail(err);
  if (args.positional().size() != 1) return Fail("run: expected exactly one MODEL argument");
  if (!args.Has("--ids")) return Fail("run: --ids is required (comma-separated token ids)");
  std::vector<int32_t> ids;
  if (!ParseIdList(args.Get("--ids"), &ids, &err)) return Fail(err);
  CommonOptions common;
  if (!ParseCommon(args, &common, &err)) return Fail(err);
  const std::string backend = args.Get("--backend", "cpu");
  common.model.backend = backend.c_str();
  int64_t max_tokens = 16, top_k = 0, seed = 0;
  double temperature = 0.0, top_p = 1.0, min_p = 0.0;
  if (!args.GetInt("--max-tokens", 0, 1 << 20, &max_tokens, &err) || !args.GetInt("--top-k", 0, INT32_MAX, &top_k, &err) ||
      !args.GetInt("--seed", 0, INT64_MAX, &seed, &err) || !args.GetFloat("--temperature", &temperature, &err) ||
      !args.GetFloat("--top-p", &top_p, &err) || !args.GetFloat("--min-p", &min_p, &err))
    return Fail(err);
  if (args.Has("--greedy") && (args.Has("--temperature") || args.Has("--top-k") || args.Has("--top-p")))
    return Fail("run: --greedy cannot be combined with --temperature/--top-k/--top-p");

  Handles h;
  moerun_status st = moerun_model_load(args.positional()[0].c_str(), &common.model, &h.model);
  if (st != MOERUN_OK) return ApiFail("loading model", st);
  moerun_model_info info;
  moerun_model_info_init(&info);
  if ((st = moerun_model_get_info(h.model, &info)) != MOERUN_OK) return ApiFail("model info", st);
  for (int32_t id : ids)
    if (static_cast<uint32_t>(id) >= info.vocab_size)
      return Fail("run: token id " + std::to_string(id) + " is outside the vocabulary (" +
                  std::to_string(info.vocab_size) + ")");
  moerun_session_options so;
  moerun_session_options_init(&so);
  so.kv_capacity = static_cast<uint32_t>(ids.size() + max_tokens + 1);
  so.max_batch_tokens = static_cast<uint32_t>(std::min<size_t>(std::max<size_t>(ids.size(), 1), 512));
  so.n_threads = static_cast<int32_t>(common.threads);
  if ((st = moerun_session_create(h.model, &so, &h.session)) != MOERUN_OK) return ApiFail("creating session", st);
  moerun_sampler_options sp;
  moerun_sampler_options_init(&sp);
  sp.temperature = static_cast<float>(temperature);
  sp.top_k = static_cast<int32_t>(top_k);
  sp.top_p = static_cast<float>(top_p);
  sp.min_p = static_cast<float>(min_p);
  sp.seed = static_cast<uint64_t>(seed);
  if ((st = moerun_sampler_create(&sp, &h.sampler)) != MOERUN_OK) return ApiFail("sampler", st);

  const bool dump = args.Has("--dump-logits");
  std::vector<float> rows;
  const double t0 = NowSeconds();
  if ((st = Prefill(h.session, ids, so.max_batch_tokens, info.vocab_size, dump ? &rows : nullptr)) != MOERUN_OK)
    return ApiFail("prefill", st);
  const double t1 = NowSeconds();
  if (dump) {
    const std::string path = args.Get("--dump-logits");
    FILE* f = std::fopen(path.c_str(), "wb");
    if (!f) return Fail("cannot write '" + path + "': " + std::strerror(errno));
    const size_t n = std::fwrite(rows.data(), sizeof(float), rows.size(), f);
    if (std::fclose(f) != 0 || n != rows.size()) return Fail("writing '" + path + "' failed");
  }
  std::vector<int32_t> generated;
  uint32_t last_row = static_cast<uint32_t>((ids.size() - 1) % so.max_batch_tokens);
  const double t2 = NowSeconds();
  while (static_cast<int64_t>(generated.size()) < max_tokens) {
    const float* logits = nullptr;
    if ((st = moerun_session_get_logits(h.session, last_row, &logits)) != MOERUN_OK) return ApiFail("logits", st);
    int32_t tok = 0;
    if ((st = moerun_sampler_sample(h.sampler, logits, info.vocab_size, &tok)) != MOERUN_OK) return ApiFail("sample", st);
    generated.push_back(tok);
    if (!args.Has("--json")) {
      std::printf("%s%d", generated.size() == 1 ? "generated: " : " ", tok);
      std::fflush(stdout);
    }
    if (tok == info.eos_token_id || static_cast<int64_t>(generated.size()) == max_tokens) break;
    if ((st = DecodeOne(h.session, tok)) != MOERUN_OK) return ApiFail("decode", st);
    last_row = 0;
  }
  const double t3 = NowSeconds();
  const double decode_tps = generated.size() > 1 ? (generated.size() - 1) / (t3 - t2) : 0.0;
  if (args.Has("--json")) {
    std::printf("{\"prompt\": [");
    for (size_t i = 0; i < ids.size(); ++i) std::printf("%s%d", i ? ", " : "", ids[i]);
    std::printf("], \"generated\": [");
    for (size_t i = 0; i < generated.size(); ++i) std::printf("%s%d", i ? ", " : "", generated[i]);
    std::printf("], \"precision\": \"%s\", \"prefill_ms\": %.3f, \"prefill_tokens_per_s\": %.3f, "
                "\"decode_tokens_per_s\": %.3f}\n",
                PrecisionName(info.precision), (t1 - t0) * 1e3, ids.size() / (t1 - t0), decode_tps);
  } else {
    std::printf("\nprefill: %zu tokens in %.1f ms (%.1f tokens/s); decode: %zu tokens, %.2f tokens/s (%s precision)\n",
                ids.size(), (t1 - t0) * 1e3, ids.size() / (t1 - t0), generated.size(), decode_tps,
                PrecisionName(info.precision));
  }
  return 0;
}

}  // namespace moerun::cli
