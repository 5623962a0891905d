// Torch-free entry point of the CUDA kernel (fp4_cuda.cu), bound to torch in
// fp4_cuda_binding.cpp. Raw device pointers, float32 contiguous input, an explicit stream.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace hf_ilp_fp4 {

// Quantize-dequantize `x` (rows x cols, groups of `gsize` along a row, `gpr` per row) into `out`;
// writes one scale per group into `scales` and, if `codes` is not null, the packed codes.
cudaError_t fp4_quantize_cuda_launch(const float* x, float* out, uint8_t* codes, float* scales,
                                     int64_t rows, int64_t cols, int64_t gsize, int64_t gpr,
                                     int mode, bool stochastic, uint64_t seed,
                                     cudaStream_t stream);

}  // namespace hf_ilp_fp4
