// Writes the seed corpus of fuzz_moerun_file into the folder given as argv[1]: minimal tiny models
// (tests/unit/tiny_model) in every weight dtype and both architectures, each prefixed with the
// harness's flag byte (see moerun_file_fuzz.cc), once with and once without weight checksums.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "tests/unit/tiny_model.h"

namespace fs = std::filesystem;
using moerun::Architecture;
using moerun::DType;

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUT_DIR\n", argv[0]);
    return 2;
  }
  const fs::path out = argv[1];
  fs::create_directories(out);
  struct Seed {
    const char* name;
    moerun::testing::TinyModelOptions options;
  };
  const std::vector<Seed> seeds = {
      {"v3_bf16", {Architecture::kDeepseekV3, DType::kBF16, true, 1, true}},
      {"v2_bf16_no_q_lora", {Architecture::kDeepseekV2, DType::kBF16, false, 2, true}},
      {"v3_fp8", {Architecture::kDeepseekV3, DType::kF8E4M3, true, 3, true}},
      {"v3_q8", {Architecture::kDeepseekV3, DType::kQ8Panel, true, 4, true}},
  };
  const fs::path tmp = out / "model.tmp";
  for (const Seed& s : seeds) {
    const moerun::Status st = moerun::testing::WriteTinyModel(tmp.string(), s.options);
    if (!st.ok()) {
      std::fprintf(stderr, "%s: %s\n", s.name, st.message().c_str());
      return 1;
    }
    std::ifstream in(tmp, std::ios::binary);
    const std::vector<char> file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    for (char flags : {'\0', '\1'}) {
      std::ofstream seed(out / (std::string(s.name) + "_flags" + std::to_string(int(flags)) + ".bin"),
                         std::ios::binary);
      seed.put(flags);
      seed.write(file.data(), static_cast<std::streamsize>(file.size()));
    }
  }
  fs::remove(tmp);
  return 0;
}
