// Fault injection (issue 4): a whole load-and-generate run through the public C API is first run
// clean to count its N allocations, then once for every k in 1..N with the k-th allocation failing.
// Every call must return MOERUN_OK or MOERUN_ERR_OUT_OF_MEMORY; a call that failed must have left
// its out-parameters and the session as the header promises; a retry of the failed call must succeed
// and the run must then end with exactly the clean run's logits and tokens; nothing may leak (the
// hook's live count here, LeakSanitizer in the sanitizer build). The converter gets the same sweep.
//
// Each run happens on a fresh thread, so that it also gets fresh OpenMP workers: the kernels keep
// per-thread scratch that grows once and is then reused, and a pool kept across runs would make
// those allocations happen in the first run only.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "converters/converter.h"
#include "moerun/moerun.h"
#include "tests/fault/alloc_hook.h"

namespace {

namespace fs = std::filesystem;
using moerun::convert::WeightsMode;

std::string Converted(WeightsMode mode) {
  const std::string p = std::string(::testing::TempDir()) + "/fault_v3_" + moerun::convert::WeightsModeName(mode) +
                        ".moerun";
  moerun::convert::ConvertOptions o;
  o.weights = mode;
  const moerun::Status st = moerun::convert::ConvertHfCheckpoint(MOERUN_TEST_DATA_DIR "/golden/v3_bf16", p, o);
  EXPECT_TRUE(st.ok()) << st.message();
  return p;
}

std::vector<char> ReadAll(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<char>((std::istreambuf_iterator<char>(f)), {});
}

// Runs body on a fresh thread and joins it. The OpenMP workers it started exit (and free their
// thread-local scratch) asynchronously, shortly after: see SettledLive and StableLive.
template <typename F>
void OnFreshThread(F&& body) {
  std::thread t(std::forward<F>(body));
  t.join();
}

// Polls the hook's live count back to `baseline`; OpenMP workers of a finished thread exit (and free
// their scratch) asynchronously.
int64_t SettledLive(int64_t baseline) {
  for (int i = 0; i < 200 && moerun::fault::Live() != baseline; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  return moerun::fault::Live();
}

// The live count once it has stopped changing for 100 ms (at most ~2 s): a baseline taken while the
// workers of an earlier fresh thread are still exiting would count their frees against later runs.
int64_t StableLive() {
  int64_t v = moerun::fault::Live();
  for (int still = 0, i = 0; still < 20 && i < 400; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    const int64_t now = moerun::fault::Live();
    still = now == v ? still + 1 : 0;
    v = now;
  }
  return v;
}

// Few tokens: every k repeats the whole run, and the reference backend is slow.
constexpr int32_t kPrompt[] = {0, 42, 250, 383};
constexpr uint32_t kPromptLen = sizeof(kPrompt) / sizeof(kPrompt[0]);
constexpr int kSteps = 2;
constexpr int32_t kGenPrompt[] = {5, 6};
constexpr uint32_t kGenPromptLen = sizeof(kGenPrompt) / sizeof(kGenPrompt[0]);
constexpr uint32_t kGenMax = 3;
constexpr uint32_t kVocab = 384;  // the v3_bf16 fixture's
constexpr uint32_t kUntouched = 0xDEADu;

struct Scenario {
  const char* name;
  const char* backend;
  WeightsMode weights;
  moerun_precision precision;
  int32_t n_threads;
  // Also load_from_memory from an unaligned buffer (the copy path). One scenario is enough: the rest
  // of that load is the file load's, and it would double N everywhere.
  bool from_memory;
};

void PrintTo(const Scenario& s, std::ostream* os) { *os << s.name; }

// Everything a run produces, preallocated so that the checks between calls allocate nothing.
struct Outcome {
  std::vector<float> prefill_logits = std::vector<float>(kPromptLen * kVocab);
  std::vector<float> step_logits = std::vector<float>(kSteps * kVocab);
  int32_t sampled[kSteps] = {};
  int32_t generated[kGenMax] = {};
  uint32_t n_generated = 0;
  int32_t streamed[kGenMax] = {};
  uint32_t n_streamed = 0;
  uint32_t len0 = 0, len1_after_generate = 0, len1_after_remove = 0;
  moerun_model_info info{};
  moerun_model_info info_memory{};
};

struct Stream {
  int32_t* tokens;
  uint32_t* n;
};

int OnToken(void* user, int32_t token) {
  auto* s = static_cast<Stream*>(user);
  if (*s->n < kGenMax) s->tokens[(*s->n)++] = token;
  return 1;
}

// Per-run bookkeeping. Until the armed allocation has failed, nothing here may allocate.
struct ScenarioRun {
  const Scenario& sc;
  const std::string& path;
  const std::vector<char>& unaligned;  // the file's bytes at offset 1
  Outcome* out;
  int oom_calls = 0;
  bool broken = false;  // a failure was reported; the run stops

  // Reports an unexpected status; disarms first so that the report itself can allocate.
  void Fail(const char* call, moerun_status st, const char* what) {
    moerun::fault::Disarm();
    ADD_FAILURE() << sc.name << ": " << call << " returned " << moerun_status_string(st) << " (" << moerun_last_error()
                  << "): " << what;
    broken = true;
  }

  // Runs call; MOERUN_ERR_OUT_OF_MEMORY is accepted when the armed allocation has failed, then
  // after_oom checks what the failure left and the call is retried, which must succeed.
  template <typename Call, typename AfterOom>
  bool Step(const char* name, Call call, AfterOom after_oom) {
    if (broken) return false;
    moerun_status st = call();
    if (st == MOERUN_OK) return true;
    if (st != MOERUN_ERR_OUT_OF_MEMORY) {
      Fail(name, st, "expected MOERUN_OK or MOERUN_ERR_OUT_OF_MEMORY");
      return false;
    }
    const bool fired = moerun::fault::Fired();
    moerun::fault::Disarm();
    if (!fired) {
      Fail(name, st, "out of memory without an injected failure");
      return false;
    }
    ++oom_calls;
    if (moerun_last_error()[0] == '\0') ADD_FAILURE() << sc.name << ": " << name << ": no error message";
    after_oom();
    if (broken) return false;
    st = call();
    if (st != MOERUN_OK) {
      Fail(name, st, "the retry after an out-of-memory failure failed");
      return false;
    }
    return true;
  }

  void Execute();
};

void ScenarioRun::Execute() {
  moerun_model_options mo;
  moerun_model_options_init(&mo);
  mo.backend = sc.backend;
  mo.precision = sc.precision;
  mo.n_threads = sc.n_threads;
  auto* const kSentinelModel = reinterpret_cast<moerun_model*>(0x10);
  moerun_model* model = kSentinelModel;
  auto untouched_model = [&] {
    if (model != kSentinelModel) ADD_FAILURE() << sc.name << ": failed load wrote its out-parameter";
  };
  Step("moerun_model_load", [&] { return moerun_model_load(path.c_str(), &mo, &model); }, untouched_model);
  if (broken) return;

  auto get_info = [&](moerun_model* m, moerun_model_info* info) {
    return Step("moerun_model_get_info",
                [&] {
                  moerun_model_info_init(info);
                  info->vocab_size = kUntouched;
                  return moerun_model_get_info(m, info);
                },
                [&] {
                  if (info->vocab_size != kUntouched) ADD_FAILURE() << sc.name << ": failed get_info wrote out_info";
                });
  };
  get_info(model, &out->info);

  // The unaligned buffer takes the copy path of load_from_memory.
  moerun_model* from_memory = kSentinelModel;
  if (sc.from_memory)
    Step("moerun_model_load_from_memory",
       [&] { return moerun_model_load_from_memory(unaligned.data() + 1, unaligned.size() - 1, &mo, &from_memory); },
       [&] {
         if (from_memory != kSentinelModel) ADD_FAILURE() << sc.name << ": failed load wrote its out-parameter";
       });
  if (!broken && sc.from_memory) get_info(from_memory, &out->info_memory);
  if (from_memory != kSentinelModel) moerun_model_destroy(from_memory);

  moerun_session_options so;
  moerun_session_options_init(&so);
  so.kv_capacity = 64;
  so.max_sequences = 2;
  so.max_batch_tokens = 16;
  so.n_threads = sc.n_threads;
  auto* const kSentinelSession = reinterpret_cast<moerun_session*>(0x20);
  moerun_session* session = kSentinelSession;
  Step("moerun_session_create", [&] { return moerun_session_create(model, &so, &session); },
       [&] {
         if (session != kSentinelSession) ADD_FAILURE() << sc.name << ": failed session_create wrote out_session";
       });

  moerun_sampler_options sopt;
  moerun_sampler_options_init(&sopt);
  sopt.temperature = 0.8f;
  sopt.top_k = 50;
  sopt.top_p = 0.9f;
  sopt.seed = 1234;
  auto* const kSentinelSampler = reinterpret_cast<moerun_sampler*>(0x30);
  moerun_sampler* sampler = kSentinelSampler;
  Step("moerun_sampler_create", [&] { return moerun_sampler_create(&sopt, &sampler); },
       [&] {
         if (sampler != kSentinelSampler) ADD_FAILURE() << sc.name << ": failed sampler_create wrote out_sampler";
       });

  // A failed decode leaves the sequence as it was. Its logits row 0 is either gone (the forward pass
  // had started) or still the previous decode's (it failed before), never something half-computed.
  auto decode_failed = [&](int32_t seq, uint32_t before, const float* previous_row0) {
    uint32_t len = kUntouched;
    EXPECT_EQ(moerun_session_seq_length(session, seq, &len), MOERUN_OK);
    EXPECT_EQ(len, before) << sc.name << ": a failed decode changed sequence " << seq;
    const float* l = nullptr;
    const moerun_status st = moerun_session_get_logits(session, 0, &l);
    if (st == MOERUN_OK && previous_row0) {
      EXPECT_EQ(std::memcmp(l, previous_row0, kVocab * sizeof(float)), 0)
          << sc.name << ": a failed decode left other logits than the previous decode's";
    } else {
      EXPECT_EQ(st, MOERUN_ERR_INVALID_ARGUMENT) << sc.name << ": logits readable after a failed first decode";
    }
  };

  // Prefill with logits for every position.
  const uint8_t all_logits[kPromptLen] = {1, 1, 1, 1};
  moerun_batch b;
  moerun_batch_init(&b);
  b.n_tokens = kPromptLen;
  b.tokens = kPrompt;
  b.logits = all_logits;
  if (Step("moerun_session_decode (prefill)", [&] { return moerun_session_decode(session, &b); },
           [&] { decode_failed(0, 0, nullptr); })) {
    for (uint32_t i = 0; i < kPromptLen; ++i) {
      const float* l = nullptr;
      if (moerun_session_get_logits(session, i, &l) != MOERUN_OK) return Fail("get_logits", MOERUN_OK, "prefill row");
      std::memcpy(out->prefill_logits.data() + i * kVocab, l, kVocab * sizeof(float));
    }
  }

  // Single-token steps: sample from the last logits, decode the sample.
  const float* last = out->prefill_logits.data() + (kPromptLen - 1) * kVocab;
  for (int s = 0; s < kSteps && !broken; ++s) {
    int32_t tok = -7;
    Step("moerun_sampler_sample", [&] { return moerun_sampler_sample(sampler, last, kVocab, &tok); },
         [&] {
           if (tok != -7) ADD_FAILURE() << sc.name << ": failed sample wrote out_token";
         });
    out->sampled[s] = tok;
    moerun_batch_init(&b);
    b.n_tokens = 1;
    b.tokens = &out->sampled[s];
    const uint32_t before = kPromptLen + s;
    const float* previous_row0 = s == 0 ? out->prefill_logits.data() : out->step_logits.data() + (s - 1) * kVocab;
    if (!Step("moerun_session_decode (step)", [&] { return moerun_session_decode(session, &b); },
              [&] { decode_failed(0, before, previous_row0); }))
      break;
    const float* l = nullptr;
    if (moerun_session_get_logits(session, 0, &l) != MOERUN_OK) return Fail("get_logits", MOERUN_OK, "step row");
    std::memcpy(out->step_logits.data() + s * kVocab, l, kVocab * sizeof(float));
    last = out->step_logits.data() + s * kVocab;
  }
  if (!broken) moerun_session_seq_length(session, 0, &out->len0);

  // Streaming generation into sequence 1 with its own sampler. moerun_generate is a loop of decodes:
  // a failure may leave the prompt and some tokens in the sequence (the header promises nothing
  // more), so the sequence is removed and generation starts over with a fresh sampler.
  moerun_sampler* gen_sampler = kSentinelSampler;
  Step("moerun_sampler_create", [&] { return moerun_sampler_create(&sopt, &gen_sampler); }, [] {});
  Stream stream{out->streamed, &out->n_streamed};
  uint32_t n_gen = kUntouched;
  Step("moerun_generate",
       [&] {
         out->n_streamed = 0;
         return moerun_generate(session, gen_sampler, 1, kGenPrompt, kGenPromptLen, kGenMax, OnToken, &stream,
                                out->generated, &n_gen);
       },
       [&] {
         EXPECT_EQ(n_gen, kUntouched) << sc.name << ": failed generate wrote out_n_generated";
         uint32_t len0 = 0;
         EXPECT_EQ(moerun_session_seq_length(session, 0, &len0), MOERUN_OK);
         EXPECT_EQ(len0, kPromptLen + kSteps) << sc.name << ": generate on sequence 1 changed sequence 0";
         EXPECT_EQ(moerun_session_seq_remove(session, 1), MOERUN_OK);
         moerun_sampler_destroy(gen_sampler);
         gen_sampler = kSentinelSampler;
         if (moerun_sampler_create(&sopt, &gen_sampler) != MOERUN_OK) Fail("moerun_sampler_create", MOERUN_OK, "");
       });
  out->n_generated = n_gen;
  if (!broken) moerun_session_seq_length(session, 1, &out->len1_after_generate);
  Step("moerun_session_seq_remove", [&] { return moerun_session_seq_remove(session, 1); }, [] {});
  if (!broken) moerun_session_seq_length(session, 1, &out->len1_after_remove);

  if (gen_sampler != kSentinelSampler) moerun_sampler_destroy(gen_sampler);
  if (sampler != kSentinelSampler) moerun_sampler_destroy(sampler);
  if (session != kSentinelSession) moerun_session_destroy(session);
  if (model != kSentinelModel) moerun_model_destroy(model);
}

bool SameString(const char* a, const char* b) { return a == b || (a && b && std::strcmp(a, b) == 0); }

bool SameInfo(const moerun_model_info& a, const moerun_model_info& b) {
  return a.vocab_size == b.vocab_size && a.num_layers == b.num_layers && a.hidden_size == b.hidden_size &&
         a.weight_bytes == b.weight_bytes && a.kv_bytes_per_token == b.kv_bytes_per_token &&
         SameString(a.backend, b.backend) && SameString(a.architecture, b.architecture);
}

void ExpectSameOutcome(const Scenario& sc, uint64_t k, const Outcome& got, const Outcome& want) {
  SCOPED_TRACE(std::string(sc.name) + ", failing allocation " + std::to_string(k));
  EXPECT_TRUE(SameInfo(got.info, want.info));
  EXPECT_TRUE(SameInfo(got.info_memory, want.info_memory));
  // Bit-exact: a retried call must compute what the clean run computed.
  EXPECT_EQ(std::memcmp(got.prefill_logits.data(), want.prefill_logits.data(), want.prefill_logits.size() * 4), 0)
      << "prefill logits differ";
  EXPECT_EQ(std::memcmp(got.step_logits.data(), want.step_logits.data(), want.step_logits.size() * 4), 0)
      << "step logits differ";
  EXPECT_EQ(std::vector<int32_t>(got.sampled, got.sampled + kSteps),
            std::vector<int32_t>(want.sampled, want.sampled + kSteps));
  EXPECT_EQ(got.n_generated, want.n_generated);
  EXPECT_EQ(std::vector<int32_t>(got.generated, got.generated + kGenMax),
            std::vector<int32_t>(want.generated, want.generated + kGenMax));
  EXPECT_EQ(std::vector<int32_t>(got.streamed, got.streamed + got.n_streamed),
            std::vector<int32_t>(want.streamed, want.streamed + want.n_streamed));
  EXPECT_EQ(got.len0, want.len0);
  EXPECT_EQ(got.len1_after_generate, want.len1_after_generate);
  EXPECT_EQ(got.len1_after_remove, 0u);
}

void LogSink(void*, moerun_log_level, const char*) {}

class FaultSweep : public ::testing::TestWithParam<Scenario> {
 protected:
  static void SetUpTestSuite() {
    // Failures are logged by design; thousands of them would bury the test output.
    moerun_set_log_callback(LogSink, nullptr, MOERUN_LOG_DEBUG);
  }
  static void TearDownTestSuite() { moerun_set_log_callback(nullptr, nullptr, MOERUN_LOG_WARNING); }
};

TEST_P(FaultSweep, EveryAllocationOfLoadAndGenerate) {
  const Scenario& sc = GetParam();
  static const std::string bf16_path = Converted(WeightsMode::kKeep);
  static const std::string int8_path = Converted(WeightsMode::kInt8);
  const std::string& path = sc.weights == WeightsMode::kInt8 ? int8_path : bf16_path;
  const std::vector<char> bytes = ReadAll(path);
  std::vector<char> unaligned(bytes.size() + 1);
  std::memcpy(unaligned.data() + 1, bytes.data(), bytes.size());

  // A first run sets up what lives for the rest of the process and so would look like a leak:
  // oneDNN's primitive cache (it allocates through the same operator new; the sweep then injects
  // failures into oneDNN's cache lookups but not into its JIT compilation, which is oneDNN's own
  // business and takes seconds per shape) and CPU tables, the C++ locale.
  Outcome clean;
  OnFreshThread([&] {
    ScenarioRun warm_up{sc, path, unaligned, &clean};
    warm_up.Execute();
  });
  // Clean run: counts N and records the reference outcome.
  uint64_t n = 0, n_load = 0;
  const int64_t baseline = StableLive();
  OnFreshThread([&] {
    moerun_model* m = nullptr;
    moerun_model_options mo;
    moerun_model_options_init(&mo);
    mo.backend = sc.backend;
    moerun::fault::Arm(0);
    const moerun_status st = moerun_model_load(path.c_str(), &mo, &m);
    n_load = moerun::fault::Count();
    moerun::fault::Disarm();
    EXPECT_EQ(st, MOERUN_OK);
    moerun_model_destroy(m);
    ScenarioRun run{sc, path, unaligned, &clean};
    moerun::fault::Arm(0);
    run.Execute();
    n = moerun::fault::Count();
    moerun::fault::Disarm();
    EXPECT_FALSE(run.broken);
    EXPECT_EQ(run.oom_calls, 0);
  });
  // The hook must see the library's own allocations, or the sweep would pass without testing.
  ASSERT_GT(n_load, 10u) << "the allocator hook does not see libmoerun's allocations";
  ASSERT_GT(n, n_load);
  ASSERT_EQ(clean.n_generated, kGenMax);
  ASSERT_EQ(clean.len0, kPromptLen + kSteps);
  EXPECT_EQ(SettledLive(baseline), baseline) << "the clean run leaked";
  // Also sets up gtest's per-thread trace stack, which lives on and would count as a leak later.
  ExpectSameOutcome(sc, 0, clean, clean);
  Outcome got;
  const int64_t live_before_sweep = StableLive();

  const auto start = std::chrono::steady_clock::now();
  uint64_t failed_calls = 0, absorbed = 0, not_reached = 0;
  // MOERUN_FAULT_ONLY_K=k runs that one k (with MOERUN_FAULT_BACKTRACE=1: where it fails).
  const char* only = std::getenv("MOERUN_FAULT_ONLY_K");
  const uint64_t first_k = only ? std::strtoull(only, nullptr, 10) : 1, last_k = only ? first_k : n;
  for (uint64_t k = first_k; k <= last_k; ++k) {
    got = Outcome();
    bool fired = false, broken = false;
    OnFreshThread([&] {
      ScenarioRun run{sc, path, unaligned, &got};
      moerun::fault::Arm(k);
      run.Execute();
      fired = moerun::fault::Fired();
      moerun::fault::Disarm();
      broken = run.broken;
      failed_calls += run.oom_calls;
      absorbed += fired && run.oom_calls == 0;
    });
    if (broken) FAIL() << sc.name << ": stopped at failing allocation " << k << " of " << n;
    // With two threads, which thread runs which work item varies, and with it how many per-thread
    // scratch buffers get allocated: a run may make a few allocations fewer than the clean one.
    not_reached += !fired;
    ExpectSameOutcome(sc, k, got, clean);
    const int64_t live = SettledLive(live_before_sweep);
    if (live != live_before_sweep)
      FAIL() << sc.name << ": failing allocation " << k << " leaked " << live - live_before_sweep << " blocks";
    if (::testing::Test::HasFailure()) return;
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("[ sweep    ] %s: N = %llu allocations (load %llu), %llu calls failed with OOM, %llu failures "
              "absorbed, %llu k not reached, %.1f s\n",
              sc.name, static_cast<unsigned long long>(n), static_cast<unsigned long long>(n_load),
              static_cast<unsigned long long>(failed_calls), static_cast<unsigned long long>(absorbed),
              static_cast<unsigned long long>(not_reached), seconds);
  if (sc.n_threads == 1) {
    EXPECT_EQ(not_reached, 0u);
  } else {
    EXPECT_LE(not_reached, n / 50);
  }
  if (only) return;
  EXPECT_GT(failed_calls, n / 2) << "most injected failures should surface as MOERUN_ERR_OUT_OF_MEMORY";
}

INSTANTIATE_TEST_SUITE_P(
    Backends, FaultSweep,
    // The reference backend allocates in its q8 path and in attention; the int8 file at bf16 precision
    // reaches both (its other paths allocate nothing, and it is slow).
    ::testing::Values(
        Scenario{"reference_int8file_bf16", "reference", WeightsMode::kInt8, MOERUN_PRECISION_BF16, 1, false},
        Scenario{"cpu_bf16file_f32_1thread", "cpu", WeightsMode::kKeep, MOERUN_PRECISION_F32, 1, true},
        Scenario{"cpu_bf16file_bf16_2threads", "cpu", WeightsMode::kKeep, MOERUN_PRECISION_BF16, 2, false},
        Scenario{"cpu_int8file_bf16_1thread", "cpu", WeightsMode::kInt8, MOERUN_PRECISION_BF16, 1, false},
        Scenario{"cpu_int8file_bf16_2threads", "cpu", WeightsMode::kInt8, MOERUN_PRECISION_BF16, 2, false}),
    [](const ::testing::TestParamInfo<Scenario>& i) { return std::string(i.param.name); });

// The converter: every failing allocation gives kOutOfMemory with a clear message, and leaves neither
// the output nor its temporary file behind. The single-file v2lite fixture in keep mode needs the
// fewest allocations of the fixtures; the output goes to a tmpfs where there is one, since the
// writer's fsync would otherwise dominate the sweep.
TEST(FaultSweepConverter, EveryAllocationOfAConversion) {
  const fs::path root = fs::is_directory("/dev/shm") ? fs::path("/dev/shm") : fs::path(::testing::TempDir());
  const fs::path dir = root / ("moerun_fault_convert_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string out = (dir / "out.moerun").string();
  const std::string src = MOERUN_TEST_DATA_DIR "/golden/v2lite_bf16";
  const moerun::convert::ConvertOptions o;

  // A first conversion sets up what lives for the rest of the process (the C++ locale, ...).
  OnFreshThread([&] { EXPECT_TRUE(moerun::convert::ConvertHfCheckpoint(src, out, o).ok()); });
  const std::vector<char> clean = ReadAll(out);
  fs::remove(out);
  uint64_t n = 0;
  OnFreshThread([&] {
    moerun::fault::Arm(0);
    const moerun::Status st = moerun::convert::ConvertHfCheckpoint(src, out, o);
    n = moerun::fault::Count();
    moerun::fault::Disarm();
    EXPECT_TRUE(st.ok()) << st.message();
  });
  ASSERT_GT(n, 100u);
  fs::remove(out);

  const auto start = std::chrono::steady_clock::now();
  uint64_t failed = 0;
  const char* only = std::getenv("MOERUN_FAULT_ONLY_K");
  const uint64_t first_k = only ? std::strtoull(only, nullptr, 10) : 1, last_k = only ? first_k : n;
  for (uint64_t k = first_k; k <= last_k; ++k) {
    const int64_t live = moerun::fault::Live();
    {
      moerun::Status st;
      bool fired = false;
      OnFreshThread([&] {
        moerun::fault::Arm(k);
        st = moerun::convert::ConvertHfCheckpoint(src, out, o);
        fired = moerun::fault::Fired();
        moerun::fault::Disarm();
      });
      EXPECT_TRUE(fired) << k;
      if (st.ok()) {
        EXPECT_EQ(ReadAll(out), clean) << "failing allocation " << k << ": absorbed, but a different file";
      } else {
        ++failed;
        EXPECT_EQ(st.code(), moerun::StatusCode::kOutOfMemory) << k << ": " << st.message();
        EXPECT_NE(st.message().find("out of memory"), std::string::npos) << k << ": " << st.message();
      }
      fs::remove(out);
      EXPECT_TRUE(fs::is_empty(dir)) << "failing allocation " << k << " left a file behind";
    }
    if (SettledLive(live) != live) FAIL() << "failing allocation " << k << " leaked " << moerun::fault::Live() - live;
    if (::testing::Test::HasFailure()) break;
  }
  fs::remove_all(dir);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("[ sweep    ] converter (v2lite, keep): N = %llu allocations, %llu failed with OOM, %.1f s\n",
              static_cast<unsigned long long>(n), static_cast<unsigned long long>(failed), seconds);
  if (!only) {
    EXPECT_GT(failed, n / 2);
  }
}

}  // namespace
