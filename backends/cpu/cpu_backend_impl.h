// CpuBackend, the class behind CreateCpuBackend, and the kernel entry points its op files dispatch
// to. Internal to backends/cpu/ (and its tests); the runtime only sees the Backend interface.
//
// Threading: every op is const and may run concurrently from several sessions. Per-call scratch is
// thread_local; the shared mutable state (the oneDNN primitive cache; the bf16 copies and e4m3
// flags that PrepareWeights adds) sits behind locks.
#pragma once

#include <cstdint>
#include <memory>
#include <shared_mutex>
#include <unordered_map>
#include <vector>

#include "backends/backend.h"
#include "backends/cpu/q8_kernels.h"

namespace moerun::cpu {

// What the machine (or a test) lets the backend use.
struct CpuFeatures {
  bool avx512 = false;  // F, BW, VL plus FMA and F16C: the own kernels; scalar code otherwise
  bool avx2 = false;    // AVX2 and FMA: the int8 matmul and attention kernels where AVX-512 is missing
  bool onednn = true;   // route f32 / bf16 GEMMs to oneDNN (off: the own kernels do everything)
  static CpuFeatures Detect();
};

struct OnednnState;  // engine + primitive cache, defined in onednn_matmul.cc

class CpuBackend final : public Backend {
 public:
  CpuBackend(Precision precision, CpuFeatures features);
  ~CpuBackend() override;

  const char* name() const override { return "cpu"; }
  Precision precision() const override { return precision_; }
  const CpuFeatures& features() const { return features_; }

  // bf16 precision: keeps a bf16 copy of every non-bf16 weight (see matmul.cc for the cost). Both:
  // notes which blocks of each e4m3 weight hold only normal numbers, for the fast decoding. The
  // views' memory must outlive the backend (both are keyed by WeightView::data).
  Status PrepareWeights(const std::vector<WeightView>& weights) override;
  void Linear(const WeightView& w, const float* x, int64_t ldx, int64_t M, float* y, int64_t ldy) const override;
  void LinearBatch(const WeightView* w, int64_t count, const float* x, int64_t x_step, int64_t ldx, int64_t M, float* y,
                   int64_t y_step, int64_t ldy) const override;
  void RmsNorm(const float* x, int64_t ldx, const float* w, int64_t n, int64_t M, float eps, float* y,
               int64_t ldy) const override;
  void Rope(float* x, int64_t T, int64_t n_vec, int64_t stride_token, int64_t stride_vec, const int32_t* positions,
            const float* inv_freq, int64_t half, float attention_factor) const override;
  void LinearSameInput(const WeightView* w, int64_t count, const float* x, int64_t ldx, int64_t M, float* const* y,
                       const int64_t* ldy) const override;
  void MoeExperts(const MoeExpertsArgs& a) const override;
  void ExpandKeys(const WeightView* uk_t, int64_t H, const float* latents, int64_t ldl, int64_t n, float* out,
                  int64_t out_head_stride) const override;
  void SiluMul(const float* gate, const float* up, float* out, int64_t n) const override;
  void MlaAttention(const MlaAttentionArgs& args) const override;
  // bf16 precision on AMX-BF16 or AVX2: both attention paths of those kernels (and the AVX512_BF16
  // latent path, which reads either) round the cache rows to bf16 anyway, and read bf16 rows (the
  // scalar kernels read only f32 rows). The AVX2 kernels keep
  // a subnormal f32 value as a bf16 subnormal, which the cache stores as zero (as AMX converts it).
  bool Bf16LatentCache() const override { return precision_ == Precision::kBF16 && (AmxAttention() || features_.avx2); }
  // The keys form runs on the AVX2 kernel (or the scalar one): taken where the absorbed values path
  // would not run on AMX-BF16 (bf16) or AVX-512 (f32) tiles. Measured only on an AVX2 host (AMD
  // EPYC, 2 threads: a 4096-token prompt in 512-token chunks 0.95x the time, a fresh 512 0.975x).
  bool MlaKeysForm() const override {
    return !AmxAttention() && !(features_.avx512 && precision_ == Precision::kF32);
  }

  // Bytes held by PrepareWeights copies and flags (for tests and memory reports).
  int64_t PreparedBytes() const;

 private:
  struct Bf16Copy {
    int64_t rows = 0, cols = 0;
    DType source = DType::kF32;
    std::unique_ptr<uint16_t[]> data;  // [rows, cols]
  };
  struct F8Flags {
    int64_t rows = 0, cols = 0, block_cols = 0;
    std::vector<uint8_t> special;  // avx512::F8SpecialFlags of all row groups
  };

  // bf16 precision with AVX-512 and AMX-BF16: MLA attention runs on AMX tiles (mla_*_amx.cc).
  bool AmxAttention() const;
  // Own kernels (AVX-512 or scalar); x already rounded to bf16 when round_bf16.
  void LinearOwn(const WeightView& w, const float* x, int64_t ldx, int64_t M, float* y, int64_t ldy,
                 bool round_bf16) const;
  void LinearBf16(const WeightView& w, const float* x, int64_t ldx, int64_t M, float* y, int64_t ldy) const;
  void LinearQ8(const WeightView& w, const float* x, int64_t ldx, int64_t M, float* y, int64_t ldy) const;
  bool SharesInt8Input(const WeightView* w, int64_t count, int64_t M, const float* x, int64_t ldx) const;
  // MoeExperts' int8 path as two sets of jobs; all: every token's quantised row; slots_end: one past
  // the last slot of any expert.
  void MoeExpertsAsJobs(const MoeExpertsArgs& a, const q8::ActivationBuffers& all, int64_t slots_end) const;
  q8::Int8Path Int8Kernel() const;
  // q8::QuantizeActivations on the quantiser this backend's features allow (the same bytes on all).
  void QuantizeInt8(const float* x, int64_t ldx, int64_t M, int64_t K, const q8::ActivationBuffers& b) const;
  const uint16_t* FindBf16Copy(const WeightView& w) const;
  const uint8_t* FindF8Flags(const WeightView& w) const;
  void PrepareF8Flags(const WeightView& w);
  // False when oneDNN failed (already logged); the caller then runs an own kernel.
  bool OnednnF32(const WeightView& w, const float* x, int64_t ldx, int64_t M, float* y, int64_t ldy) const;
  // f32 precision, narrow weights, many rows: panels of rows dequantised to f32 and run by oneDNN.
  bool OnednnF32Panels(const WeightView& w, const float* x, int64_t ldx, int64_t M, float* y, int64_t ldy) const;
  bool OnednnBf16(const uint16_t* w, int64_t N, int64_t K, const uint16_t* x, int64_t M, float* y,
                  int64_t ldy) const;

  Precision precision_;
  CpuFeatures features_;
  std::unique_ptr<OnednnState> onednn_;  // null when oneDNN is off or failed to start

  mutable std::shared_mutex prepared_mu_;
  std::unordered_map<const void*, Bf16Copy> copies_;   // keyed by WeightView::data
  std::unordered_map<const void*, F8Flags> f8_flags_;  // keyed by WeightView::data
};

// Check what the kernels rely on; false → Linear logs and writes zeros.
bool ValidWeight(const WeightView& w);
bool ValidLinearArgs(const WeightView& w, const float* x, int64_t ldx, int64_t M, const float* y, int64_t ldy);

// Scalar Linear (no AVX-512): round_w rounds weights to bf16 after dequantisation, round_x the
// activations (the own AVX-512 kernel instead expects x rounded by the caller).
void LinearScalar(const WeightView& w, const float* x, int64_t ldx, int64_t M, float* y, int64_t ldy, bool round_w,
                  bool round_x);

// AVX-512 kernels, defined in matmul_avx512.cc (the only file built with -mavx512*). Call only when
// CpuFeatures::avx512.
namespace avx512 {

// y[m, 0:rows] = W x[m]; weights widened to f32 exactly in registers (FP8 times its block scale),
// then rounded to bf16 when round_bf16. Parallel over output rows with OpenMP. f8_special: the
// F8SpecialFlags of an e4m3 weight, or null (then every block takes the slower exact decoding).
void Linear(const WeightView& w, const uint8_t* f8_special, const float* x, int64_t ldx, int64_t M, float* y,
            int64_t ldy, bool round_bf16);

// e4m3 only: for row groups [g0, g1) (4 rows each), one byte per scale block, 1 when the rows'
// bytes in that block include a zero, subnormal or NaN (which the fast decoding does not handle).
// flags has (g1 - g0) · F8BlocksPerRow(w) entries.
void F8SpecialFlags(const WeightView& w, int64_t g0, int64_t g1, uint8_t* flags);
int64_t F8BlocksPerRow(const WeightView& w);

// Rows [r0, r1) of W dequantised to f32, row-major [r1 - r0, cols].
void DequantizeRows(const WeightView& w, const uint8_t* f8_special, int64_t r0, int64_t r1, float* out);

// Rows [r0, r1) of W dequantised and rounded to bf16 (round to nearest even, as F32ToBf16).
void WeightRowsToBf16(const WeightView& w, int64_t r0, int64_t r1, uint16_t* out);

// n floats rounded to bf16, as bf16 bits or as the f32 values they represent (F32ToBf16 exactly).
void RoundToBf16Bits(const float* x, int64_t n, uint16_t* out);
void RoundToBf16Floats(const float* x, int64_t n, float* out);

// e4m3 bytes to f32 with the in-register decodings Linear uses, for tests: both are bit-exact with
// ::moerun::F8E4M3ToF32, the normal_only one on the normal numbers it is given.
void F8E4M3ToF32(const uint8_t* in, int64_t n, float* out, bool normal_only = false);

}  // namespace avx512

}  // namespace moerun::cpu
