// Builds small random .moerun files directly with ModelWriter (no converter), following the graph
// contract, for tests of the reader, the runtime and the corrupt-file corpus.
#pragma once

#include <string>

#include "runtime/core/dtype.h"
#include "runtime/core/status.h"
#include "runtime/model/config.h"

namespace moerun::testing {

struct TinyModelOptions {
  Architecture architecture = Architecture::kDeepseekV3;
  DType linear_dtype = DType::kBF16;  // kF8E4M3 writes 128x128 block scales
  bool q_lora = true;
  uint32_t seed = 1;
  bool minimal = false;  // smallest dims that still exercise every op: fuzz seeds stay a few KB
};

ModelConfig TinyConfig(const TinyModelOptions& o);
Status WriteTinyModel(const std::string& path, const TinyModelOptions& o);

// A directory under $TEST_TMPDIR (default /tmp), named for this process; removed with its contents
// when the process exits.
std::string TempDir(const std::string& name);

}  // namespace moerun::testing
