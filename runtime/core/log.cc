#include "runtime/core/log.h"

#include <cstdio>
#include <mutex>

namespace moerun {
namespace {

std::mutex g_mu;
LogSink g_sink = nullptr;
void* g_user = nullptr;
LogLevel g_min = LogLevel::kWarning;

const char* LevelName(LogLevel l) {
  switch (l) {
    case LogLevel::kDebug: return "debug";
    case LogLevel::kInfo: return "info";
    case LogLevel::kWarning: return "warning";
    case LogLevel::kError: return "error";
    default: return "log";
  }
}

}  // namespace

void SetLogSink(LogSink sink, void* user_data, LogLevel min_level) {
  std::lock_guard<std::mutex> lock(g_mu);
  g_sink = sink;
  g_user = user_data;
  g_min = min_level;
}

bool LogEnabled(LogLevel level) {
  std::lock_guard<std::mutex> lock(g_mu);
  return level >= g_min && g_min != LogLevel::kSilent;
}

void Log(LogLevel level, const std::string& message) {
  std::lock_guard<std::mutex> lock(g_mu);
  if (level < g_min || g_min == LogLevel::kSilent) return;
  if (g_sink) {
    g_sink(g_user, static_cast<int>(level), message.c_str());
  } else {
    std::fprintf(stderr, "moerun %s: %s\n", LevelName(level), message.c_str());
  }
}

}  // namespace moerun
