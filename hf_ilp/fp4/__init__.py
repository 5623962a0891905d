"""Half-S FP4 training: FP4 E2M1 quantization kernels and fake-quantized linears.

Public API: `HalfSConfig`, `FP4Linear`, `convert_to_halfs_fp4_training`,
`HalfSFP4TrainerMixin`, `quantize_fp4` (the `torch.ops.hf_ilp.fp4_quantize` op), `backends`.
The C++ kernel compiles on first use and serves only once a child process has seen its errors
reach Python (once per machine; see `hf_ilp.fp4._build`).
"""

from hf_ilp.fp4.config import HalfSConfig
from hf_ilp.fp4.linear import FP4Linear, convert_to_halfs_fp4_training, default_module_filter
from hf_ilp.fp4.ops import backends, quantize_fp4
from hf_ilp.fp4.trainer import HalfSFP4TrainerMixin

__all__ = [
    "FP4Linear",
    "HalfSConfig",
    "HalfSFP4TrainerMixin",
    "backends",
    "convert_to_halfs_fp4_training",
    "default_module_filter",
    "quantize_fp4",
]
