// Bringing the model file's pages in through the loader's mapping, for `moerun bench` (which then
// reports runtime/format/page_sizes.h's HugeMappedShare of it).
#pragma once

#include <cstddef>
#include <cstdint>

namespace moerun::cli {

// Touches every 4 KiB page of [p, p + n) once. Through the loader's MADV_HUGEPAGE mapping, pages not
// yet in the page cache come in as 2 MiB folios; a read() of the file first would bring them in as
// small folios, which every later mapping then maps with 4 KiB pages.
void TouchPages(const uint8_t* p, size_t n);

}  // namespace moerun::cli
