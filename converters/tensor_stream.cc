// TensorStreamer: executes an ImportPlan chunk by chunk. Peak memory is a few buffers of at most
// kChunkElements elements (plus one head of kv_b_proj for the MLA split; for --weights fp8
// quantisation, one row of 128x128 blocks, 128 x cols, and the block scales of one tensor, 1/16384
// of its elements), whatever the model size.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>

#include "converters/fp8_quant.h"
#include "converters/hf_importer.h"
#include "converters/q8_pack.h"
#include "runtime/core/q8_panel.h"
#include "runtime/format/file_format.h"

namespace moerun::convert {
namespace {

constexpr uint64_t kChunkElements = 8ull << 20;  // 8 Mi elements: <= 32 MiB per f32 buffer

int64_t NowMs() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(steady_clock::now().time_since_epoch()).count();
}

// f32 → `out` (only f32 and bf16 are ever produced by conversion; other dtypes are copied raw).
Status EncodeF32(const float* in, uint64_t n, DType out, uint8_t* dst) {
  switch (out) {
    case DType::kF32:
      std::memcpy(dst, in, n * 4);
      return Status::Ok();
    case DType::kBF16: {
      uint16_t* o = reinterpret_cast<uint16_t*>(dst);
      for (uint64_t i = 0; i < n; ++i) o[i] = F32ToBf16(in[i]);
      return Status::Ok();
    }
    default:
      return InternalError(std::string("converter cannot encode ") + DTypeName(out));
  }
}

std::string Gb(uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2f", static_cast<double>(bytes) / 1e9);
  return buf;
}

}  // namespace

Status TensorStreamer::WriteAll(const ImportPlan& plan, ModelWriter* writer) {
  tty_ = progress_ && ::isatty(STDERR_FILENO);
  total_tensors_ = plan.tensors.size();
  total_bytes_ = 0;
  for (uint32_t i = 0; i < plan.tensors.size(); ++i) total_bytes_ += writer->TensorBytes(i);
  done_bytes_ = 0;
  done_tensors_ = 0;
  last_draw_ms_ = 0;
  for (uint32_t i = 0; i < plan.tensors.size(); ++i) {
    Status st = WriteTensor(plan.tensors[i], i, writer);
    if (!st.ok()) {
      if (tty_) std::fputc('\n', stderr);
      return st;
    }
    ++done_tensors_;
  }
  Draw(true);
  return Status::Ok();
}

void TensorStreamer::Advance(uint64_t bytes) {
  done_bytes_ += bytes;
  Draw(false);
}

void TensorStreamer::Draw(bool final) {
  if (!tty_) return;
  const int64_t now = NowMs();
  if (!final && now - last_draw_ms_ < 100) return;
  last_draw_ms_ = now;
  const double frac = total_bytes_ ? static_cast<double>(done_bytes_) / static_cast<double>(total_bytes_) : 1.0;
  constexpr int kWidth = 30;
  const int filled = std::clamp(static_cast<int>(frac * kWidth), 0, kWidth);
  std::string bar(static_cast<size_t>(filled), '#');
  bar.append(static_cast<size_t>(kWidth - filled), ' ');
  std::fprintf(stderr, "\rconverting [%s] %3d%%  %zu/%zu tensors  %s/%s GB", bar.c_str(),
               static_cast<int>(frac * 100.0), done_tensors_, total_tensors_, Gb(done_bytes_).c_str(),
               Gb(total_bytes_).c_str());
  if (final) std::fputc('\n', stderr);
  std::fflush(stderr);
}

Status TensorStreamer::ReadScaleRows(const SourceTensor& s, uint64_t b0, uint64_t b1, std::vector<float>* dst) {
  const uint64_t scols = CeilDiv(s.cols, kFp8BlockSize);
  const uint64_t n = (b1 - b0) * scols;
  const size_t es = DTypeSize(s.scale_dtype);
  std::vector<uint8_t> raw(n * es);
  MOERUN_RETURN_IF_ERROR(s.scale_file->Read(*s.scale, b0 * scols * es, raw.data(), raw.size()));
  dst->resize(n);
  for (uint64_t i = 0; i < n; ++i) (*dst)[i] = LoadAsF32(s.scale_dtype, raw.data(), i);
  return Status::Ok();
}

Status TensorStreamer::ReadRows(const SourceTensor& s, uint64_t r0, uint64_t r1, DType out,
                                std::vector<uint8_t>* dst) {
  const uint64_t cols = s.cols;
  const uint64_t n = (r1 - r0) * cols;
  const size_t ss = DTypeSize(s.dtype);
  if (s.dtype == out) {  // bit-exact copy
    dst->resize(n * ss);
    return s.file->Read(*s.tensor, r0 * cols * ss, dst->data(), n * ss);
  }
  raw_.resize(n * ss);
  MOERUN_RETURN_IF_ERROR(s.file->Read(*s.tensor, r0 * cols * ss, raw_.data(), raw_.size()));
  f32_.resize(n);
  if (s.dtype == DType::kF8E4M3) {
    // W[i, j] = float32(Wq[i, j]) * S[i / 128, j / 128], exact in f32 (MODEL_SPEC §3).
    if (!s.scale) return InternalError("FP8 tensor '" + s.name + "' has no block scale");
    const uint64_t b0 = r0 / kFp8BlockSize;
    const uint64_t b1 = (r1 - 1) / kFp8BlockSize + 1;
    MOERUN_RETURN_IF_ERROR(ReadScaleRows(s, b0, b1, &scales_));
    const uint64_t scols = CeilDiv(cols, kFp8BlockSize);
    const float* table = F8E4M3Table();
    for (uint64_t i = 0; i < r1 - r0; ++i) {
      const float* srow = scales_.data() + ((r0 + i) / kFp8BlockSize - b0) * scols;
      const uint8_t* q = raw_.data() + i * cols;
      float* o = f32_.data() + i * cols;
      for (uint64_t j = 0; j < cols; ++j) o[j] = table[q[j]] * srow[j / kFp8BlockSize];
    }
  } else {
    for (uint64_t i = 0; i < n; ++i) f32_[i] = LoadAsF32(s.dtype, raw_.data(), i);
  }
  dst->resize(n * DTypeSize(out));
  return EncodeF32(f32_.data(), n, out, dst->data());
}

Status TensorStreamer::WriteRows(const SourceTensor& s, uint64_t r0, uint64_t r1, DType out, uint32_t index,
                                 ModelWriter* w) {
  const uint64_t step = std::max<uint64_t>(1, kChunkElements / std::max<uint64_t>(1, s.cols));
  for (uint64_t r = r0; r < r1; r += step) {
    const uint64_t e = std::min(r1, r + step);
    MOERUN_RETURN_IF_ERROR(ReadRows(s, r, e, out, &out_));
    MOERUN_RETURN_IF_ERROR(w->Append(index, out_.data(), out_.size()));
    Advance(out_.size());
  }
  return Status::Ok();
}

Status TensorStreamer::WriteQuantized(const SourceTensor& s, uint32_t index, ModelWriter* w) {
  const uint64_t cols = s.cols;
  const uint64_t scols = CeilDiv(cols, kFp8BlockSize);
  for (uint64_t r = 0; r < s.rows; r += kFp8BlockSize) {
    const uint64_t e = std::min(s.rows, r + kFp8BlockSize);
    MOERUN_RETURN_IF_ERROR(ReadRows(s, r, e, DType::kF32, &out_));  // exact widening to f32
    q_.resize((e - r) * cols);
    const size_t at = pending_scales_.size();
    pending_scales_.resize(at + scols);
    if (!QuantizeFp8BlockRow(reinterpret_cast<const float*>(out_.data()), e - r, cols, q_.data(),
                             pending_scales_.data() + at))
      return InvalidArgument("tensor '" + s.name + "' in file '" + s.file->path() + "' has a non-finite value in rows [" +
                             std::to_string(r) + ", " + std::to_string(e) + "); it cannot be quantised to FP8");
    MOERUN_RETURN_IF_ERROR(w->Append(index, q_.data(), q_.size()));
    Advance(q_.size());
  }
  return Status::Ok();
}

Status TensorStreamer::AppendQ8(const float* rows, uint64_t n_rows, uint64_t cols, const std::string& what,
                                uint32_t index, ModelWriter* w) {
  const int64_t R = static_cast<int64_t>(n_rows), C = static_cast<int64_t>(cols);
  q_.resize(static_cast<size_t>(q8::MatrixBytes(R, C)));
  const size_t at = pending_scales_.size();
  pending_scales_.resize(at + static_cast<size_t>(q8::MatrixScales(R, C)));
  if (!PackQ8Panels(rows, n_rows, cols, q_.data(), pending_scales_.data() + at))
    return InvalidArgument(what + " has a non-finite value; it cannot be quantised to int8");
  MOERUN_RETURN_IF_ERROR(w->Append(index, q_.data(), q_.size()));
  Advance(q_.size());
  return Status::Ok();
}

Status TensorStreamer::WriteQ8(const SourceTensor& s, uint32_t index, ModelWriter* w) {
  // Whole panels per chunk, so each chunk packs independently.
  const uint64_t panels = std::max<uint64_t>(1, kChunkElements / q8::kPanelRows / std::max<uint64_t>(1, s.cols));
  const uint64_t step = panels * q8::kPanelRows;
  for (uint64_t r = 0; r < s.rows; r += step) {
    const uint64_t e = std::min(s.rows, r + step);
    MOERUN_RETURN_IF_ERROR(ReadRows(s, r, e, DType::kF32, &out_));  // exact widening to f32
    MOERUN_RETURN_IF_ERROR(AppendQ8(reinterpret_cast<const float*>(out_.data()), e - r, s.cols,
                                    "tensor '" + s.name + "' in file '" + s.file->path() + "'", index, w));
  }
  return Status::Ok();
}

Status TensorStreamer::WriteTensor(const PlannedTensor& t, uint32_t index, ModelWriter* w) {
  const DType out = t.spec.dtype;
  switch (t.emit) {
    case Emit::kRows:
      pending_scales_.clear();
      pending_for_ = index;
      for (const SourceTensor& s : t.sources) {
        if (out == DType::kQ8Panel) {
          MOERUN_RETURN_IF_ERROR(WriteQ8(s, index, w));
        } else if (out == DType::kF8E4M3 && s.dtype != DType::kF8E4M3) {
          MOERUN_RETURN_IF_ERROR(WriteQuantized(s, index, w));
        } else {
          MOERUN_RETURN_IF_ERROR(WriteRows(s, 0, s.rows, out, index, w));
        }
      }
      return Status::Ok();
    case Emit::kScale: {
      // FP8 sources: their own scales, bit for bit. Quantised sources: the scales WriteQuantized
      // kept, in source order (the weight tensor is always the one declared just before).
      size_t next = 0;
      for (const SourceTensor& s : t.sources) {
        const float* data;
        uint64_t n;
        if (s.dtype == DType::kF8E4M3) {
          MOERUN_RETURN_IF_ERROR(ReadScaleRows(s, 0, CeilDiv(s.rows, kFp8BlockSize), &scales_));
          data = scales_.data();
          n = scales_.size();
        } else {
          n = CeilDiv(s.rows, kFp8BlockSize) * CeilDiv(s.cols, kFp8BlockSize);
          if (pending_for_ + 1 != index || next + n > pending_scales_.size())
            return InternalError("no computed block scales for '" + t.spec.name + "'");
          data = pending_scales_.data() + next;
          next += n;
        }
        const uint64_t bytes = n * sizeof(float);
        MOERUN_RETURN_IF_ERROR(w->Append(index, data, bytes));
        Advance(bytes);
      }
      if (next != pending_scales_.size() && pending_for_ + 1 == index)
        return InternalError("block scales of '" + t.spec.name + "' left unused");
      pending_scales_.clear();
      pending_for_ = UINT32_MAX;
      return Status::Ok();
    }
    case Emit::kQ8Scale: {
      if (pending_for_ + 1 != index || pending_scales_.empty())
        return InternalError("no computed int8 scales for '" + t.spec.name + "'");
      const uint64_t bytes = pending_scales_.size() * sizeof(float);
      MOERUN_RETURN_IF_ERROR(w->Append(index, pending_scales_.data(), bytes));
      Advance(bytes);
      pending_scales_.clear();
      pending_for_ = UINT32_MAX;
      return Status::Ok();
    }
    case Emit::kUkT:
    case Emit::kUv: {
      // kv_b_proj [H*(d_n+d_v), r_kv]: rows of head h are [h*(d_n+d_v), (h+1)*(d_n+d_v)), the first
      // d_n of them W_UK^h, the last d_v W_UV^h (MODEL_SPEC §2). Pure slicing and transposition.
      const SourceTensor& s = t.sources.at(0);
      const uint64_t heads = t.spec.shape.at(0);
      const uint64_t per_head = s.rows / heads;
      const uint64_t r_kv = s.cols;
      const uint64_t d_n = t.emit == Emit::kUkT ? t.spec.shape.at(2) : per_head - t.spec.shape.at(1);
      const bool q8 = out == DType::kQ8Panel;
      const DType read = q8 ? DType::kF32 : out;  // q8: each head's f32 matrix is packed as a whole
      const size_t es = DTypeSize(read);
      if (q8) {
        pending_scales_.clear();
        pending_for_ = index;
      }
      for (uint64_t h = 0; h < heads; ++h) {
        const uint64_t r0 = h * per_head + (t.emit == Emit::kUkT ? 0 : d_n);
        const uint64_t r1 = t.emit == Emit::kUkT ? r0 + d_n : (h + 1) * per_head;
        MOERUN_RETURN_IF_ERROR(ReadRows(s, r0, r1, read, &out_));
        const std::vector<uint8_t>* chunk = &out_;
        if (t.emit == Emit::kUkT) {  // [d_n, r_kv] → [r_kv, d_n]
          head_.resize(out_.size());
          for (uint64_t i = 0; i < d_n; ++i)
            for (uint64_t c = 0; c < r_kv; ++c)
              std::memcpy(head_.data() + (c * d_n + i) * es, out_.data() + (i * r_kv + c) * es, es);
          chunk = &head_;
        }
        if (q8) {
          const uint64_t rows = t.spec.shape.at(1), cols = t.spec.shape.at(2);
          MOERUN_RETURN_IF_ERROR(AppendQ8(reinterpret_cast<const float*>(chunk->data()), rows, cols,
                                          "tensor '" + s.name + "' in file '" + s.file->path() + "'", index, w));
          continue;
        }
        MOERUN_RETURN_IF_ERROR(w->Append(index, chunk->data(), chunk->size()));
        Advance(chunk->size());
      }
      return Status::Ok();
    }
  }
  return InternalError("unknown emit kind");
}

}  // namespace moerun::convert
