// Memory read-bandwidth probe: the floor decode is judged against, measured in the same process.
#pragma once

#include <cstddef>

namespace moerun::cli {

// Bytes per second that `threads` threads reach reading disjoint slices of a `bytes` buffer (far
// larger than the caches) with wide vector loads; best of several passes.
double ReadBandwidth(int threads, size_t bytes);

}  // namespace moerun::cli
