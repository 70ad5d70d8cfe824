// Memory read-bandwidth probe: the floor decode is judged against, measured in the same process.
#pragma once

#include <cstddef>

namespace moerun::cli {

// Bytes per second that `threads` threads reach reading disjoint slices of a `bytes` buffer (far
// larger than the caches) with wide vector loads: the best of kReadPasses passes (the floor decode
// is judged against). With median_pass, the median pass goes there too: on a host whose memory
// speed varies from pass to pass, the gap between the two shows how far a run of many steps can
// fall short of the best pass from the noise alone.
inline constexpr int kReadPasses = 7;
double ReadBandwidth(int threads, size_t bytes, double* median_pass = nullptr);

}  // namespace moerun::cli
