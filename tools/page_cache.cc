#include "tools/page_cache.h"

#include <cinttypes>
#include <cstdio>
#include <cstring>

namespace moerun::cli {

void TouchPages(const uint8_t* p, size_t n) {
  volatile uint8_t sink = 0;
  for (size_t i = 0; i < n; i += 4096) sink = sink + p[i];
}

double HugeMappedShare(const void* base) {
  std::FILE* f = std::fopen("/proc/self/smaps", "r");
  if (!f) return -1.0;
  const uintptr_t want = reinterpret_cast<uintptr_t>(base);
  char line[512];
  bool in = false;
  long long rss = -1, pmd = -1;
  while (std::fgets(line, sizeof(line), f)) {
    uintptr_t start = 0, end = 0;
    // A mapping's header line: "start-end perms offset dev inode [path]".
    if (std::sscanf(line, "%" SCNxPTR "-%" SCNxPTR " ", &start, &end) == 2 && std::strchr(line, ' ') &&
        std::strchr(line, '-') < std::strchr(line, ' ')) {
      if (in) break;
      in = start == want;
      continue;
    }
    if (!in) continue;
    long long kib = 0;
    if (std::sscanf(line, "Rss: %lld kB", &kib) == 1) rss = kib;
    if (std::sscanf(line, "FilePmdMapped: %lld kB", &kib) == 1) pmd = kib;
  }
  std::fclose(f);
  if (rss <= 0 || pmd < 0) return -1.0;
  return static_cast<double>(pmd) / static_cast<double>(rss);
}

}  // namespace moerun::cli
