// Replaces every global operator new and delete of the program (C++17: plain, array, nothrow,
// aligned, aligned nothrow; sized and unsized deletes), so that the fault-injection sweep sees the
// allocations of libmoerun.so too: the library leaves operator new undefined and the dynamic linker
// binds it to the executable's definition, which comes first in the lookup order (the version script
// in runtime/exports.map only hides symbols the library itself defines). The sweep checks that the
// count is non-zero over a model load, so a build where this stops holding fails instead of passing
// vacuously.
//
// Memory comes from malloc / posix_memalign and goes back to free, so AddressSanitizer's leak checker
// still tracks it (ASan's own operator new is replaced, its malloc is not).
#include "tests/fault/alloc_hook.h"

#include <dlfcn.h>
#include <execinfo.h>
#include <unistd.h>

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <new>

namespace moerun::fault {
namespace {

std::atomic<bool> g_armed{false};
std::atomic<uint64_t> g_count{0};
std::atomic<uint64_t> g_fail_at{0};
std::atomic<bool> g_fired{false};
std::atomic<int64_t> g_live{0};

// Whether one of the frames is in oneDNN. oneDNN 2.7 answers its own failed allocations with
// dnnl_out_of_memory (which moerun handles) but leaks on some of those paths, and that is not
// moerun's to fix: an allocation oneDNN makes is passed over and the next one fails instead.
bool InOneDnn(void* const* frames, int n) {
  for (int i = 0; i < n; ++i) {
    Dl_info info;
    if (dladdr(frames[i], &info) && info.dli_fname && std::strstr(info.dli_fname, "libdnnl")) return true;
  }
  return false;
}

// True when this allocation is the one to fail.
bool ShouldFail() {
  if (!g_armed.load(std::memory_order_acquire)) return false;
  const uint64_t n = g_count.fetch_add(1, std::memory_order_relaxed) + 1;
  if (n != g_fail_at.load(std::memory_order_relaxed)) return false;
  void* frames[64];
  const int n_frames = backtrace(frames, 64);  // allocates with malloc only, which the hook does not see
  if (InOneDnn(frames, n_frames)) {
    g_fail_at.store(n + 1, std::memory_order_relaxed);
    return false;
  }
  g_fired.store(true, std::memory_order_release);
  // To find the code behind a failing k: MOERUN_FAULT_BACKTRACE=1 prints where the allocation was
  // made (backtrace() allocates with malloc only, which the hook does not see).
  static const bool print = std::getenv("MOERUN_FAULT_BACKTRACE") != nullptr;
  if (print) backtrace_symbols_fd(frames, n_frames, STDERR_FILENO);
  return true;
}

void* Allocate(size_t size, size_t alignment) noexcept {
  if (ShouldFail()) return nullptr;
  if (size == 0) size = 1;  // operator new must return a unique pointer
  void* p = nullptr;
  if (alignment <= alignof(std::max_align_t)) {
    p = std::malloc(size);
  } else if (posix_memalign(&p, alignment, size) != 0) {
    p = nullptr;
  }
  if (p) g_live.fetch_add(1, std::memory_order_relaxed);
  return p;
}

void Release(void* p) noexcept {
  if (!p) return;
  g_live.fetch_sub(1, std::memory_order_relaxed);
  std::free(p);
}

void* AllocateOrThrow(size_t size, size_t alignment) {
  void* p = Allocate(size, alignment);
  if (!p) throw std::bad_alloc();
  return p;
}

constexpr size_t kDefault = alignof(std::max_align_t);

}  // namespace

void Arm(uint64_t fail_at) {
  g_armed.store(false, std::memory_order_release);
  g_count.store(0, std::memory_order_relaxed);
  g_fired.store(false, std::memory_order_relaxed);
  g_fail_at.store(fail_at, std::memory_order_relaxed);
  g_armed.store(true, std::memory_order_release);
}

void Disarm() { g_armed.store(false, std::memory_order_release); }
uint64_t Count() { return g_count.load(std::memory_order_acquire); }
bool Fired() { return g_fired.load(std::memory_order_acquire); }
int64_t Live() { return g_live.load(std::memory_order_acquire); }

}  // namespace moerun::fault

using moerun::fault::AllocateOrThrow;
using moerun::fault::Allocate;
using moerun::fault::kDefault;
using moerun::fault::Release;

void* operator new(size_t n) { return AllocateOrThrow(n, kDefault); }
void* operator new[](size_t n) { return AllocateOrThrow(n, kDefault); }
void* operator new(size_t n, const std::nothrow_t&) noexcept { return Allocate(n, kDefault); }
void* operator new[](size_t n, const std::nothrow_t&) noexcept { return Allocate(n, kDefault); }
void* operator new(size_t n, std::align_val_t a) { return AllocateOrThrow(n, static_cast<size_t>(a)); }
void* operator new[](size_t n, std::align_val_t a) { return AllocateOrThrow(n, static_cast<size_t>(a)); }
void* operator new(size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return Allocate(n, static_cast<size_t>(a));
}
void* operator new[](size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return Allocate(n, static_cast<size_t>(a));
}

void operator delete(void* p) noexcept { Release(p); }
void operator delete[](void* p) noexcept { Release(p); }
void operator delete(void* p, size_t) noexcept { Release(p); }
void operator delete[](void* p, size_t) noexcept { Release(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { Release(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { Release(p); }
void operator delete(void* p, std::align_val_t) noexcept { Release(p); }
void operator delete[](void* p, std::align_val_t) noexcept { Release(p); }
void operator delete(void* p, size_t, std::align_val_t) noexcept { Release(p); }
void operator delete[](void* p, size_t, std::align_val_t) noexcept { Release(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { Release(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { Release(p); }
