// Public entry point of the converter library: a Hugging Face DeepSeek-V2/V3 checkpoint folder in,
// one .moerun file out. The converter streams: it never holds more than a few chunks of the largest
// tensor in memory, and the output appears under `out_path` only when it is complete (written to a
// temporary file, renamed on success, removed on any failure).
#pragma once

#include <string>

#include "runtime/core/status.h"

namespace moerun::convert {

// How weights are stored in the output.
//  kKeep: linear weights keep the checkpoint dtype (bf16 / f16 / f32, or FP8 e4m3 with its f32
//         128x128 block scales); the MLA absorption split of an FP8 kv_b_proj becomes f32.
//  kBF16: every linear weight, the embedding table and the LM head become bf16 (FP8 dequantised in
//         f32, then rounded to nearest even).
//  kF32:  everything f32.
//  kFp8:  1-byte weights where DeepSeek's own FP8 checkpoints have them (MODEL_SPEC §3): q_proj /
//         q_a_proj / q_b_proj, kv_a_proj, o_proj, dense gate/up/down, routed experts' and shared
//         experts' gate/up/down (the MTP decoder layer's too) become F8_E4M3 with an f32 scale per
//         128x128 block (edge blocks partial): scale = block absmax / 448, q = e4m3fn(w / scale),
//         round to nearest even, saturating (converters/fp8_quant.h). Sources are widened to f32
//         exactly first; an FP8 source is copied bit for bit with its scales, never requantised.
//         The embedding table, the LM head, the MLA split of kv_b_proj (UkT, Uv) and the MTP
//         eh_proj / embed / head become bf16 (FP8 sources dequantised in f32, then rounded).
//  kInt8: the CPU's 1-byte format: every linear weight (attention, the MLA split, dense and expert
//         MLPs, the LM head, the MTP module's) becomes q8_panel (runtime/core/q8_panel.h): int8 per
//         row and 128-column group, scale = absmax / 127, in the 16-row panels the CPU kernels read
//         in place. Sources (FP8 dequantised) are widened to f32 first. The embedding table is bf16.
// Norm weights, the router and its correction bias are f32 in every mode.
enum class WeightsMode { kKeep, kBF16, kF32, kFp8, kInt8 };

struct ConvertOptions {
  WeightsMode weights = WeightsMode::kKeep;
  bool progress = false;  // progress bar on stderr (only drawn when stderr is a terminal)
};

// Errors name the file and tensor at fault: kIo (unreadable input, unwritable output),
// kCorruptFile (malformed safetensors / JSON), kInvalidArgument (missing, unexpected or mis-shaped
// tensors, bad config values), kUnsupported (architectures, dtypes or settings this runtime lacks).
Status ConvertHfCheckpoint(const std::string& hf_dir, const std::string& out_path, const ConvertOptions& options);

// "keep" | "bf16" | "f32" | "fp8" | "int8".
Result<WeightsMode> ParseWeightsMode(const std::string& text);
const char* WeightsModeName(WeightsMode mode);

}  // namespace moerun::convert
