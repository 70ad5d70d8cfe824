// Shared by the golden tests (golden_test.cc, fp8_weights_test.cc): finding fixture folders,
// reading golden.safetensors, running a fixture's prompts through a Session and measuring the
// logits against HF transformers' (fixture format: tests/data/golden/README.md). Header-only so the
// test binary's source list (tests/CMakeLists.txt globs *_test.cc) needs no change.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "converters/safetensors.h"
#include "runtime/exec/sampler.h"
#include "runtime/exec/session.h"
#include "runtime/format/model_file.h"
#include "runtime/model/model.h"

namespace moerun::golden {

struct Fixture {
  std::string name;  // "own_v3_fp8", "shared_v2lite_bf16", ...
  std::string dir;
};

inline void PrintTo(const Fixture& f, std::ostream* os) { *os << f.name; }

// Every folder holding a golden.safetensors under `root`, sorted, named `prefix` + folder name.
inline std::vector<Fixture> FixturesUnder(const std::string& prefix, const std::string& root) {
  namespace fs = std::filesystem;
  std::vector<Fixture> out;
  if (!fs::is_directory(root)) return out;
  std::vector<std::string> dirs;
  for (const auto& e : fs::directory_iterator(root))
    if (fs::exists(e.path() / "golden.safetensors")) dirs.push_back(e.path().string());
  std::sort(dirs.begin(), dirs.end());
  for (const auto& d : dirs) out.push_back({prefix + fs::path(d).filename().string(), d});
  return out;
}

// The project's own fixtures ("own_*"); the shared development fixtures ("shared_*") too when that
// folder exists.
inline std::vector<Fixture> FindFixtures() {
  std::vector<Fixture> out = FixturesUnder("own_", MOERUN_TEST_DATA_DIR "/golden");
  std::vector<Fixture> shared = FixturesUnder("shared_", MOERUN_SHARED_GOLDEN_DIR);
  out.insert(out.end(), shared.begin(), shared.end());
  return out;
}

template <typename T>
std::vector<T> ReadGolden(const convert::SafetensorsFile& f, const std::string& name) {
  const convert::StTensor* t = f.Find(name);
  if (!t) return {};
  const T* p = reinterpret_cast<const T*>(f.Data(*t));
  return std::vector<T>(p, p + t->size() / sizeof(T));
}

inline double RelL2(const float* a, const float* ref, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    num += (static_cast<double>(a[i]) - ref[i]) * (static_cast<double>(a[i]) - ref[i]);
    den += static_cast<double>(ref[i]) * ref[i];
  }
  return std::sqrt(num / den);
}

// Relative L2 error of each row (position) of a [rows, V] logits matrix.
inline std::vector<double> RowErrors(const std::vector<float>& ours, const std::vector<float>& ref, int64_t V) {
  std::vector<double> e;
  for (size_t r = 0; r * V < ref.size(); ++r) e.push_back(RelL2(&ours[r * V], &ref[r * V], V));
  return e;
}

inline double Quantile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  return v[static_cast<size_t>(q * (v.size() - 1) + 0.5)];
}

struct PromptResult {
  size_t tokens = 0;         // prompt length
  double prefill_err = 0;    // relative L2 over all prefill logits
  double decode_err = 0;     // relative L2 over all decode logits
  std::vector<double> rows;  // per position: prefill rows, then decode rows
};

struct GreedyMiss {
  int prompt;
  size_t step;
  float margin;
};

struct FixtureRun {
  std::vector<PromptResult> prompts;
  std::vector<double> all_rows;  // every position of every prompt
  int checked = 0;               // greedy choices with reference margin >= the threshold
  int agreed = 0;
  std::vector<GreedyMiss> misses;
  std::vector<float> logits;  // ours: per prompt its prefill rows, then its decode rows
};

// Runs every prompt of the fixture in `golden_dir` through `model_path` on one compute path:
// prefill with logits at every position, then decode step by step feeding the reference tokens (so
// every row stays comparable), checking our greedy choice wherever the reference margin is at least
// `margin`. Fatal failures (unopenable files, session errors) abort via ASSERT; callers check
// HasFatalFailure() if they go on.
inline void RunFixture(const std::string& golden_dir, const std::string& model_path, const std::string& backend,
                       Precision precision, double margin, FixtureRun* run) {
  auto golden = convert::SafetensorsFile::Open(golden_dir + "/golden.safetensors");
  ASSERT_TRUE(golden.ok()) << golden.status().message();
  auto file = ModelFile::Open(model_path, VerifyOptions{});
  ASSERT_TRUE(file.ok()) << file.status().message();
  auto model = Model::Create(file.value(), backend, precision, 0);
  ASSERT_TRUE(model.ok()) << model.status().message();
  const int64_t V = model.value()->config().vocab_size;
  for (int i = 0;; ++i) {
    const std::string k = std::to_string(i);
    const auto prompt = ReadGolden<int32_t>(*golden.value(), "prompt." + k);
    if (prompt.empty()) {
      ASSERT_GT(i, 0) << "fixture has no prompts";
      break;
    }
    const auto prefill = ReadGolden<float>(*golden.value(), "prefill_logits." + k);
    const auto generated = ReadGolden<int32_t>(*golden.value(), "generated." + k);
    const auto decode = ReadGolden<float>(*golden.value(), "decode_logits." + k);
    const auto margins = ReadGolden<float>(*golden.value(), "decode_margin." + k);
    ASSERT_EQ(prefill.size(), prompt.size() * V);
    ASSERT_EQ(decode.size(), generated.size() * V);
    ASSERT_EQ(margins.size(), generated.size());

    SessionOptions so;
    so.kv_capacity = static_cast<uint32_t>(prompt.size() + generated.size());
    so.max_batch_tokens = static_cast<uint32_t>(prompt.size());
    auto session = Session::Create(model.value(), so);
    ASSERT_TRUE(session.ok()) << session.status().message();
    Session& s = *session.value();
    std::vector<uint8_t> all(prompt.size(), 1);
    Batch b;
    b.n_tokens = static_cast<int64_t>(prompt.size());
    b.tokens = prompt.data();
    b.logits = all.data();
    ASSERT_TRUE(s.Decode(b).ok());
    std::vector<float> ours(prefill.size());
    for (size_t t = 0; t < prompt.size(); ++t) std::memcpy(&ours[t * V], s.Logits(t).value(), V * sizeof(float));

    PromptResult pr;
    pr.tokens = prompt.size();
    pr.prefill_err = RelL2(ours.data(), prefill.data(), prefill.size());
    std::vector<float> dec(decode.size());
    std::memcpy(&dec[0], &ours[(prompt.size() - 1) * V], V * sizeof(float));
    for (size_t step = 0; step < generated.size(); ++step) {
      if (step > 0) {
        Batch one;
        one.n_tokens = 1;
        one.tokens = &generated[step - 1];
        ASSERT_TRUE(s.Decode(one).ok());
        std::memcpy(&dec[step * V], s.Logits(0).value(), V * sizeof(float));
      }
      if (margins[step] >= margin) {
        const bool agree = Sampler::Argmax(&dec[step * V], V) == generated[step];
        run->checked++;
        run->agreed += agree;
        if (!agree) run->misses.push_back({i, step, margins[step]});
      }
    }
    pr.decode_err = RelL2(dec.data(), decode.data(), decode.size());
    pr.rows = RowErrors(ours, prefill, V);
    const std::vector<double> drows = RowErrors(dec, decode, V);
    pr.rows.insert(pr.rows.end(), drows.begin(), drows.end());
    run->all_rows.insert(run->all_rows.end(), pr.rows.begin(), pr.rows.end());
    run->logits.insert(run->logits.end(), ours.begin(), ours.end());
    run->logits.insert(run->logits.end(), dec.begin(), dec.end());
    run->prompts.push_back(std::move(pr));
  }
}

}  // namespace moerun::golden
