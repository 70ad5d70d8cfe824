// Fuzzes the config.json parser. An accepted config must also pass ModelConfig::Validate (the
// header promises it), since the importer sizes every tensor from it.
#include <string>

#include "converters/hf_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto r = moerun::convert::ParseHfConfigFull(text, "fuzz/config.json");
  if (r.ok() && !r.value().config.Validate().ok()) __builtin_trap();
  return 0;
}
