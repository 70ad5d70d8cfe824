// The moerun CLI as a user runs it: convert, inspect, run (--dump-logits against transformers'
// logits, --json), bench, and one-line errors with a non-zero exit.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "converters/safetensors.h"
#include "moerun/moerun.h"
#include "tests/api/test_dir.h"

namespace {

struct Result {
  int code;
  std::string out;
};

Result RunProgram(const std::string& program, const std::string& args) {
  const std::string cmd = program + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  const int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

Result RunCli(const std::string& args) { return RunProgram(MOERUN_CLI, args); }

std::string Dir() { return moerun::testing::TestDir(); }

std::string Converted(const std::string& fixture, const std::string& weights = "keep") {
  const std::string out = Dir() + "/cli_" + fixture + "_" + weights + ".moerun";
  const Result r = RunCli("convert " MOERUN_TEST_DATA_DIR "/golden/" + fixture + " -o " + out + " --weights " + weights);
  EXPECT_EQ(r.code, 0) << r.out;
  return out;
}

// The "generated": [...] part of `run --json` output.
std::string Generated(const std::string& s) {
  const size_t at = s.find("\"generated\"");
  return at == std::string::npos ? "" : s.substr(at, s.find(']', at) - at);
}

TEST(Cli, DumpLogitsMatchesTransformers) {
  for (const std::string& fixture : std::vector<std::string>{"v2lite_bf16", "v3_fp8"}) {
    const std::string model = Converted(fixture);
    auto golden = moerun::convert::SafetensorsFile::Open(MOERUN_TEST_DATA_DIR "/golden/" + fixture + "/golden.safetensors");
    ASSERT_TRUE(golden.ok());
    const auto* prompt_t = golden.value()->Find("prompt.1");
    const auto* ref_t = golden.value()->Find("prefill_logits.1");
    ASSERT_TRUE(prompt_t && ref_t);
    const int32_t* prompt = reinterpret_cast<const int32_t*>(golden.value()->Data(*prompt_t));
    std::string ids;
    for (uint64_t i = 0; i < prompt_t->numel; ++i) ids += (i ? "," : "") + std::to_string(prompt[i]);
    const std::string dump = Dir() + "/cli_" + fixture + ".f32";
    const Result r = RunCli("run " + model + " --ids " + ids + " --max-tokens 3 --greedy --json --dump-logits " + dump);
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("\"generated\": ["), std::string::npos) << r.out;
    std::ifstream f(dump, std::ios::binary);
    std::vector<char> raw((std::istreambuf_iterator<char>(f)), {});
    ASSERT_EQ(raw.size(), ref_t->size()) << "dump must be float32 [n_prompt, vocab]";
    const float* got = reinterpret_cast<const float*>(raw.data());
    const float* ref = reinterpret_cast<const float*>(golden.value()->Data(*ref_t));
    double num = 0, den = 0;
    for (uint64_t i = 0; i < ref_t->numel; ++i) {
      num += (got[i] - ref[i]) * static_cast<double>(got[i] - ref[i]);
      den += ref[i] * static_cast<double>(ref[i]);
    }
    EXPECT_LE(std::sqrt(num / den), 1e-4) << fixture;
  }
}

TEST(Cli, InspectShowsConfigTensorsAndKvBytes) {
  const std::string model = Converted("v3_fp8");
  Result r = RunCli("inspect " + model);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("DeepseekV3"), std::string::npos);
  EXPECT_NE(r.out.find("f8_e4m3"), std::string::npos);
  EXPECT_NE(r.out.find("bytes per token"), std::string::npos);
  r = RunCli("inspect " + model + " --json");
  ASSERT_EQ(r.code, 0);
  EXPECT_EQ(r.out.front(), '{');
  EXPECT_NE(r.out.find("\"kv_cache_bytes_per_token\""), std::string::npos);
  EXPECT_NE(r.out.find("\"tensors\": [{"), std::string::npos);
}

TEST(Cli, SamplingIsReproducibleWithASeed) {
  const std::string model = Converted("v3_bf16");
  const std::string args = "run " + model + " --ids 0,5,9 --max-tokens 12 --temperature 0.9 --top-k 30 --top-p 0.95 --seed 11 --json";
  const Result a = RunCli(args), b = RunCli(args);
  ASSERT_EQ(a.code, 0) << a.out;
  EXPECT_EQ(Generated(a.out), Generated(b.out));
  const Result ref = RunCli("run " + model + " --ids 0,5,9 --max-tokens 4 --greedy --backend reference --precision f32 --json");
  const Result cpu = RunCli("run " + model + " --ids 0,5,9 --max-tokens 4 --greedy --backend cpu --json");
  ASSERT_EQ(ref.code, 0) << ref.out;
  EXPECT_EQ(Generated(ref.out), Generated(cpu.out));
  EXPECT_NE(cpu.out.find("\"precision\": \"f32\""), std::string::npos) << cpu.out;
}

// --precision defaults to auto: int8 activations for int8 weights, f32 otherwise; the run says which.
TEST(Cli, AutoPrecisionFollowsTheWeights) {
  const std::string model = Converted("v3_bf16", "int8");
  const std::string args = "run " + model + " --ids 0,5,9 --max-tokens 4 --greedy --json";
  const Result by_default = RunCli(args), bf16 = RunCli(args + " --precision bf16"), f32 = RunCli(args + " --precision f32");
  ASSERT_EQ(by_default.code, 0) << by_default.out;
  EXPECT_NE(by_default.out.find("\"precision\": \"bf16\""), std::string::npos) << by_default.out;
  EXPECT_NE(f32.out.find("\"precision\": \"f32\""), std::string::npos) << f32.out;
  EXPECT_EQ(Generated(by_default.out), Generated(bf16.out));
  // Two threads: the GEMM probe's branch that also runs one single-threaded matmul per thread.
  const Result bench = RunCli("bench " + model + " --prompt 8 --gen 2 --repeat 1 --probe-mib 32 --threads 2 --json");
  ASSERT_EQ(bench.code, 0) << bench.out;
  EXPECT_NE(bench.out.find("\"precision\": \"bf16\""), std::string::npos) << bench.out;
  EXPECT_NE(bench.out.find("\"gemm_probe_used\": \"int8\""), std::string::npos) << bench.out;
  const std::string key = "\"gemm_peak_probe_int8_gop_per_s\": ";
  const size_t at = bench.out.find(key);
  ASSERT_NE(at, std::string::npos) << bench.out;
  EXPECT_GT(std::strtod(bench.out.c_str() + at + key.size(), nullptr), 0.0) << bench.out;
}

TEST(Cli, BenchPrintsFigures) {
  const std::string model = Converted("v2lite_bf16");
  const Result r = RunCli("bench " + model +
                          " --prompt 16 --gen 4 --repeat 2 --probe-mib 32 --threads 1 --batch 1,2 --context 20 --json");
  ASSERT_EQ(r.code, 0) << r.out;
  for (const char* key : {"\"prefill\"", "\"tokens_per_s\"", "\"bandwidth_probe_gb_per_s\"",
                          "\"gemm_peak_probe_bf16_gflop_per_s\"", "\"gemm_peak_probe_int8_gop_per_s\"",
                          "\"fraction_of_gemm_peak\"", "\"fraction_of_adjacent_gemm_probe\"", "\"fraction_of_roofline\"",
                          "\"weight_bytes\"", "\"fraction_of_bandwidth\"", "\"fraction_of_adjacent_bandwidth_probe\"",
                          "\"time_to_first_token_s\"", "\"file_read_s\"", "\"peak_rss_mib\"", "\"file_2mib_page_share\"",
                          "\"active_weight_bytes_per_token\"", "\"weight_bytes_per_step\"", "\"batch\": 2", "\"context\": 20",
                          "\"context_prefill\"", "\"fraction_of_bandwidth_median_pass\""})
    EXPECT_NE(r.out.find(key), std::string::npos) << key << " missing in " << r.out;
  // The read probe reports its best pass and its median pass, which cannot be faster.
  auto number_after = [&](const std::string& key) {
    const size_t at = r.out.find("\"" + key + "\": ");
    return at == std::string::npos ? -1.0 : std::strtod(r.out.c_str() + at + key.size() + 4, nullptr);
  };
  const double best = number_after("bandwidth_probe_gb_per_s");
  const double median = number_after("bandwidth_probe_median_pass_gb_per_s");
  EXPECT_GT(median, 0.0) << r.out;
  EXPECT_LE(median, best) << r.out;
  // Steps between read passes: measured for batch 1 and the context run, null for batch 2. Only where
  // probes can run with the model loaded (the adjacent ones then have a figure too).
  auto count = [&](const std::string& what) {
    size_t n = 0;
    for (size_t at = r.out.find(what); at != std::string::npos; at = r.out.find(what, at + 1)) ++n;
    return n;
  };
  if (r.out.find("\"fraction_of_adjacent_bandwidth_probe\": {\"median\": 0,") == std::string::npos) {
    EXPECT_EQ(count("\"fraction_of_interleaved_read_passes\": {\"median\": "), 2u) << r.out;
    EXPECT_EQ(count("\"fraction_of_interleaved_read_passes\": null"), 1u) << r.out;
    const std::string key = "\"fraction_of_interleaved_read_passes\": {\"median\": ";
    const size_t at = r.out.find(key);
    ASSERT_NE(at, std::string::npos) << r.out;
    EXPECT_GT(std::strtod(r.out.c_str() + at + key.size(), nullptr), 0.0) << r.out;
  }
  // A prompt shorter than the decode runs' own 8-token prompts still leaves room for every step.
  const Result text =
      RunCli("bench " + model + " --prompt 2 --gen 9 --repeat 1 --probe-mib 32 --threads 1 --batch 1,2 --precision bf16");
  ASSERT_EQ(text.code, 0) << text.out;
  EXPECT_NE(text.out.find("decode batch 1"), std::string::npos) << text.out;
  const bool probes_ran = text.out.find("0.0% [0.0, 0.0] of the faster of the probes") == std::string::npos;
  if (probes_ran) {
    EXPECT_NE(text.out.find("each step between two read passes: "), std::string::npos) << text.out;
  }
  EXPECT_NE(text.out.find("mapped with 2 MiB pages: "), std::string::npos) << text.out;
  // The KV bytes it counts are the session's (bf16 rows where the backend keeps them so).
  moerun_model_options mo;
  moerun_model_options_init(&mo);
  mo.precision = MOERUN_PRECISION_BF16;
  moerun_model* m = nullptr;
  ASSERT_EQ(moerun_model_load(model.c_str(), &mo, &m), MOERUN_OK) << moerun_last_error();
  moerun_model_info info;
  moerun_model_info_init(&info);
  ASSERT_EQ(moerun_model_get_info(m, &info), MOERUN_OK);
  moerun_model_destroy(m);
  const std::string kv = "KV " + std::to_string(info.kv_bytes_per_token) + " bytes per token";
  EXPECT_NE(text.out.find(kv), std::string::npos) << kv << " missing in " << text.out;
}

TEST(Cli, ErrorsAreOneLineAndNonZero) {
  const std::string model = Converted("v3_bf16");
  for (const std::string& args : std::vector<std::string>{"run /no/such.moerun --ids 1", "run " + model + " --ids 1,x",
                                 "run " + model + " --ids 99999", "run " + model, "frobnicate",
                                 "run " + model + " --ids 1 --precision f8", "convert /no/such/dir -o " + Dir() + "/x.moerun",
                                 "bench " + model + " --prompt 0"}) {
    const Result r = RunCli(args);
    EXPECT_NE(r.code, 0) << args;
    EXPECT_NE(r.out.find("moerun: "), std::string::npos) << args << ": " << r.out;
  }
  EXPECT_FALSE(std::ifstream(Dir() + "/x.moerun").good()) << "failed convert left a file behind";
}

// The developer's A/B tool (tools/dev/decode_ab.cc): this build's library against a copy of itself.
TEST(Cli, DecodeAbComparesTwoLibraries) {
  const std::string model = Converted("v2lite_bf16");
  const std::string lib = MOERUN_LIBRARY, copy = Dir() + "/libmoerun_copy.so";
  {
    std::ifstream in(lib, std::ios::binary);
    std::ofstream out(copy, std::ios::binary);
    out << in.rdbuf();
    ASSERT_TRUE(out.good());
  }
  Result r = RunProgram(MOERUN_DECODE_AB, lib + " " + copy + " " + model + " --steps 6 --warmup 2 --threads 1 --context 4");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("6 steps each, 1 threads: A "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("; B/A "), std::string::npos) << r.out;
  // A context longer than one batch (max_batch_tokens, 512) is decoded in batches.
  r = RunProgram(MOERUN_DECODE_AB, lib + " " + copy + " " + model + " --steps 2 --warmup 1 --threads 1 --context 600");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("2 steps each, 1 threads: A "), std::string::npos) << r.out;
  // Prefill mode: each step a prompt of 20 tokens into an emptied sequence.
  r = RunProgram(MOERUN_DECODE_AB, lib + " " + copy + " " + model + " --steps 2 --warmup 1 --threads 1 --prefill 20");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("2 prompts of 20 each, 1 threads: A "), std::string::npos) << r.out;
  r = RunProgram(MOERUN_DECODE_AB, lib + " " + lib + " " + model);
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("same file"), std::string::npos) << r.out;
  r = RunProgram(MOERUN_DECODE_AB, lib + " " + copy + " " + Dir() + "/no_such.moerun");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("loading the model failed"), std::string::npos) << r.out;
  r = RunProgram(MOERUN_DECODE_AB, lib + " " + copy + " " + model + " --steps x");
  EXPECT_EQ(r.code, 2) << r.out;
}

// The developer's instruction-rate probe (tools/dev/pipe_rates.cc): one line per kind, each a
// plausible count of counter cycles (a vector instruction takes more than 0.05 of a counter cycle
// and, alone on a core, less than 20), and a clear error for a bad option.
TEST(Cli, PipeRatesReportsEveryKind) {
  Result r = RunProgram(MOERUN_PIPE_RATES, "--reps 1");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("median [min, max] of 1 runs"), std::string::npos) << r.out;
  for (const char* kind : {"  vfmadd231ps", "  vpmaddubsw", "  vpmaddwd (", "  vpmaddwd + vpaddd", "  vpaddd "}) {
    const size_t at = r.out.find(kind);
    ASSERT_NE(at, std::string::npos) << kind << ": " << r.out;
    const size_t line_end = r.out.find('\n', at);
    const std::string line = r.out.substr(at, line_end - at);
    const size_t bracket = line.rfind('[');
    ASSERT_NE(bracket, std::string::npos) << line;
    size_t p = bracket;
    while (p > 0 && line[p - 1] == ' ') --p;
    const size_t start = line.rfind(' ', p - 1) + 1;
    const double median = std::stod(line.substr(start, p - start));
    EXPECT_GT(median, 0.05) << line;
    EXPECT_LT(median, 20.0) << line;
  }
  r = RunProgram(MOERUN_PIPE_RATES, "--reps 0");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("--reps needs a number from 1 to 1000"), std::string::npos) << r.out;
  r = RunProgram(MOERUN_PIPE_RATES, "--fast");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("unknown or incomplete option"), std::string::npos) << r.out;
}

}  // namespace
