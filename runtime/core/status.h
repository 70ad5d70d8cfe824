// Status and Result<T>: the internal error currency. Codes mirror moerun_status in the C ABI; the
// message names what was wrong (file, tensor, node, field). Nothing in the library throws across
// module boundaries; functions that can fail return one of these.
#pragma once

#include <string>
#include <utility>
#include <variant>

namespace moerun {

enum class StatusCode : int {
  kOk = 0,
  kInvalidArgument = 1,
  kIo = 2,
  kCorruptFile = 3,
  kUnsupported = 4,
  kOutOfMemory = 5,
  kKvCacheFull = 6,
  kCancelled = 7,
  kBackend = 8,
  kInternal = 9,
};

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}
  static Status Ok() { return {}; }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

  // Prefixes the message with context ("loading foo.moerun: ...").
  Status WithContext(const std::string& context) const {
    if (ok()) return *this;
    return Status(code_, context + ": " + message_);
  }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status InvalidArgument(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
inline Status IoError(std::string m) { return {StatusCode::kIo, std::move(m)}; }
inline Status CorruptFile(std::string m) { return {StatusCode::kCorruptFile, std::move(m)}; }
inline Status Unsupported(std::string m) { return {StatusCode::kUnsupported, std::move(m)}; }
inline Status OutOfMemory(std::string m) { return {StatusCode::kOutOfMemory, std::move(m)}; }
inline Status InternalError(std::string m) { return {StatusCode::kInternal, std::move(m)}; }

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}           // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {}    // NOLINT: must not be OK

  bool ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(v_);
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() { return value(); }

 private:
  std::variant<T, Status> v_;
};

#define MOERUN_CONCAT_INNER(a, b) a##b
#define MOERUN_CONCAT(a, b) MOERUN_CONCAT_INNER(a, b)

#define MOERUN_RETURN_IF_ERROR(expr)            \
  do {                                          \
    ::moerun::Status _moerun_st = (expr);       \
    if (!_moerun_st.ok()) return _moerun_st;    \
  } while (0)

#define MOERUN_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) return tmp.status();                \
  lhs = std::move(tmp).value()

// Declares a temporary: use it as a statement of its own (in braces after an if).
#define MOERUN_ASSIGN_OR_RETURN(lhs, expr) \
  MOERUN_ASSIGN_OR_RETURN_IMPL(MOERUN_CONCAT(_moerun_r, __LINE__), lhs, expr)

}  // namespace moerun
