"""The accelerate-facing entry: a Trainer mixin that converts the model to Half-S FP4 training
right before the Trainer builds its `Accelerator` (so before any `accelerator.prepare`).

accelerate has no plug-in point for a new precision (its `mixed_precision` knows no/fp16/bf16/
fp8), so, like torchao's float8 training, the linears are swapped before `prepare`; keep
`mixed_precision` as it is (`bf16=True`, on GPUs and CPUs alike): under its autocast the
fake-quantized linears run their GEMMs in bf16 (or fp16) and the float32 master weights get
float32 gradients.

    from trl import SFTTrainer
    from hf_ilp import HalfSConfig, HalfSFP4TrainerMixin

    class FP4SFTTrainer(HalfSFP4TrainerMixin, SFTTrainer):
        pass

    trainer = FP4SFTTrainer(model=model, args=args, train_dataset=ds,
                            fp4_config=HalfSConfig(mode="halfs"))
    trainer.train()

With plain accelerate: `convert_to_halfs_fp4_training(model, config)` before
`accelerator.prepare(model, optimizer, ...)`.
"""

from __future__ import annotations

from hf_ilp.fp4.config import HalfSConfig
from hf_ilp.fp4.linear import convert_to_halfs_fp4_training


class HalfSFP4TrainerMixin:
    """Mix into any `transformers.Trainer` subclass (SFTTrainer, DPOTrainer, ...) before it in
    the bases; adds the `fp4_config` keyword (a `HalfSConfig`, or None to train unchanged)."""

    def __init__(self, *args, fp4_config: HalfSConfig | None = None, **kwargs):
        self.fp4_config = fp4_config
        super().__init__(*args, **kwargs)

    def create_accelerator_and_postprocess(self) -> None:
        # Trainer.__init__ calls this with `self.model` set and before any `accelerator.prepare`.
        if self.fp4_config is not None and getattr(self, "model", None) is not None:
            convert_to_halfs_fp4_training(self.model, self.fp4_config)
        return super().create_accelerator_and_postprocess()
