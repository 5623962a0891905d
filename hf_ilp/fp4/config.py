"""`HalfSConfig`: how `convert_to_halfs_fp4_training` quantizes a model's linears."""

from __future__ import annotations

from dataclasses import dataclass, field

from hf_ilp.fp4.reference import MODES


@dataclass
class HalfSConfig:
    """FP4 (E2M1) fake-quantized training of `nn.Linear` layers with Half-S scaling.

    Weights and activations are quantized in the forward pass with `mode` (round to nearest,
    ties to even), output gradients in the backward pass with `grad_mode` and stochastic
    rounding; gradients reach the full-precision weights through a straight-through estimator.

        >>> cfg = HalfSConfig(mode="halfs", group_size=32)
        >>> HalfSConfig(mode="max").mode
        'max'
    """

    mode: str = field(
        default="halfs",
        metadata={"help": "Scale of weights and activations per group: 'halfs' (Half-S: amax/12 "
                  "with the MSE-clip fallback), 'half', 'max' (amax/6) or 'mse'."},
    )
    group_size: int = field(
        default=32,
        metadata={"help": "Scaling group along the contraction (last) dim: a block size such as "
                  "16 or 32, -1 for one scale per row, 0 for one per tensor."},
    )
    quantize_weights: bool = field(default=True, metadata={"help": "Quantize weights in forward."})
    quantize_activations: bool = field(
        default=True, metadata={"help": "Quantize the linear's input activations in forward."}
    )
    quantize_gradients: bool = field(
        default=True, metadata={"help": "Quantize output gradients in backward (both GEMMs)."}
    )
    grad_mode: str = field(
        default="max",
        metadata={"help": "Scale of the output gradients: 'max' keeps stochastic rounding "
                  "unbiased (nothing clips); any mode of `mode` is accepted."},
    )
    stochastic_gradients: bool = field(
        default=True, metadata={"help": "Stochastic rounding (seeded) of gradients; else nearest-even."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the gradients' stochastic rounding."})
    skip_first_last: bool = field(
        default=True,
        metadata={"help": "Keep the first and the last linear of the model in full precision."},
    )
    skip_modules: list[str] = field(
        default_factory=lambda: ["lm_head"],
        metadata={"help": "Linears whose qualified name ends with one of these stay in full precision."},
    )

    def __post_init__(self):
        for name in ("mode", "grad_mode"):
            value = getattr(self, name)
            if value not in MODES:
                raise ValueError(f"HalfSConfig.{name} must be one of {MODES}, got {value!r}")
        if not (self.group_size > 0 or self.group_size in (-1, 0)):
            raise ValueError(
                f"HalfSConfig.group_size must be a block size > 0, -1 (row) or 0 (tensor), got {self.group_size}"
            )
