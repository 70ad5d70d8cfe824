// moerun_decode_ab: an interleaved A/B of decode speed between two builds of libmoerun, for kernel
// work on hosts whose memory speed drifts from minute to minute (the AMD EPYC test host's read
// bandwidth moved by 20-40% between runs a minute apart, far more than most kernel changes).
//
// Both libraries are loaded into this one process (dlopen, RTLD_LOCAL: each keeps its own symbols),
// each maps the same model file (one copy in the page cache) and runs its own session. Decode steps
// then alternate A B B A ..., and the result is the median of the per-pair time ratios B/A, with its
// quartiles: both builds see the same memory at nearly the same moment. The same build against a
// copy of itself gave 0.999 [0.959, 1.046] over 200 steps there, so ~2% differences show.
//
//   moerun_decode_ab LIB_A LIB_B MODEL [--threads N] [--steps N] [--warmup N] [--context N]
//                    [--prefill N | --batch N]
//
// --prefill N: each step is instead a prompt of N tokens into an emptied sequence (fed in batches of
// the session's max_batch_tokens), timed whole: the same A/B for prefill work.
// --batch N: each decode step is one token for each of N sequences (each started from --context
// tokens), with logits for all N, as a server's batched decode step.
//
// LIB_A and LIB_B must be two files (copy one build's libmoerun.so aside): dlopen hands back the
// library already loaded for the same file.
#include <dlfcn.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "moerun/moerun.h"

namespace {

struct Options {
  const char* lib[2] = {nullptr, nullptr};
  const char* model = nullptr;
  int threads = 0, steps = 200, warmup = 64, context = 8, prefill = 0, batch = 1;
};

// One build: its entry points, model and session.
class Build {
 public:
  Build() = default;
  Build(const Build&) = delete;
  Build& operator=(const Build&) = delete;
  ~Build() {
    if (session_) session_destroy_(session_);
    if (model_) model_destroy_(model_);
  }
  bool Open(const char* path, const Options& o);
  // One decode step of one token; restarts the sequence (prompt of o.context tokens) when the cache
  // is full. With o.prefill, a prompt of that many tokens into an emptied sequence instead. Returns
  // the step's seconds, or a negative number on failure (reported).
  double Step();
  const std::string& error() const { return error_; }

 private:
  template <typename F>
  bool Sym(F& f, const char* name) {
    f = reinterpret_cast<F>(dlsym(handle_, name));
    if (!f) error_ = std::string("no symbol ") + name + " in " + path_;
    return f != nullptr;
  }
  bool Check(moerun_status s, const char* what);
  bool Prefill(int n);

  std::string path_, error_;
  void* handle_ = nullptr;
  decltype(&moerun_model_options_init) model_options_init_ = nullptr;
  decltype(&moerun_model_load) model_load_ = nullptr;
  decltype(&moerun_model_destroy) model_destroy_ = nullptr;
  decltype(&moerun_model_info_init) info_init_ = nullptr;
  decltype(&moerun_model_get_info) get_info_ = nullptr;
  decltype(&moerun_session_options_init) session_options_init_ = nullptr;
  decltype(&moerun_session_create) session_create_ = nullptr;
  decltype(&moerun_session_destroy) session_destroy_ = nullptr;
  decltype(&moerun_batch_init) batch_init_ = nullptr;
  decltype(&moerun_session_decode) decode_ = nullptr;
  decltype(&moerun_session_clear) clear_ = nullptr;
  decltype(&moerun_last_error) last_error_ = nullptr;
  moerun_model* model_ = nullptr;
  moerun_session* session_ = nullptr;
  uint32_t vocab_ = 1, capacity_ = 0, length_ = 0, next_ = 0, max_batch_ = 1;
  int context_ = 8, prefill_ = 0, batch_ = 1;
};

bool Build::Check(moerun_status s, const char* what) {
  if (s == MOERUN_OK) return true;
  error_ = path_ + ": " + what + " failed: " + (last_error_ ? last_error_() : "?");
  return false;
}

bool Build::Open(const char* path, const Options& o) {
  path_ = path;
  context_ = o.context;
  prefill_ = o.prefill;
  batch_ = o.batch;
  // A file argument: without a slash dlopen would search the library path instead.
  const std::string file = path_.find('/') == std::string::npos ? "./" + path_ : path_;
  handle_ = dlopen(file.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle_) {
    error_ = std::string("cannot load ") + path + ": " + dlerror();
    return false;
  }
  if (!Sym(model_options_init_, "moerun_model_options_init") || !Sym(model_load_, "moerun_model_load") ||
      !Sym(model_destroy_, "moerun_model_destroy") || !Sym(session_destroy_, "moerun_session_destroy") ||
      !Sym(info_init_, "moerun_model_info_init") || !Sym(get_info_, "moerun_model_get_info") ||
      !Sym(session_options_init_, "moerun_session_options_init") ||
      !Sym(session_create_, "moerun_session_create") || !Sym(batch_init_, "moerun_batch_init") ||
      !Sym(decode_, "moerun_session_decode") || !Sym(clear_, "moerun_session_clear") ||
      !Sym(last_error_, "moerun_last_error"))
    return false;
  moerun_model_options mo;
  model_options_init_(&mo);
  mo.n_threads = o.threads;
  if (!Check(model_load_(o.model, &mo, &model_), "loading the model")) return false;
  moerun_model_info info;
  info_init_(&info);
  if (!Check(get_info_(model_, &info), "moerun_model_get_info")) return false;
  vocab_ = info.vocab_size;
  moerun_session_options so;
  session_options_init_(&so);
  so.n_threads = o.threads;
  so.kv_capacity = static_cast<uint32_t>(std::max({1024, 2 * o.context, o.prefill}) * o.batch);
  so.max_sequences = static_cast<uint32_t>(o.batch);
  capacity_ = so.kv_capacity / static_cast<uint32_t>(o.batch);  // per sequence
  so.max_batch_tokens = std::max(so.max_batch_tokens, static_cast<uint32_t>(o.batch));  // a step's N tokens
  max_batch_ = std::max<uint32_t>(so.max_batch_tokens, 1);
  if (!Check(session_create_(model_, &so, &session_), "creating a session")) return false;
  return Prefill(context_);
}

bool Build::Prefill(int n) {
  if (!Check(clear_(session_), "moerun_session_clear")) return false;
  // Every sequence (one unless --batch) gets its own prompt of n tokens.
  for (int s = 0; s < (prefill_ > 0 ? 1 : batch_); ++s) {
    std::vector<int32_t> prompt(static_cast<size_t>(n)), seq(static_cast<size_t>(n), s);
    for (int i = 0; i < n; ++i) prompt[i] = static_cast<int32_t>((next_++ * 7919u + 1) % vocab_);
    // In batches of at most the session's max_batch_tokens.
    for (uint32_t done = 0; done < prompt.size(); done += max_batch_) {
      moerun_batch b;
      batch_init_(&b);
      b.n_tokens = std::min<uint32_t>(max_batch_, static_cast<uint32_t>(prompt.size()) - done);
      b.tokens = prompt.data() + done;
      b.seq_ids = seq.data() + done;
      if (!Check(decode_(session_, &b), "the prompt's decode")) return false;
    }
  }
  length_ = static_cast<uint32_t>(n);
  return true;
}

double Build::Step() {
  if (prefill_ > 0) {
    const auto t0 = std::chrono::steady_clock::now();
    if (!Prefill(prefill_)) return -1.0;
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  if (length_ >= capacity_ && !Prefill(context_)) return -1.0;
  const size_t B = static_cast<size_t>(batch_);
  std::vector<int32_t> tokens(B), seq(B);
  const std::vector<uint8_t> logits(B, 1);
  for (size_t s = 0; s < B; ++s) {
    tokens[s] = static_cast<int32_t>((next_++ * 7919u + 1) % vocab_);
    seq[s] = static_cast<int32_t>(s);
  }
  moerun_batch b;
  batch_init_(&b);
  b.n_tokens = static_cast<uint32_t>(B);
  b.tokens = tokens.data();
  b.seq_ids = seq.data();
  b.logits = logits.data();
  const auto t0 = std::chrono::steady_clock::now();
  const moerun_status s = decode_(session_, &b);
  const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ++length_;
  return Check(s, "a decode step") ? dt : -1.0;
}

double Quantile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  return v[static_cast<size_t>(q * static_cast<double>(v.size() - 1) + 0.5)];
}

bool ParseInt(const char* s, int lo, int* out) {
  char* end = nullptr;
  const long v = std::strtol(s, &end, 10);
  if (!s[0] || *end || v < lo || v > 1000000) return false;
  *out = static_cast<int>(v);
  return true;
}

int Usage(const char* why) {
  std::fprintf(stderr, "moerun_decode_ab: %s\nusage: moerun_decode_ab LIB_A LIB_B MODEL [--threads N] [--steps N] "
               "[--warmup N] [--context N] [--prefill N | --batch N]\n", why);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  int positional = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    int* target = a == "--threads" ? &o.threads : a == "--steps" ? &o.steps : a == "--warmup" ? &o.warmup
                  : a == "--context" ? &o.context : a == "--prefill" ? &o.prefill
                  : a == "--batch"   ? &o.batch
                                     : nullptr;
    if (target) {
      const int lo = target == &o.threads || target == &o.warmup ? 0 : 1;
      if (i + 1 >= argc || !ParseInt(argv[i + 1], lo, target)) return Usage((a + " takes a whole number").c_str());
      ++i;
    } else if (a.rfind("--", 0) == 0) {
      return Usage(("unknown option " + a).c_str());
    } else if (positional < 3) {
      (positional < 2 ? o.lib[positional] : o.model) = argv[i];
      ++positional;
    } else {
      return Usage(("unexpected argument " + a).c_str());
    }
  }
  if (positional < 3) return Usage("needs LIB_A, LIB_B and MODEL");
  if (o.prefill > 0 && o.batch > 1) return Usage("--prefill and --batch exclude each other");
  if (o.batch > 1024) return Usage("--batch is at most 1024");
  struct stat sa, sb;
  if (stat(o.lib[0], &sa) == 0 && stat(o.lib[1], &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino)
    return Usage("LIB_A and LIB_B are the same file; copy one aside (dlopen would share one library)");
  Build build[2];
  for (int k = 0; k < 2; ++k)
    if (!build[k].Open(o.lib[k], o)) {
      std::fprintf(stderr, "moerun_decode_ab: %s\n", build[k].error().c_str());
      return 1;
    }
  for (int i = 0; i < o.warmup; ++i)
    for (Build& b : build)
      if (b.Step() < 0) {
        std::fprintf(stderr, "moerun_decode_ab: %s\n", b.error().c_str());
        return 1;
      }
  std::vector<double> t[2], ratio;
  for (int i = 0; i < o.steps; ++i) {
    double dt[2];
    for (int j = 0; j < 2; ++j) {
      const int k = i % 2 == 0 ? j : 1 - j;  // A B, then B A
      dt[k] = build[k].Step();
      if (dt[k] < 0) {
        std::fprintf(stderr, "moerun_decode_ab: %s\n", build[k].error().c_str());
        return 1;
      }
    }
    t[0].push_back(dt[0]);
    t[1].push_back(dt[1]);
    ratio.push_back(dt[1] / dt[0]);
  }
  const std::string threads = o.threads > 0 ? std::to_string(o.threads) + " threads" : "default threads";
  const std::string what = o.prefill > 0 ? "prompts of " + std::to_string(o.prefill)
                           : o.batch > 1  ? "steps of " + std::to_string(o.batch) + " tokens"
                                          : "steps";
  std::printf("%d %s each, %s: A %.3f ms [%.3f, %.3f], B %.3f ms [%.3f, %.3f]; B/A %.4f [p25 %.4f, p75 %.4f]\n",
              o.steps, what.c_str(), threads.c_str(), 1e3 * Quantile(t[0], 0.5), 1e3 * Quantile(t[0], 0.25),
              1e3 * Quantile(t[0], 0.75), 1e3 * Quantile(t[1], 0.5), 1e3 * Quantile(t[1], 0.25),
              1e3 * Quantile(t[1], 0.75), Quantile(ratio, 0.5), Quantile(ratio, 0.25), Quantile(ratio, 0.75));
  return 0;
}
