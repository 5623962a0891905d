// CUDA kernels of hf_ilp::fp4_quantize. Include no torch header (only the CUDA runtime, its
// bf16/fp16 types and fp4_core.h), so they compile with a bare nvcc; fp4_cuda_binding.cpp binds
// them to torch. Built with --fmad=false: results equal the CPU kernel and the reference bitwise.
//
// Designed by the roofline: quantize-dequantize reads each element once and writes it once, so
// the kernels aim at memory bandwidth. Three paths, by group size:
//
// * blocks of 16 / 32 (`small_groups`, the path of training): one 128-bit load per thread
//   (4 floats or 8 bf16/fp16), a group spread over 2-8 neighbouring lanes of a warp; the finite
//   amax and every candidate's squared error are reduced with shuffles among those lanes only
//   (no shared memory, no block barrier); the scale is chosen, the group quantized, codes packed
//   and the result stored (128-bit) while the group is still in registers. One pass over memory.
// * other groups up to kWarpGroupMax elements (`select_per_warp` then `apply`): a warp per group,
//   shuffles only; the group stays in L1/L2 while its candidates are scored, then an elementwise
//   pass quantizes (a thread owns a byte of codes, whichever groups its two elements belong to).
// * larger groups (rows of wide matrices, the whole tensor): a two-level reduction. Chunks of
//   kChunk elements are reduced by many blocks at once (`chunk_amax`, then for halfs/mse
//   `chunk_errors`, which keeps one partial sum per chunk and candidate), `pick_scales` adds the
//   partials in chunk order (deterministic), and `apply` quantizes. Never one block per tensor.
//
// Squared errors are summed in float64 as in the reference. Sums of float32 squares of float32
// differences are exact in float64 for any group that fits these paths' shapes up to rounding far
// below the tie margin (kTieMargin), so summing in another order than the reference picks the
// same scale.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "fp4_core.h"
#include "fp4_kernels.h"

namespace hf_ilp_fp4 {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kWarpGroupMax = 4096;  // larger groups take the two-level path
constexpr int64_t kChunk = 16384;        // elements per partial reduction of a large group
constexpr int kMaxGrid = 65535 * 16;

// ---- element types ----------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ float to_float(T v);
template <>
__device__ __forceinline__ float to_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <>
__device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }

// ---- the arithmetic of one group --------------------------------------------------------------
// Candidate c of `mode` for a group with finite amax `amax` > 0 (the order of candidate_scales).
template <int kMode>
__device__ __forceinline__ float candidate(float amax, int c) {
  const float s_max = amax / 6.0f;
  if (kMode == kMax) return s_max;
  if (kMode == kHalf) return s_max * 0.5f;
  if (kMode == kHalfS) {
    if (c == 0) return s_max * 0.5f;
    if (c == 1) return s_max;
    return amax * clip_factor(c - 2);
  }
  return amax * clip_factor(c);  // kMse
}

template <int kMode>
__host__ __device__ constexpr int num_candidates() {
  return kMode == kHalfS ? kMaxCandidates : (kMode == kMse ? kNumClip : 1);
}

// Squared error of one element for scale s, as the reference computes it (float32 difference,
// squared in float64); non-finite elements count 0.
__device__ __forceinline__ double sq_error(float x, float s) {
  const float a = f_abs(x);
  const float d = __fmul_rn(rne_magnitude(__fdiv_rn(a, s)), s);
  const double e = (a <= kFloatMax) ? static_cast<double>(__fsub_rn(a, d)) : 0.0;
  return __dmul_rn(e, e);
}

__device__ __forceinline__ float finite_abs_or_zero(float x) {
  const float a = f_abs(x);
  return a <= kFloatMax ? a : 0.0f;
}

// Running pick over candidates in order: the first, replaced only by a clearly lower error.
struct Best {
  double err = 0.0;
  float scale = 0.0f;
  __device__ __forceinline__ void offer(int c, double e, float s) {
    if (c == 0 || e < err * kTieMargin) {
      err = e;
      scale = s;
    }
  }
};

// ---- path 1: blocks of 16 / 32 in registers -----------------------------------------------------
template <typename T>
struct alignas(16) Vec16 {
  static constexpr int kN = 16 / sizeof(T);
  T v[kN];
};

template <int kN>
struct Packed;  // kN 4-bit codes in one store
template <>
struct Packed<4> { using type = uint16_t; };
template <>
struct Packed<8> { using type = uint32_t; };

template <int kLanes>
__device__ __forceinline__ float group_max(float v, unsigned mask) {
#pragma unroll
  for (int off = kLanes / 2; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(mask, v, off, kLanes));
  return v;
}

template <int kLanes>
__device__ __forceinline__ double group_sum(double v, unsigned mask) {
#pragma unroll
  for (int off = kLanes / 2; off > 0; off >>= 1) v = __dadd_rn(v, __shfl_xor_sync(mask, v, off, kLanes));
  return v;
}

// Every thread holds kV consecutive elements; kG / kV neighbouring lanes hold one group.
// Preconditions (checked by the launcher): cols % kG == 0, x/out 16-byte aligned, codes aligned
// to its store.
template <typename T, int kG, int kMode>
__global__ void __launch_bounds__(kThreads) small_groups(const T* __restrict__ x, T* __restrict__ out,
                                                         uint8_t* __restrict__ codes,
                                                         float* __restrict__ scales, int64_t nvec,
                                                         bool stochastic, uint64_t seed) {
  using V = Vec16<T>;
  constexpr int kV = V::kN;
  constexpr int kLanes = kG / kV;
  static_assert(kLanes >= 1 && kLanes <= 32 && (kLanes & (kLanes - 1)) == 0, "lanes per group");
  const int lane = threadIdx.x & 31;
  const unsigned mask = (kLanes == 32 ? 0xffffffffu : ((1u << kLanes) - 1u)) << (lane & ~(kLanes - 1));
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  // nvec is a multiple of kLanes and a group's lanes are aligned to kLanes, so they enter and
  // leave this loop together (the shuffles below name exactly them).
  for (int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < nvec; v += stride) {
    const V in = reinterpret_cast<const V*>(x)[v];
    float f[kV];
    float m = 0.0f;
#pragma unroll
    for (int j = 0; j < kV; ++j) {
      f[j] = to_float(in.v[j]);
      const float a = finite_abs_or_zero(f[j]);
      m = a > m ? a : m;
    }
    const float amax = group_max<kLanes>(m, mask);
    float s = 0.0f;
    if (amax > 0.0f) {
      if (num_candidates<kMode>() == 1) {
        s = candidate<kMode>(amax, 0);
      } else {
        Best best;
#pragma unroll
        for (int c = 0; c < num_candidates<kMode>(); ++c) {
          const float sc = candidate<kMode>(amax, c);
          double acc = 0.0;
#pragma unroll
          for (int j = 0; j < kV; ++j) acc = __dadd_rn(acc, sq_error(f[j], sc));
          best.offer(c, group_sum<kLanes>(acc, mask), sc);
        }
        s = best.scale;
      }
    }
    const int64_t first = v * kV;  // index of this thread's first element
    V res;
    typename Packed<kV>::type packed = 0;
#pragma unroll
    for (int j = 0; j < kV; ++j) {
      uint8_t code;
      res.v[j] = from_float<T>(quantize_one(f[j], s, stochastic, seed, first + j, &code));
      packed |= static_cast<typename Packed<kV>::type>(code) << (4 * j);
    }
    reinterpret_cast<V*>(out)[v] = res;
    if (codes) reinterpret_cast<typename Packed<kV>::type*>(codes)[v] = packed;
    if ((lane & (kLanes - 1)) == 0) scales[v / kLanes] = s;
  }
}

// ---- path 2: a warp per group ---------------------------------------------------------------------
struct Groups {
  int64_t groups, cols, gsize, gpr;
  __device__ __forceinline__ int64_t start(int64_t g) const { return (g / gpr) * cols + (g % gpr) * gsize; }
  __device__ __forceinline__ int64_t size(int64_t g) const {
    const int64_t left = cols - (g % gpr) * gsize;
    return left < gsize ? left : gsize;
  }
};

template <typename T, int kMode>
__global__ void __launch_bounds__(kThreads) select_per_warp(const T* __restrict__ x, float* __restrict__ scales,
                                                            Groups G) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x >> 5);
  for (int64_t g = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; g < G.groups; g += warps) {
    const T* p = x + G.start(g);
    const int64_t n = G.size(g);
    float m = 0.0f;
    for (int64_t i = lane; i < n; i += 32) {
      const float a = finite_abs_or_zero(to_float(p[i]));
      m = a > m ? a : m;
    }
    const float amax = group_max<32>(m, 0xffffffffu);
    float s = 0.0f;
    if (amax > 0.0f) {
      if (num_candidates<kMode>() == 1) {
        s = candidate<kMode>(amax, 0);
      } else {
        Best best;
        for (int c = 0; c < num_candidates<kMode>(); ++c) {
          const float sc = candidate<kMode>(amax, c);
          double acc = 0.0;
          for (int64_t i = lane; i < n; i += 32) acc = __dadd_rn(acc, sq_error(to_float(p[i]), sc));
          best.offer(c, group_sum<32>(acc, 0xffffffffu), sc);
        }
        s = best.scale;
      }
    }
    if (lane == 0) scales[g] = s;
  }
}

// Quantize every element with its group's scale; a thread owns a pair of elements (a byte of codes).
template <typename T>
__global__ void __launch_bounds__(kThreads) apply(const T* __restrict__ x, T* __restrict__ out,
                                                  uint8_t* __restrict__ codes, const float* __restrict__ scales,
                                                  int64_t n, Groups G, bool stochastic, uint64_t seed) {
  const int64_t pairs = (n + 1) / 2;
  for (int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; q < pairs;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    uint8_t byte = 0;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t i = 2 * q + h;
      if (i >= n) break;
      const int64_t r = i / G.cols, c = i % G.cols;
      uint8_t code;
      out[i] = from_float<T>(quantize_one(to_float(x[i]), scales[r * G.gpr + c / G.gsize], stochastic, seed, i, &code));
      byte |= static_cast<uint8_t>(code << (4 * h));
    }
    if (codes) codes[q] = byte;
  }
}

// ---- path 3: large groups, two levels ----------------------------------------------------------------
struct Chunks {
  Groups G;
  int64_t per_group;  // chunks per group (of the longest group)
  __host__ __device__ __forceinline__ int64_t total() const { return G.groups * per_group; }
};

// Block-wide reduction helpers for path 3 only (a block serves one chunk, many blocks one group).
__device__ __forceinline__ float block_max(float v, float* smem) {
  v = group_max<32>(v, 0xffffffffu);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  float m = 0.0f;
  if (threadIdx.x == 0)
    for (int w = 0; w < (kThreads >> 5); ++w) m = smem[w] > m ? smem[w] : m;
  __syncthreads();
  return m;  // valid in thread 0
}

template <typename T>
__global__ void __launch_bounds__(kThreads) chunk_amax(const T* __restrict__ x, unsigned* __restrict__ amax_bits,
                                                       Chunks C) {
  __shared__ float smem[kThreads / 32];
  for (int64_t ch = blockIdx.x; ch < C.total(); ch += gridDim.x) {
    const int64_t g = ch / C.per_group, k = ch % C.per_group;
    const int64_t n = C.G.size(g), lo = k * kChunk, hi = lo + kChunk < n ? lo + kChunk : n;
    const T* p = x + C.G.start(g);
    float m = 0.0f;
    for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
      const float a = finite_abs_or_zero(to_float(p[i]));
      m = a > m ? a : m;
    }
    m = block_max(m, smem);
    // non-negative floats order like their bit patterns
    if (threadIdx.x == 0 && m > 0.0f) atomicMax(amax_bits + g, __float_as_uint(m));
  }
}

template <typename T, int kMode>
__global__ void __launch_bounds__(kThreads) chunk_errors(const T* __restrict__ x, const unsigned* __restrict__ amax_bits,
                                                         double* __restrict__ partial, Chunks C) {
  constexpr int kK = num_candidates<kMode>();
  __shared__ double smem[kThreads / 32][kK];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int64_t ch = blockIdx.x; ch < C.total(); ch += gridDim.x) {
    const int64_t g = ch / C.per_group, k = ch % C.per_group;
    const int64_t n = C.G.size(g), lo = k * kChunk, hi = lo + kChunk < n ? lo + kChunk : n;
    const float amax = __uint_as_float(amax_bits[g]);
    const T* p = x + C.G.start(g);
    double acc[kK];
#pragma unroll
    for (int c = 0; c < kK; ++c) acc[c] = 0.0;
    if (amax > 0.0f) {
      for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        const float f = to_float(p[i]);
#pragma unroll
        for (int c = 0; c < kK; ++c) acc[c] = __dadd_rn(acc[c], sq_error(f, candidate<kMode>(amax, c)));
      }
    }
#pragma unroll
    for (int c = 0; c < kK; ++c) {
      const double s = group_sum<32>(acc[c], 0xffffffffu);
      if (lane == 0) smem[warp][c] = s;
    }
    __syncthreads();
    if (threadIdx.x < kK) {
      double s = 0.0;
      for (int w = 0; w < (kThreads >> 5); ++w) s = __dadd_rn(s, smem[w][threadIdx.x]);
      partial[ch * kK + threadIdx.x] = s;
    }
    __syncthreads();
  }
}

template <int kMode>
__global__ void pick_scales(const unsigned* __restrict__ amax_bits, const double* __restrict__ partial,
                            float* __restrict__ scales, Chunks C) {
  constexpr int kK = num_candidates<kMode>();
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < C.G.groups;
       g += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float amax = __uint_as_float(amax_bits[g]);
    float s = 0.0f;
    if (amax > 0.0f) {
      if (kK == 1) {
        s = candidate<kMode>(amax, 0);
      } else {
        const int64_t used = (C.G.size(g) + kChunk - 1) / kChunk;  // chunks this group has
        Best best;
        for (int c = 0; c < kK; ++c) {
          double e = 0.0;
          for (int64_t k = 0; k < used; ++k) e = __dadd_rn(e, partial[(g * C.per_group + k) * kK + c]);
          best.offer(c, e, candidate<kMode>(amax, c));
        }
        s = best.scale;
      }
    }
    scales[g] = s;
  }
}

int grid_for(int64_t work) {
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  return static_cast<int>(blocks < 1 ? 1 : (blocks < kMaxGrid ? blocks : kMaxGrid));
}

bool aligned(const void* p, uintptr_t to) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % to == 0; }

template <typename T, int kMode>
cudaError_t launch(const T* x, T* out, uint8_t* codes, float* scales, void* workspace, const Groups& G,
                   bool stochastic, uint64_t seed, cudaStream_t stream) {
  const int64_t n = G.groups / G.gpr * G.cols;
  constexpr int kV = Vec16<T>::kN;
  const bool vector_ok = G.cols % G.gsize == 0 && aligned(x, 16) && aligned(out, 16) && aligned(codes, kV / 2);
  if (vector_ok && (G.gsize == 16 || G.gsize == 32)) {
    const int64_t nvec = n / kV;
    if (G.gsize == 16)
      small_groups<T, 16, kMode><<<grid_for(nvec), kThreads, 0, stream>>>(x, out, codes, scales, nvec, stochastic, seed);
    else
      small_groups<T, 32, kMode><<<grid_for(nvec), kThreads, 0, stream>>>(x, out, codes, scales, nvec, stochastic, seed);
    return cudaGetLastError();
  }
  if (G.gsize <= kWarpGroupMax) {
    select_per_warp<T, kMode><<<grid_for(G.groups * 32), kThreads, 0, stream>>>(x, scales, G);
  } else {
    const Chunks C{G, (G.gsize + kChunk - 1) / kChunk};
    unsigned* amax_bits = static_cast<unsigned*>(workspace);
    cudaError_t err = cudaMemsetAsync(amax_bits, 0, sizeof(unsigned) * G.groups, stream);
    if (err != cudaSuccess) return err;
    const int chunk_grid = static_cast<int>(C.total() < kMaxGrid ? C.total() : kMaxGrid);
    chunk_amax<T><<<chunk_grid, kThreads, 0, stream>>>(x, amax_bits, C);
    double* partial = nullptr;
    if (num_candidates<kMode>() > 1) {
      partial = reinterpret_cast<double*>(static_cast<char*>(workspace) + fp4_cuda_workspace_amax_bytes(G.groups));
      chunk_errors<T, kMode><<<chunk_grid, kThreads, 0, stream>>>(x, amax_bits, partial, C);
    }
    pick_scales<kMode><<<grid_for(G.groups), kThreads, 0, stream>>>(amax_bits, partial, scales, C);
  }
  apply<T><<<grid_for((n + 1) / 2), kThreads, 0, stream>>>(x, out, codes, scales, n, G, stochastic, seed);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_mode(const void* x, void* out, uint8_t* codes, float* scales, void* workspace,
                        const Groups& G, int mode, bool stochastic, uint64_t seed, cudaStream_t stream) {
  const T* xt = static_cast<const T*>(x);
  T* ot = static_cast<T*>(out);
  switch (mode) {
    case kMax: return launch<T, kMax>(xt, ot, codes, scales, workspace, G, stochastic, seed, stream);
    case kHalf: return launch<T, kHalf>(xt, ot, codes, scales, workspace, G, stochastic, seed, stream);
    case kHalfS: return launch<T, kHalfS>(xt, ot, codes, scales, workspace, G, stochastic, seed, stream);
    default: return launch<T, kMse>(xt, ot, codes, scales, workspace, G, stochastic, seed, stream);
  }
}

}  // namespace

int64_t fp4_cuda_workspace_amax_bytes(int64_t groups) { return (groups * static_cast<int64_t>(sizeof(unsigned)) + 15) / 16 * 16; }

int64_t fp4_cuda_workspace_bytes(int64_t rows, int64_t cols, int64_t gsize, int64_t gpr) {
  if (gsize <= kWarpGroupMax) return 0;
  const int64_t groups = rows * gpr, per_group = (gsize + kChunk - 1) / kChunk;
  return fp4_cuda_workspace_amax_bytes(groups) + groups * per_group * kMaxCandidates * static_cast<int64_t>(sizeof(double));
}

cudaError_t fp4_quantize_cuda_launch(const void* x, void* out, int dtype, uint8_t* codes, float* scales,
                                     void* workspace, int64_t rows, int64_t cols, int64_t gsize,
                                     int64_t gpr, int mode, bool stochastic, uint64_t seed,
                                     cudaStream_t stream) {
  if (rows * cols == 0) return cudaSuccess;
  const Groups G{rows * gpr, cols, gsize, gpr};
  switch (dtype) {
    case kFloat32: return launch_mode<float>(x, out, codes, scales, workspace, G, mode, stochastic, seed, stream);
    case kBFloat16: return launch_mode<__nv_bfloat16>(x, out, codes, scales, workspace, G, mode, stochastic, seed, stream);
    case kFloat16: return launch_mode<__half>(x, out, codes, scales, workspace, G, mode, stochastic, seed, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace hf_ilp_fp4
