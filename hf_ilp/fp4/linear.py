"""FP4 fake-quantized `nn.Linear` and the in-place model conversion.

    >>> import torch
    >>> from hf_ilp.fp4 import HalfSConfig, convert_to_halfs_fp4_training
    >>> model = torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(4)])
    >>> params = list(model.parameters())
    >>> _ = convert_to_halfs_fp4_training(model, HalfSConfig(mode="halfs"))
    >>> [type(m).__name__ for m in model]  # first and last stay in full precision
    ['Linear', 'FP4Linear', 'FP4Linear', 'Linear']
    >>> all(a is b for a, b in zip(params, model.parameters()))  # same Parameter objects
    True

Forward: y = Q(x) Q(W)^T + b with Q the FP4 quantize-dequantize of `HalfSConfig.mode`, groups
along the contraction dim. Backward: G = Q_sr(dL/dy) (stochastic rounding, `grad_mode`), then
dL/dx = G Q(W) and dL/dW = G^T Q(x); the quantizers themselves pass gradients straight through.
Simplification (ours): the backward GEMMs reuse the forward-quantized operands and G's groups
run along the output dim for both GEMMs (hardware FP4 GEMMs would requantize along each GEMM's
contraction dim).

Precision: the GEMMs run in the autocast dtype where `torch.autocast` is on (x and W are cast to
it, then quantized), else in x's dtype; Q(W) is kept for the backward pass in that dtype, and the
gradients of x, W and b come back in their own dtypes (float32 master weights under bf16 or fp16
autocast get float32 gradients; the bias gradient is summed in the bias' dtype).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

from hf_ilp.fp4.config import HalfSConfig
from hf_ilp.fp4.ops import quantize_fp4

logger = logging.getLogger(__name__)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the GEMMs run in: the autocast dtype of x's device where autocast is on (and
    would cast x, as it casts any floating tensor but float64), else x's own dtype."""
    device = x.device.type
    if torch.is_autocast_enabled(device) and x.dtype != torch.float64:
        return torch.get_autocast_dtype(device)
    return x.dtype


def _quantize_as(t: torch.Tensor, dtype: torch.dtype, enabled: bool, mode: str, group_size: int,
                 stochastic: bool = False, seed: int = 0) -> torch.Tensor:
    """`t` in `dtype`, FP4 quantize-dequantized if `enabled`. The cast comes first: the op reads and
    writes bfloat16 and float16 as they are, so a bfloat16 `t` takes one pass over memory."""
    t = t.to(dtype)
    return quantize_fp4(t, mode, group_size, stochastic, seed)[0] if enabled else t


class _FP4LinearFunction(torch.autograd.Function):
    """y = Q(x) Q(W)^T + b in `dtype`; gradients come back in the dtypes of x, W and b (float32
    master weights under autocast get float32 gradients). Autocast is off inside, so every GEMM
    runs in `dtype` whatever the autocast state of the backward pass."""

    @staticmethod
    def forward(ctx, x, weight, bias, config: HalfSConfig, seed: int, dtype: torch.dtype):
        c = config
        xq = _quantize_as(x, dtype, c.quantize_activations, c.mode, c.group_size)
        wq = _quantize_as(weight, dtype, c.quantize_weights, c.mode, c.group_size)
        ctx.save_for_backward(xq, wq)
        ctx.config, ctx.seed = config, seed
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        with torch.autocast(x.device.type, enabled=False):
            return nn.functional.linear(xq, wq, None if bias is None else bias.to(dtype))

    @staticmethod
    def backward(ctx, grad_out):
        xq, wq = ctx.saved_tensors
        c = ctx.config
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        g = _quantize_as(grad_out, wq.dtype, c.quantize_gradients, c.grad_mode, c.group_size,
                         c.stochastic_gradients, ctx.seed)
        grad_x = grad_w = grad_b = None
        with torch.autocast(g.device.type, enabled=False):
            if ctx.needs_input_grad[0]:
                grad_x = (g @ wq).to(x_dtype)
            if ctx.needs_input_grad[1]:
                grad_w = (g.reshape(-1, g.shape[-1]).t() @ xq.reshape(-1, xq.shape[-1])).to(w_dtype)
            if b_dtype is not None and ctx.needs_input_grad[2]:
                grad_b = grad_out.reshape(-1, grad_out.shape[-1]).sum(0, dtype=b_dtype)
        return grad_x, grad_w, grad_b, None, None, None


class FP4Linear(nn.Linear):
    """`nn.Linear` computing in FP4 E2M1 (fake-quantized) per a `HalfSConfig`.

    Build it from an existing linear with `FP4Linear.from_linear(linear, config)`: the new module
    holds the very same `weight`/`bias` Parameter objects.
    """

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None, config=None, layer_id=0):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.config = config if config is not None else HalfSConfig()
        self.layer_id = layer_id
        self._calls = 0

    @classmethod
    def from_linear(cls, linear: nn.Linear, config: HalfSConfig, layer_id: int = 0) -> FP4Linear:
        with torch.device("meta"):
            new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                      config=config, layer_id=layer_id)
        new.weight = linear.weight
        new.bias = linear.bias
        new.train(linear.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A fresh stochastic-rounding stream per layer and call (a pure function of the seed).
        seed = ((self.config.seed << 40) ^ (self.layer_id << 28) ^ self._calls) & (2**63 - 1)
        self._calls += 1
        return _FP4LinearFunction.apply(x, self.weight, self.bias, self.config, seed, _compute_dtype(x))

    def extra_repr(self) -> str:
        c = self.config
        return f"{super().extra_repr()}, mode={c.mode}, group_size={c.group_size}, grad_mode={c.grad_mode}"


def default_module_filter(model: nn.Module, config: HalfSConfig) -> Callable[[nn.Module, str], bool]:
    """The default choice of linears to convert: all but the first and last linear of the model
    (in module order) and those named by `config.skip_modules` (the LM head)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    skip = set(names[:1] + names[-1:]) if config.skip_first_last else set()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None

    def keep(module: nn.Module, fqn: str) -> bool:
        if fqn in skip or module is head:
            return False
        return not any(fqn == s or fqn.endswith("." + s) for s in config.skip_modules)

    return keep


def convert_to_halfs_fp4_training(
    model: nn.Module,
    config: HalfSConfig | None = None,
    module_filter_fn: Callable[[nn.Module, str], bool] | None = None,
) -> nn.Module:
    """Swap `nn.Linear` modules of `model` for `FP4Linear` in place and return `model`.

    The swapped modules keep the same Parameter objects, so an optimizer built before and
    checkpoints (state dict keys) keep working. `module_filter_fn(module, qualified_name)` picks
    the linears to convert; by default `default_module_filter` (skip the first and last linear
    and the LM head). Call it before `accelerator.prepare` (the `HalfSFP4TrainerMixin` does).
    Already converted linears are left as they are, so calling it twice is harmless.
    """
    config = config if config is not None else HalfSConfig()
    keep = module_filter_fn if module_filter_fn is not None else default_module_filter(model, config)
    targets = [
        (name, m) for name, m in model.named_modules()
        if name and type(m) is nn.Linear and keep(m, name)
    ]
    for layer_id, (name, linear) in enumerate(targets):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, FP4Linear.from_linear(linear, config, layer_id=layer_id))
    total = sum(isinstance(m, nn.Linear) for m in model.modules())
    logger.info("hf_ilp.fp4: %d of %d linears now train in FP4 (%s scaling, group %d)",
                len(targets), total, config.mode, config.group_size)
    return model
