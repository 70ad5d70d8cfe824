// Q8_PANEL weight packing for `--weights int8` (format: runtime/core/q8_panel.h). Converter-only;
// the runtime reads the panels in place.
#pragma once

#include <cstdint>

namespace moerun::convert {

// Quantises `rows` rows of a row-major f32 matrix with `cols` columns, starting at a panel boundary
// of the output matrix, into whole panels: per row and 128-column group, s = absmax / 127 and
// q = round_half_even(w / s) clamped to ±127 (an all-zero group: s = 0, q = 0). Writes
// Panels(rows) · PanelBytes(cols) bytes to `panels` (padding rows and columns hold q = 0) and
// Panels(rows) · Groups(cols) · 16 scales to `scales` (padding rows 0). False if a value is not finite.
bool PackQ8Panels(const float* w, uint64_t rows, uint64_t cols, uint8_t* panels, float* scales);

}  // namespace moerun::convert
