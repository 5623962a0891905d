// Binds the torch-free CUDA kernel (fp4_cuda.cu) to hf_ilp::fp4_quantize for CUDA tensors.
// Compiled only against a CUDA build of torch (see hf_ilp/fp4/_build.py).
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "fp4_common.h"
#include "fp4_kernels.h"

namespace hf_ilp_fp4 {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> fp4_quantize_cuda(const at::Tensor& x_in,
                                                                 c10::string_view mode,
                                                                 int64_t group_size,
                                                                 bool stochastic, int64_t seed,
                                                                 bool return_codes) {
  c10::cuda::CUDAGuard guard(x_in.device());
  Prepared p = prepare(x_in, std::string(mode), group_size, return_codes, /*native=*/true);
  const Layout L = p.layout;
  if (L.numel() == 0) {
    p.scales.zero_();
    return finish(x_in, p);
  }
  const auto t = p.x.scalar_type();
  const int dtype = t == at::kBFloat16 ? kBFloat16 : (t == at::kHalf ? kFloat16 : kFloat32);
  const int64_t ws_bytes = fp4_cuda_workspace_bytes(L.rows, L.cols, L.gsize, L.gpr);
  at::Tensor workspace = at::empty({ws_bytes}, p.x.options().dtype(at::kByte));
  const cudaError_t err = fp4_quantize_cuda_launch(
      p.x.data_ptr(), p.out.data_ptr(), dtype, return_codes ? p.codes.data_ptr<uint8_t>() : nullptr,
      p.scales.data_ptr<float>(), ws_bytes ? workspace.data_ptr() : nullptr, L.rows, L.cols, L.gsize,
      L.gpr, p.mode, stochastic, static_cast<uint64_t>(seed), c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "hf_ilp::fp4_quantize CUDA kernel failed: ", cudaGetErrorString(err));
  return finish(x_in, p);
}

}  // namespace
}  // namespace hf_ilp_fp4

TORCH_LIBRARY_IMPL(hf_ilp, CUDA, m) { m.impl("fp4_quantize", &hf_ilp_fp4::fp4_quantize_cuda); }
