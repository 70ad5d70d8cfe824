#include "tools/page_cache.h"

namespace moerun::cli {

void TouchPages(const uint8_t* p, size_t n) {
  volatile uint8_t sink = 0;
  for (size_t i = 0; i < n; i += 4096) sink = sink + p[i];
}

}  // namespace moerun::cli
