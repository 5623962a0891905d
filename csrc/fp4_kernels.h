// Torch-free entry points of the CUDA kernels (fp4_cuda.cu), bound to torch in
// fp4_cuda_binding.cpp. Raw device pointers, contiguous input, an explicit stream.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace hf_ilp_fp4 {

// Element types the kernels read and write directly (no float32 copy).
enum DType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// Bytes of device workspace the launch needs for this layout (0 for groups of up to 4096).
int64_t fp4_cuda_workspace_bytes(int64_t rows, int64_t cols, int64_t gsize, int64_t gpr);
int64_t fp4_cuda_workspace_amax_bytes(int64_t groups);

// Quantize-dequantize `x` (rows x cols of `dtype`, groups of `gsize` along a row, `gpr` per row)
// into `out` (same dtype); writes one scale per group into `scales` and, if `codes` is not null,
// the packed codes. `workspace`: fp4_cuda_workspace_bytes(...) bytes of device memory.
cudaError_t fp4_quantize_cuda_launch(const void* x, void* out, int dtype, uint8_t* codes, float* scales,
                                     void* workspace, int64_t rows, int64_t cols, int64_t gsize,
                                     int64_t gpr, int mode, bool stochastic, uint64_t seed,
                                     cudaStream_t stream);

}  // namespace hf_ilp_fp4
