// Small helpers shared by the moerun CLI subcommands: argument parsing and errors.
#pragma once

#include <cstdint>
#include <cstdio>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "moerun/moerun.h"

namespace moerun::cli {

// Parsed command line: positional arguments and --flags (with or without a value).
class Args {
 public:
  // value_flags take a value ("--ids 1,2"); the others are booleans ("--json").
  bool Parse(int argc, char** argv, const std::vector<std::string>& value_flags,
             const std::vector<std::string>& bool_flags, std::string* error);
  const std::vector<std::string>& positional() const { return positional_; }
  bool Has(const std::string& flag) const { return values_.count(flag) != 0; }
  std::string Get(const std::string& flag, const std::string& fallback = "") const {
    auto it = values_.find(flag);
    return it == values_.end() ? fallback : it->second;
  }
  // Numeric getters: false (with *error) on malformed or out-of-range values.
  bool GetInt(const std::string& flag, int64_t lo, int64_t hi, int64_t* out, std::string* error) const;
  bool GetFloat(const std::string& flag, double* out, std::string* error) const;

 private:
  std::vector<std::string> positional_;
  std::map<std::string, std::string> values_;
};

bool ParseIdList(const std::string& s, std::vector<int32_t>* out, std::string* error);

// --precision auto|f32|bf16 (default auto: the library picks by the file's weights).
bool ParsePrecision(const Args& args, moerun_precision* out, std::string* error);
// "f32", "bf16" or "auto".
const char* PrecisionName(moerun_precision p);

// Prints "moerun: <message>" to stderr and returns exit code 1.
int Fail(const std::string& message);

std::string JsonEscape(const std::string& s);

int RunConvert(int argc, char** argv);
int RunInspect(int argc, char** argv);
int RunRun(int argc, char** argv);
int RunBench(int argc, char** argv);

}  // namespace moerun::cli
