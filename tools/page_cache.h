// How the model file sits in memory, for `moerun bench`: bringing its pages in through the loader's
// mapping, and how much of that mapping the kernel maps with 2 MiB pages.
#pragma once

#include <cstddef>
#include <cstdint>

namespace moerun::cli {

// Touches every 4 KiB page of [p, p + n) once. Through the loader's MADV_HUGEPAGE mapping, pages not
// yet in the page cache come in as 2 MiB folios; a read() of the file first would bring them in as
// small folios, which every later mapping then maps with 4 KiB pages.
void TouchPages(const uint8_t* p, size_t n);

// The share of the mapping that starts at `base` which is resident and mapped with 2 MiB pages
// (FilePmdMapped / Rss in /proc/self/smaps), or -1 when that cannot be read.
double HugeMappedShare(const void* base);

}  // namespace moerun::cli
