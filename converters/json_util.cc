#include "converters/json_util.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <exception>
#include <set>
#include <vector>

namespace moerun::convert {
namespace {

constexpr size_t kMaxJsonDepth = 64;

// Thrown from the parser callback and caught at the parse boundary below.
struct StrictJsonError : std::exception {
  std::string message;
  explicit StrictJsonError(std::string m) : message(std::move(m)) {}
  const char* what() const noexcept override { return message.c_str(); }
};

}  // namespace

std::string JsonTypeName(const nlohmann::json& v) {
  switch (v.type()) {
    case nlohmann::json::value_t::null: return "null";
    case nlohmann::json::value_t::object: return "object";
    case nlohmann::json::value_t::array: return "array";
    case nlohmann::json::value_t::string: return "string";
    case nlohmann::json::value_t::boolean: return "boolean";
    case nlohmann::json::value_t::number_integer:
    case nlohmann::json::value_t::number_unsigned: return "integer";
    case nlohmann::json::value_t::number_float: return "number";
    case nlohmann::json::value_t::binary: return "binary";
    case nlohmann::json::value_t::discarded: return "discarded";
  }
  return "unknown";
}

Result<nlohmann::json> ParseJsonStrict(std::string_view text, const std::string& what) {
  // One key set per open object; arrays push an empty marker so depth stays in step.
  std::vector<std::set<std::string>> open;
  std::vector<bool> is_object;
  auto callback = [&](int /*depth*/, nlohmann::json::parse_event_t event, nlohmann::json& parsed) -> bool {
    using E = nlohmann::json::parse_event_t;
    switch (event) {
      case E::object_start:
      case E::array_start:
        if (is_object.size() >= kMaxJsonDepth)
          throw StrictJsonError("nesting deeper than " + std::to_string(kMaxJsonDepth) + " levels");
        is_object.push_back(event == E::object_start);
        open.emplace_back();
        break;
      case E::object_end:
      case E::array_end:
        if (!open.empty()) {
          open.pop_back();
          is_object.pop_back();
        }
        break;
      case E::key:
        if (!open.empty() && is_object.back()) {
          const std::string key = parsed.get<std::string>();
          if (!open.back().insert(key).second) throw StrictJsonError("duplicate key '" + key + "'");
        }
        break;
      case E::value:
        break;
    }
    return true;
  };
  try {
    nlohmann::json j = nlohmann::json::parse(text.begin(), text.end(), callback, /*allow_exceptions=*/true);
    return j;
  } catch (const StrictJsonError& e) {
    return CorruptFile(what + ": invalid JSON: " + e.message);
  } catch (const nlohmann::json::exception& e) {
    return CorruptFile(what + ": invalid JSON: " + e.what());
  } catch (const std::bad_alloc&) {
    return OutOfMemory(what + ": out of memory while parsing JSON");
  } catch (const std::exception& e) {
    return CorruptFile(what + ": invalid JSON: " + e.what());
  }
}

void JsonReleaser::Drain(nlohmann::json& j) noexcept {
  if (j.is_array()) {
    auto& a = j.get_ref<nlohmann::json::array_t&>();
    for (nlohmann::json& child : a) Drain(child);
    a.clear();  // every child is now a scalar or empty: destroying it allocates nothing
  } else if (j.is_object()) {
    auto& o = j.get_ref<nlohmann::json::object_t&>();
    for (auto& entry : o) Drain(entry.second);
    o.clear();
  }
}

Result<std::string> ReadTextFile(const std::string& path, uint64_t max_bytes) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return IoError("cannot open '" + path + "': " + std::strerror(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return IoError("'" + path + "' is not a readable regular file");
  }
  if (static_cast<uint64_t>(st.st_size) > max_bytes) {
    ::close(fd);
    return CorruptFile("'" + path + "' is " + std::to_string(st.st_size) + " bytes, more than the " +
                       std::to_string(max_bytes) + " allowed");
  }
  std::string text;
  text.resize(static_cast<size_t>(st.st_size));
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::pread(fd, text.data() + done, text.size() - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const std::string why = n < 0 ? std::strerror(errno) : "unexpected end of file";
      ::close(fd);
      return IoError("reading '" + path + "': " + why);
    }
    done += static_cast<size_t>(n);
  }
  ::close(fd);
  return text;
}

}  // namespace moerun::convert
