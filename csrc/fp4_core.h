// FP4 (E2M1) quantization arithmetic shared by the CPU and CUDA kernels.
//
// Torch-free on purpose: the CUDA kernel (fp4_cuda.cu) includes only this header and the CUDA
// runtime, so it compiles with a bare nvcc (no torch CUDA headers; see README, "Half-S FP4").
// Every function here is mirrored operation for operation by the pure-PyTorch reference
// (hf_ilp/fp4/reference.py); both must give bitwise-identical results, so no operation may be
// fused or reassociated (built with -ffp-contract=off / --fmad=false).
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define HF_ILP_HD __host__ __device__ __forceinline__
#else
#define HF_ILP_HD inline
#endif

namespace hf_ilp_fp4 {

#if defined(__CUDACC__)
HF_ILP_HD float f_abs(float x) { return fabsf(x); }
HF_ILP_HD float f_copysign(float m, float x) { return copysignf(m, x); }
HF_ILP_HD bool f_signbit(float x) { return signbit(x); }
#else
HF_ILP_HD float f_abs(float x) { return std::fabs(x); }
HF_ILP_HD float f_copysign(float m, float x) { return std::copysign(m, x); }
HF_ILP_HD bool f_signbit(float x) { return std::signbit(x); }
#endif

// Scale-selection modes (the `mode` string of the op, in this order).
enum Mode : int { kMax = 0, kHalf = 1, kHalfS = 2, kMse = 3 };

// Clip ratios searched by `mse` and by the `halfs` fallback: r_i = 0.15 + 0.85 * i / 17.
constexpr int kNumClip = 18;
// `halfs` candidates: s_half, s_max, then the kNumClip clipped scales.
constexpr int kMaxCandidates = 2 + kNumClip;
// A candidate replaces the current best only if its error is lower by more than this relative
// margin, so exact and near ties resolve to the earlier candidate in every implementation.
constexpr double kTieMargin = 1.0 - 1e-9;
constexpr float kFloatMax = 3.40282346638528859812e+38F;

HF_ILP_HD float clip_factor(int i) {
  // Computed in double then rounded once, exactly like the reference.
  return static_cast<float>((0.15 + 0.85 * i / 17.0) / 6.0);
}

// Candidate scales of a group with largest finite magnitude `amax` (> 0); returns their count.
HF_ILP_HD int candidate_scales(float amax, int mode, float* out) {
  const float s_max = amax / 6.0f;
  int n = 0;
  if (mode == kMax) {
    out[n++] = s_max;
  } else if (mode == kHalf) {
    out[n++] = s_max * 0.5f;
  } else {
    if (mode == kHalfS) {
      out[n++] = s_max * 0.5f;
      out[n++] = s_max;
    }
    for (int i = 0; i < kNumClip; ++i) out[n++] = amax * clip_factor(i);
  }
  return n;
}

// Round-to-nearest-even onto the E2M1 magnitudes {0, .5, 1, 1.5, 2, 3, 4, 6}, saturating at 6.
// `y` = |x| / s >= 0. Ties go to the even code (0, 1, 2, 4): the thresholds at 0.25, 1.25, 2.5
// and 5 round down (strict >), those at 0.75, 1.75 and 3.5 round up (>=).
HF_ILP_HD int rne_code(float y) {
  return (y > 0.25f) + (y >= 0.75f) + (y > 1.25f) + (y >= 1.75f) + (y > 2.5f) + (y >= 3.5f) +
         (y > 5.0f);
}

HF_ILP_HD float rne_magnitude(float y) {
  // Sum of the grid steps passed; every partial sum is exact.
  return ((y > 0.25f) ? 0.5f : 0.0f) + ((y >= 0.75f) ? 0.5f : 0.0f) +
         ((y > 1.25f) ? 0.5f : 0.0f) + ((y >= 1.75f) ? 0.5f : 0.0f) +
         ((y > 2.5f) ? 1.0f : 0.0f) + ((y >= 3.5f) ? 1.0f : 0.0f) + ((y > 5.0f) ? 2.0f : 0.0f);
}

// Counter-based 32-bit hash (a lowbias32 finalizer); multiplications split in 16-bit halves so
// the reference can run it in int64 without overflow. Results are identical. `U` is uint32_t or
// a vector of them (the CPU kernel hashes a whole vector of element indices at once).
template <typename U>
HF_ILP_HD U mix32(U x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

// Uniform in [0, 1) with 24 random bits, a pure function of (seed, element index).
HF_ILP_HD float sr_uniform(uint64_t seed, int64_t index) {
  const uint64_t idx = static_cast<uint64_t>(index);
  const uint32_t k = static_cast<uint32_t>(seed >> 32) ^ (static_cast<uint32_t>(idx >> 32) * 0x9e3779b9U);
  const uint32_t h = mix32(mix32(static_cast<uint32_t>(idx) ^ static_cast<uint32_t>(seed)) ^ k);
  return static_cast<float>(h >> 8) * 5.9604644775390625e-08f;  // 2^-24
}

// Stochastic rounding of y >= 0 between its two neighbouring E2M1 magnitudes: up with
// probability (y - lo) / (hi - lo), so E[q] = y for y <= 6; saturates at 6. Writes the code.
HF_ILP_HD float sr_magnitude(float y, float u, int* code) {
  const int lo_code = (y >= 0.5f) + (y >= 1.0f) + (y >= 1.5f) + (y >= 2.0f) + (y >= 3.0f) +
                      (y >= 4.0f) + (y >= 6.0f);
  const float lo = ((y >= 0.5f) ? 0.5f : 0.0f) + ((y >= 1.0f) ? 0.5f : 0.0f) +
                   ((y >= 1.5f) ? 0.5f : 0.0f) + ((y >= 2.0f) ? 0.5f : 0.0f) +
                   ((y >= 3.0f) ? 1.0f : 0.0f) + ((y >= 4.0f) ? 1.0f : 0.0f) +
                   ((y >= 6.0f) ? 2.0f : 0.0f);
  const float step = (y < 2.0f) ? 0.5f : ((y < 4.0f) ? 1.0f : 2.0f);
  const float p = (y - lo) / step;
  const bool up = (y < 6.0f) && (u < p);
  *code = lo_code + (up ? 1 : 0);
  return up ? lo + step : lo;
}

// Quantize-dequantize one value with scale s (s > 0, or 0 for an all-zero group).
// Non-finite values pass through unchanged (their code: +-inf saturate, NaN is 0).
HF_ILP_HD float quantize_one(float x, float s, bool stochastic, uint64_t seed, int64_t index,
                             uint8_t* code_out) {
  const float a = f_abs(x);
  const bool neg = f_signbit(x);
  float y = (s > 0.0f) ? a / s : 0.0f;
  if (!(a <= kFloatMax)) y = (a == a) ? 6.0f : 0.0f;  // inf -> saturated code, NaN -> code 0
  int code;
  float m;
  if (stochastic) {
    m = sr_magnitude(y, sr_uniform(seed, index), &code);
  } else {
    code = rne_code(y);
    m = rne_magnitude(y);
  }
  if (code_out) *code_out = static_cast<uint8_t>(code | (neg ? 8 : 0));
  if (!(a <= kFloatMax)) return x;
  return f_copysign(m * s, x);
}

}  // namespace hf_ilp_fp4
