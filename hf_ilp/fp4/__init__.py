"""Half-S FP4 training: FP4 E2M1 quantization kernels and fake-quantized linears.

Public API: `HalfSConfig`, `FP4Linear`, `convert_to_halfs_fp4_training`,
`HalfSFP4TrainerMixin`, `quantize_fp4` (the `torch.ops.hf_ilp.fp4_quantize` op), `backends`.
The C++ kernel compiles on first use and serves only once a child process has seen its errors
reach Python (once per machine; see `hf_ilp.fp4._build`).
"""

from hf_ilp._lazy import lazy_exports

_EXPORTS = {
    "HalfSConfig": "hf_ilp.fp4.config",
    "FP4Linear": "hf_ilp.fp4.linear",
    "convert_to_halfs_fp4_training": "hf_ilp.fp4.linear",
    "default_module_filter": "hf_ilp.fp4.linear",
    "backends": "hf_ilp.fp4.ops",
    "quantize_fp4": "hf_ilp.fp4.ops",
    "HalfSFP4TrainerMixin": "hf_ilp.fp4.trainer",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
