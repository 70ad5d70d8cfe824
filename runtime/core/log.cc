#include "runtime/core/log.h"

#include <atomic>
#include <cstdio>
#include <mutex>

namespace moerun {
namespace {

std::mutex g_mu;
LogSink g_sink = nullptr;
void* g_user = nullptr;
// Written under g_mu, read without it by LogEnabled: the decode loop asks every step whether a
// warning would be logged (Model::NotePageSizes), and a mutex there was a lock per step.
std::atomic<LogLevel> g_min{LogLevel::kWarning};

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
  g_min.store(min_level, std::memory_order_relaxed);
}

bool LogEnabled(LogLevel level) {
  const LogLevel min = g_min.load(std::memory_order_relaxed);
  return level >= min && min != LogLevel::kSilent;
}

void Log(LogLevel level, const std::string& message) {
  std::lock_guard<std::mutex> lock(g_mu);
  const LogLevel min = g_min.load(std::memory_order_relaxed);
  if (level < min || min == LogLevel::kSilent) return;
  if (g_sink) {
    g_sink(g_user, static_cast<int>(level), message.c_str());
  } else {
    std::fprintf(stderr, "moerun %s: %s\n", LevelName(level), message.c_str());
  }
}

}  // namespace moerun
