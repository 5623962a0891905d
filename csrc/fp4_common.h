// Argument checking, group layout and output allocation shared by the CPU op (fp4_cpu.cpp) and
// the CUDA binding (fp4_cuda_binding.cpp). Uses torch; the kernels themselves do not.
//
// Every argument is checked in `prepare`, on the calling thread, before anything is allocated or
// computed. Later only an allocation or a CUDA launch can fail, never inside a parallel region.
// The checks raise c10::ValueError / c10::TypeError, which reach Python as ValueError /
// TypeError, with the types and wording of `check_arguments` in hf_ilp/fp4/reference.py.
#pragma once
// Narrow ATen includes (not <ATen/ATen.h>): they halve the first-use compile time.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>

#include <string>
#include <tuple>

#include "fp4_core.h"

namespace hf_ilp_fp4 {

// A tensor seen as `rows` x `cols` (cols = last dim); groups of `gsize` consecutive elements of a
// row, `gpr` groups per row, the last one possibly shorter. Tensor granularity: 1 x numel.
struct Layout {
  int64_t rows = 0, cols = 0, gsize = 1, gpr = 0;
  int64_t numel() const { return rows * cols; }
  int64_t groups() const { return rows * gpr; }
};

inline int parse_mode(const std::string& mode) {
  if (mode == "max") return kMax;
  if (mode == "half") return kHalf;
  if (mode == "halfs") return kHalfS;
  if (mode == "mse") return kMse;
  TORCH_CHECK_VALUE(false,
                    "hf_ilp::fp4_quantize: mode must be one of 'max', 'half', 'halfs', 'mse', got '",
                    mode, "'");
}

inline Layout make_layout(const at::Tensor& x, int64_t group_size) {
  TORCH_CHECK_VALUE(group_size > 0 || group_size == -1 || group_size == 0,
                    "hf_ilp::fp4_quantize: group_size must be a positive block size (e.g. 16 or "
                    "32), -1 (one group per row) or 0 (one group for the whole tensor), got ",
                    group_size);
  Layout L;
  const int64_t n = x.numel();
  if (group_size == 0) {
    L.rows = 1;
    L.cols = n;
    L.gsize = n > 0 ? n : 1;
    L.gpr = 1;
    return L;
  }
  L.cols = x.dim() > 0 ? x.size(-1) : 1;
  L.rows = L.cols > 0 ? n / L.cols : 0;
  L.gsize = group_size > 0 ? group_size : (L.cols > 0 ? L.cols : 1);
  L.gpr = (L.cols + L.gsize - 1) / L.gsize;
  return L;
}

struct Prepared {
  at::Tensor x;       // float32 (or, `native`, x's own float32 / bfloat16 / float16), contiguous
  at::Tensor out;     // the same dtype as `x` here, contiguous
  at::Tensor codes;   // uint8 packed codes, or empty
  at::Tensor scales;  // float32 (groups,)
  Layout layout;
  int mode;
};

// `native`: a kernel that reads float32, bfloat16 and float16 itself gets x in its own dtype
// (float64 is still read as float32).
inline Prepared prepare(const at::Tensor& x, const std::string& mode, int64_t group_size,
                        bool return_codes, bool native = false) {
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()),
                   "hf_ilp::fp4_quantize: x must be a floating-point tensor (float32, bfloat16, "
                   "float16, float64), got ", x.scalar_type());
  Prepared p;
  p.mode = parse_mode(mode);
  p.layout = make_layout(x, group_size);
  const auto t = x.scalar_type();
  const bool keep = native && (t == at::kFloat || t == at::kBFloat16 || t == at::kHalf);
  p.x = (keep ? x : x.to(at::kFloat)).contiguous();
  p.out = at::empty_like(p.x, at::MemoryFormat::Contiguous);
  p.codes = at::zeros({return_codes ? (x.numel() + 1) / 2 : 0}, x.options().dtype(at::kByte));
  p.scales = at::empty({p.layout.groups()}, x.options().dtype(at::kFloat));
  return p;
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> finish(const at::Tensor& x, Prepared& p) {
  at::Tensor out = p.out.scalar_type() == x.scalar_type() ? p.out : p.out.to(x.scalar_type());
  return {out, p.codes, p.scales};
}

}  // namespace hf_ilp_fp4
