// Strict JSON parsing for untrusted checkpoint metadata (safetensors headers, index files,
// config.json). nlohmann::json throws and silently keeps the last of duplicate keys; this wrapper
// rejects duplicates and absurd nesting and turns every failure into a Status. No exception escapes.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "runtime/core/status.h"

namespace moerun::convert {

// Parses `text`. `what` names the source in error messages (a file path, or "'f' header").
// Errors: kCorruptFile for syntax errors, duplicate keys (in any object) and nesting deeper than 64.
Result<nlohmann::json> ParseJsonStrict(std::string_view text, const std::string& what);

// nlohmann::json's destructor moves the children of a non-empty array or object onto a heap-allocated
// stack, and a failed allocation there terminates the process (destructors are noexcept). Declared
// right after a parsed document, this empties it from the leaves up when it goes out of scope, which
// needs no allocation (ParseJsonStrict caps the nesting, so the recursion is bounded).
class JsonReleaser {
 public:
  explicit JsonReleaser(nlohmann::json& document) : document_(document) {}
  ~JsonReleaser() { Drain(document_); }
  JsonReleaser(const JsonReleaser&) = delete;
  JsonReleaser& operator=(const JsonReleaser&) = delete;

 private:
  static void Drain(nlohmann::json& j) noexcept;
  nlohmann::json& document_;
};

// Short description of a JSON value's type for error messages ("string", "number", ...).
std::string JsonTypeName(const nlohmann::json& v);

// Reads a whole (small) text file. Errors: kIo naming the path; kCorruptFile if it is larger than
// `max_bytes`.
Result<std::string> ReadTextFile(const std::string& path, uint64_t max_bytes);

}  // namespace moerun::convert
