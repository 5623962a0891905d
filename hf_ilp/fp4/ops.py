"""The `hf_ilp::fp4_quantize` custom op: one schema, compiled kernels where available, the
pure-PyTorch reference elsewhere, a fake (meta) implementation for torch.compile and a
straight-through gradient.

The schema string below is the only definition: the build writes it into the generated header
that `csrc/fp4_cpu.cpp` passes to `TORCH_LIBRARY`, and without a compiled library it is defined
from Python. Registration happens on first use (`ensure_ops`), which may compile the kernels
once per machine (see `hf_ilp.fp4._build`).

    >>> import torch
    >>> from hf_ilp.fp4.ops import quantize_fp4
    >>> w = torch.randn(64, 128)
    >>> wq, codes, scales = quantize_fp4(w, mode="halfs", group_size=32, return_codes=True)
    >>> codes.shape, scales.shape
    (torch.Size([4096]), torch.Size([256]))
"""

from __future__ import annotations

import threading

import torch

from hf_ilp.fp4.reference import check_arguments, fp4_quantize_reference, group_layout

OP_NAME = "fp4_quantize"
SCHEMA_ARGS = (
    "(Tensor x, str mode, int group_size, bool stochastic=False, int seed=0, bool return_codes=False)"
    " -> (Tensor, Tensor, Tensor)"
)
SCHEMA = OP_NAME + SCHEMA_ARGS
QUALNAME = f"hf_ilp::{OP_NAME}"

_lock = threading.Lock()
_backends: dict[str, str] | None = None
_fallback_lib = None  # keeps the Python-side registrations alive


def ensure_ops() -> dict[str, str]:
    """Register the op once per process; returns {"cpu": ..., "cuda": ...} = "cpp" / "cuda" /
    "reference" (which implementation serves each device)."""
    global _backends, _fallback_lib
    if _backends is not None:
        return _backends
    with _lock:
        if _backends is not None:
            return _backends
        from hf_ilp.fp4._build import load_kernels

        loaded = load_kernels(SCHEMA)
        _fallback_lib = torch.library.Library("hf_ilp", "FRAGMENT")
        if not loaded["cpu"]:
            _fallback_lib.define(SCHEMA)
            _fallback_lib.impl(OP_NAME, fp4_quantize_reference, "CPU")
        if not loaded["cuda"]:
            _fallback_lib.impl(OP_NAME, fp4_quantize_reference, "CUDA")
        torch.library.register_fake(QUALNAME, _fake, lib=_fallback_lib)
        torch.library.register_autograd(QUALNAME, _backward, setup_context=_setup_context, lib=_fallback_lib)
        _backends = {
            "cpu": "cpp" if loaded["cpu"] else "reference",
            "cuda": "cuda" if loaded["cuda"] else "reference",
        }
        return _backends


def _fake(x, mode, group_size, stochastic=False, seed=0, return_codes=False):
    check_arguments(x, mode, group_size, stochastic, seed, return_codes)
    rows, _, _, gpr = group_layout(x.shape, group_size)
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    codes = x.new_empty(((x.numel() + 1) // 2) if return_codes else 0, dtype=torch.uint8)
    return out, codes, x.new_empty(rows * gpr, dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    pass


def _backward(ctx, grad_out, grad_codes, grad_scales):
    # Straight-through estimator: d dequant(x) / dx := 1.
    return grad_out, None, None, None, None, None


def quantize_fp4(
    x: torch.Tensor,
    mode: str = "halfs",
    group_size: int = 32,
    stochastic: bool = False,
    seed: int = 0,
    return_codes: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FP4 E2M1 quantize-dequantize `x` with a per-group scale chosen by `mode`.

    Args:
        x: floating-point CPU or CUDA tensor, any strides (computed in float32, returned in x's
            dtype, contiguous; the CPU kernel reads and writes bfloat16 and float16 as they are).
        mode: "max" (amax/6), "half" (amax/12), "halfs" (half with the MSE-clip fallback), "mse".
        group_size: block size along the last dim (e.g. 16 or 32), -1 for rows, 0 for the tensor.
        stochastic: stochastic rounding (unbiased; for gradients) instead of round-to-nearest-even.
        seed: seed of the stochastic rounding (results are a pure function of seed and position).
        return_codes: also return the packed 4-bit codes (otherwise an empty uint8 tensor).

    Returns:
        (dequantized, packed codes, scales): see `hf_ilp.fp4.reference` for the exact semantics.

    Raises:
        TypeError, ValueError: naming the wrong argument (`reference.check_arguments`), before
        anything is compiled or computed.
    """
    check_arguments(x, mode, group_size, stochastic, seed, return_codes)
    ensure_ops()
    return torch.ops.hf_ilp.fp4_quantize(x, mode, group_size, stochastic, seed, return_codes)


def backends() -> dict[str, str]:
    """Which implementation serves CPU and CUDA tensors (compiles the kernels on first call)."""
    return dict(ensure_ops())
