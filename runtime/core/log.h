// Logging to a user callback. The sink is process-wide; the default writes warnings and errors to
// stderr. Safe to call from any thread.
#pragma once

#include <string>

namespace moerun {

enum class LogLevel : int { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3, kSilent = 4 };

using LogSink = void (*)(void* user_data, int level, const char* message);

void SetLogSink(LogSink sink, void* user_data, LogLevel min_level);
void Log(LogLevel level, const std::string& message);
bool LogEnabled(LogLevel level);

}  // namespace moerun
