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

// The same reads one pass at a time over a buffer that stays allocated (and touched) between passes,
// so that passes can be interleaved with the work they are the floor of: `moerun bench` puts one
// before and after every decode step, as this host's memory speed drifts within seconds.
class ReadProbe {
 public:
  ReadProbe(int threads, size_t bytes);  // bytes rounded up to 2 MiB pages; ok() says if it got them
  ~ReadProbe();
  ReadProbe(const ReadProbe&) = delete;
  ReadProbe& operator=(const ReadProbe&) = delete;
  bool ok() const { return buf_ != nullptr; }
  double Pass();  // bytes per second of one pass (0 when !ok())

 private:
  int threads_;
  size_t slice_ = 0;
  unsigned char* buf_ = nullptr;
  unsigned long long sink_ = 0;
};

}  // namespace moerun::cli
