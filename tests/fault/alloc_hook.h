// A replacement of the global operator new/delete family that counts allocations and can fail one
// chosen allocation: the fault-injection sweep arms it with k, and the k-th allocation after arming
// fails (throwing forms throw std::bad_alloc, nothrow forms return null). Every other allocation, on
// every thread, goes to malloc / posix_memalign as usual.
#pragma once

#include <cstdint>

namespace moerun::fault {

// Starts counting allocations from zero; the fail_at-th one fails (0: none fails, count only), or
// the first after it that oneDNN does not make (see alloc_hook.cc).
void Arm(uint64_t fail_at);
// Stops counting and failing.
void Disarm();
// Allocations seen since the last Arm.
uint64_t Count();
// Whether the armed allocation has been reached (and failed) since the last Arm.
bool Fired();
// Allocations made through the hook and not yet freed, whether armed or not.
int64_t Live();

}  // namespace moerun::fault
