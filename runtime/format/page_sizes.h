// How the kernel maps the model file's pages, and what the runtime says about it.
//
// Decode streams the weights from the file's mapping. The loader maps it at a 2 MiB boundary with
// MADV_HUGEPAGE (model_file.cc), so that pages read into the page cache through it come as 2 MiB
// folios and are mapped with 2 MiB pages. Pages that were already cached as small folios (the file
// was copied or written before the load, or on some kernels read() before it: not on Linux 6.18,
// where a `cat` of an evicted file left it 99% in 2 MiB folios) stay on 4 KiB pages, and so does
// everything when transparent huge pages are off; through 4 KiB pages the same weights read ~20%
// slower on the AMD EPYC test host (24 against 30 GB/s, one thread). Nothing fails then, so after a
// model's first forward pass the runtime looks once and logs what it found (Model::NotePageSizes).
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>

#include "runtime/core/log.h"
#include "runtime/format/model_file.h"

namespace moerun {

// The share of the resident pages of the file mapping [base, base + size) that are mapped with 2 MiB
// pages, or -1 when that cannot be read (nothing resident, no /proc): HugeMappedShareByScan where the
// kernel has PAGEMAP_SCAN (Linux 6.7), else HugeMappedShareBySmaps for the mapping that starts at
// base. Both give the same share; the scan took 0.3-1.2 ms where smaps took 6-27 ms (a 4.7 GB model
// a quarter or all resident, AMD EPYC host), as smaps visits every 4 KiB page of a 2 MiB one.
double HugeMappedShare(const void* base, uint64_t size);
// The PAGEMAP_SCAN ioctl on /proc/self/pagemap: present bytes marked PAGE_IS_HUGE over present
// bytes. -2 where the kernel does not have it.
double HugeMappedShareByScan(const void* base, uint64_t size);
// FilePmdMapped / Rss of the mapping that starts at base in /proc/self/smaps.
double HugeMappedShareBySmaps(const void* base);

// Linux's transparent huge page mode (/sys/kernel/mm/transparent_hugepage/enabled).
enum class ThpMode { kUnknown, kAlways, kMadvise, kNever };
ThpMode ReadThpMode();
// The mode named in brackets in that file's text ("always [madvise] never"), else kUnknown.
ThpMode ParseThpMode(const std::string& text);

// Below this share of 2 MiB pages the runtime speaks (a file of whole 2 MiB folios maps at ~100%).
inline constexpr double kHugeShareFloor = 0.9;

struct PageAdvice {
  LogLevel level = LogLevel::kWarning;
  std::string message;
};
// What to log for the model file at `path` whose touched pages are `share` on 2 MiB pages under
// `mode`: nothing at or above kHugeShareFloor or when the share is unknown (< 0); an info line when
// THP is off (the pages cannot be huge; the remedy is the system's); else a warning naming the share
// and how to evict the file's cached pages.
std::optional<PageAdvice> PageSizeAdvice(double share, ThpMode mode, const std::string& path);

// Logs PageSizeAdvice for a file that Open mapped, of at least min_bytes, the first time it is called
// with `noted` false (it sets it), and only while warnings are logged; nothing for FromMemory's
// buffers. Its pages must have been read (a forward pass) for the share to say anything. Never
// throws; thread-safe for a shared `noted`.
void NoteFilePages(const ModelFile& file, std::atomic<bool>* noted, uint64_t min_bytes);

}  // namespace moerun
