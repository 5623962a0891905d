// CUDA kernel of hf_ilp::fp4_quantize. Includes no torch header (only the CUDA runtime and
// fp4_core.h), so it compiles with a bare nvcc; fp4_cuda_binding.cpp binds it to torch.
// Build with --fmad=false: results must equal the CPU kernel and the reference bitwise.
//
// Pass 1 (select_scales): one thread block per group (grid-stride over groups) reduces the
// finite amax and, for `halfs`/`mse`, every candidate's squared error (float64), then picks
// the scale exactly like the CPU kernel. Pass 2 (apply): one thread per pair of elements, so a
// thread owns a whole byte of packed codes.
#include <cuda_runtime.h>

#include "fp4_core.h"
#include "fp4_kernels.h"

namespace hf_ilp_fp4 {
namespace {

constexpr int kThreads = 256;

__device__ float block_max(float v, float* smem) {
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, off));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < (blockDim.x >> 5) ? smem[lane] : 0.0f;
    for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, off));
    if (lane == 0) smem[0] = v;
  }
  __syncthreads();
  v = smem[0];
  __syncthreads();
  return v;
}

__device__ double block_sum(double v, double* smem) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < (blockDim.x >> 5) ? smem[lane] : 0.0;
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
    if (lane == 0) smem[0] = v;
  }
  __syncthreads();
  v = smem[0];
  __syncthreads();
  return v;
}

__global__ void select_scales(const float* __restrict__ x, float* __restrict__ scales,
                              int64_t groups, int64_t cols, int64_t gsize, int64_t gpr, int mode) {
  __shared__ float smax[32];
  __shared__ double ssum[32];
  for (int64_t g = blockIdx.x; g < groups; g += gridDim.x) {
    const int64_t r = g / gpr, j = g % gpr;
    const float* p = x + r * cols + j * gsize;
    const int64_t n = (cols - j * gsize) < gsize ? (cols - j * gsize) : gsize;
    float m = 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      const float a = f_abs(p[i]);
      m = (a <= kFloatMax && a > m) ? a : m;
    }
    const float amax = block_max(m, smax);
    float cand[kMaxCandidates];
    const int k = amax > 0.0f ? candidate_scales(amax, mode, cand) : 0;
    float chosen = 0.0f;
    if (k == 1) {
      chosen = cand[0];
    } else if (k > 1) {
      double err[kMaxCandidates];
      for (int c = 0; c < k; ++c) {
        double acc = 0.0;
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
          const float a = f_abs(p[i]);
          const float d = __fmul_rn(rne_magnitude(__fdiv_rn(a, cand[c])), cand[c]);
          const double e = (a <= kFloatMax) ? __fsub_rn(a, d) : 0.0f;
          acc += e * e;
        }
        err[c] = block_sum(acc, ssum);
      }
      int best = 0;
      for (int c = 1; c < k; ++c)
        if (err[c] < err[best] * kTieMargin) best = c;
      chosen = cand[best];
    }
    if (threadIdx.x == 0) scales[g] = chosen;
  }
}

__global__ void apply(const float* __restrict__ x, float* __restrict__ out,
                      uint8_t* __restrict__ codes, const float* __restrict__ scales, int64_t n,
                      int64_t cols, int64_t gsize, int64_t gpr, bool stochastic, uint64_t seed) {
  const int64_t pairs = (n + 1) / 2;
  for (int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; q < pairs;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    uint8_t byte = 0;
    for (int h = 0; h < 2; ++h) {
      const int64_t i = 2 * q + h;
      if (i >= n) break;
      const int64_t r = i / cols, c = i % cols;
      const float s = scales[r * gpr + c / gsize];
      uint8_t code;
      out[i] = quantize_one(x[i], s, stochastic, seed, i, &code);
      byte |= static_cast<uint8_t>(code << (4 * h));
    }
    if (codes) codes[q] = byte;
  }
}

}  // namespace

cudaError_t fp4_quantize_cuda_launch(const float* x, float* out, uint8_t* codes, float* scales,
                                     int64_t rows, int64_t cols, int64_t gsize, int64_t gpr,
                                     int mode, bool stochastic, uint64_t seed,
                                     cudaStream_t stream) {
  const int64_t groups = rows * gpr, n = rows * cols;
  if (n == 0) return cudaSuccess;
  const int sel_blocks = static_cast<int>(groups < 65535 * 8 ? groups : 65535 * 8);
  select_scales<<<sel_blocks, kThreads, 0, stream>>>(x, scales, groups, cols, gsize, gpr, mode);
  const int64_t pairs = (n + 1) / 2;
  const int64_t want = (pairs + kThreads - 1) / kThreads;
  const int app_blocks = static_cast<int>(want < 65535 * 16 ? want : 65535 * 16);
  apply<<<app_blocks, kThreads, 0, stream>>>(x, out, codes, scales, n, cols, gsize, gpr,
                                             stochastic, seed);
  return cudaGetLastError();
}

}  // namespace hf_ilp_fp4
