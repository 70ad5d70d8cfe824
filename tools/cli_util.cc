#include "tools/cli_util.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>

namespace moerun::cli {

bool Args::Parse(int argc, char** argv, const std::vector<std::string>& value_flags,
                 const std::vector<std::string>& bool_flags, std::string* error) {
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--", 0) == 0 || (a.size() == 2 && a[0] == '-' && a[1] != '-')) {
      std::string value;
      bool has_value = false;
      if (auto eq = a.find('='); eq != std::string::npos) {
        value = a.substr(eq + 1);
        a = a.substr(0, eq);
        has_value = true;
      }
      if (std::find(value_flags.begin(), value_flags.end(), a) != value_flags.end()) {
        if (!has_value) {
          if (i + 1 >= argc) {
            *error = "option " + a + " needs a value";
            return false;
          }
          value = argv[++i];
        }
        values_[a] = value;
      } else if (std::find(bool_flags.begin(), bool_flags.end(), a) != bool_flags.end() && !has_value) {
        values_[a] = "1";
      } else {
        *error = "unknown option " + a;
        return false;
      }
    } else {
      positional_.push_back(a);
    }
  }
  return true;
}

bool Args::GetInt(const std::string& flag, int64_t lo, int64_t hi, int64_t* out, std::string* error) const {
  if (!Has(flag)) return true;
  const std::string s = Get(flag);
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  if (s.empty() || *end != '\0' || errno != 0 || v < lo || v > hi) {
    *error = flag + " expects an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got '" + s + "'";
    return false;
  }
  *out = v;
  return true;
}

bool Args::GetFloat(const std::string& flag, double* out, std::string* error) const {
  if (!Has(flag)) return true;
  const std::string s = Get(flag);
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(s.c_str(), &end);
  if (s.empty() || *end != '\0' || errno != 0) {
    *error = flag + " expects a number, got '" + s + "'";
    return false;
  }
  *out = v;
  return true;
}

bool ParsePrecision(const Args& args, moerun_precision* out, std::string* error) {
  const std::string p = args.Get("--precision", "auto");
  for (moerun_precision v : {MOERUN_PRECISION_AUTO, MOERUN_PRECISION_F32, MOERUN_PRECISION_BF16})
    if (p == PrecisionName(v)) {
      *out = v;
      return true;
    }
  *error = "--precision must be auto, f32 or bf16, got '" + p + "'";
  return false;
}

const char* PrecisionName(moerun_precision p) {
  switch (p) {
    case MOERUN_PRECISION_F32: return "f32";
    case MOERUN_PRECISION_BF16: return "bf16";
    case MOERUN_PRECISION_AUTO: return "auto";
  }
  return "unknown";
}

bool ParseIdList(const std::string& s, std::vector<int32_t>* out, std::string* error) {
  out->clear();
  size_t start = 0;
  while (start <= s.size()) {
    const size_t comma = s.find(',', start);
    const std::string part = s.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    char* end = nullptr;
    errno = 0;
    const long long v = std::strtoll(part.c_str(), &end, 10);
    if (part.empty() || *end != '\0' || errno != 0 || v < 0 || v > INT32_MAX) {
      *error = "--ids expects comma-separated non-negative token ids, got '" + part + "'";
      return false;
    }
    out->push_back(static_cast<int32_t>(v));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return true;
}

int Fail(const std::string& message) {
  std::fprintf(stderr, "moerun: %s\n", message.c_str());
  return 1;
}

std::string JsonEscape(const std::string& s) {
  std::string o;
  for (char ch : s) {
    switch (ch) {
      case '"': o += "\\\""; break;
      case '\\': o += "\\\\"; break;
      case '\n': o += "\\n"; break;
      default:
        if (static_cast<unsigned char>(ch) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", ch);
          o += buf;
        } else {
          o += ch;
        }
    }
  }
  return o;
}

}  // namespace moerun::cli
