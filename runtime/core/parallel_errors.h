// An exception that leaves an OpenMP parallel region terminates the process. Work inside a region
// that may throw (std::bad_alloc from a scratch buffer, mostly) runs through Capture; the thread that
// started the region calls Rethrow after it, so the exception reaches the caller as if the work had
// run serially. The first exception wins; the others are dropped.
#pragma once

#include <atomic>
#include <exception>
#include <utility>

namespace moerun {

class ParallelErrors {
 public:
  template <typename F>
  void Capture(F&& work) noexcept {
    try {
      std::forward<F>(work)();
    } catch (...) {
      Record();
    }
  }
  // From inside a catch block.
  void Record() noexcept {
    if (!claimed_.exchange(true, std::memory_order_acq_rel)) first_ = std::current_exception();
  }
  // Cheap check for work items to skip once something failed.
  bool failed() const { return claimed_.load(std::memory_order_relaxed); }
  // After the region (its closing barrier orders first_'s write before this read).
  void Rethrow() const {
    if (first_) std::rethrow_exception(first_);
  }

 private:
  std::atomic<bool> claimed_{false};
  std::exception_ptr first_;
};

}  // namespace moerun
