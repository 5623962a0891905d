"""Batch composition for interventions: a Trainer mixin that takes its training sampler from you.

`transformers.Trainer` builds its training DataLoader from `_get_train_sampler`; the mixin
overrides that one hook, so it composes with any Trainer subclass (SFTTrainer, DPOTrainer, ...)
and keeps distributed sharding, gradient accumulation and resumption as the Trainer does them.
The sampler factory receives the trainer's own (prepared) training dataset with all its columns,
so it can key rows by their `id` whatever the tokenization did to the order of columns.

    trainer = TrainSamplerSFTTrainer(model=model, args=args, train_dataset=ds,
                                     train_sampler=conflict_buckets([["q1a", "q1b"]]))
"""

from __future__ import annotations

from typing import Callable

from trl import SFTTrainer


class TrainSamplerMixin:
    """Draw training rows from `train_sampler(trainer, dataset)`; any Trainer class can mix it in.

    `train_sampler` is a callable `(trainer, train_dataset) -> torch.utils.data.Sampler` (it gets
    the trainer for `args`: batch size, accumulation, world size, seed). Without it the Trainer's
    own sampler is used.
    """

    def __init__(self, *args, train_sampler: Callable | None = None, **kwargs):
        self._train_sampler_factory = train_sampler
        super().__init__(*args, **kwargs)

    def _get_train_sampler(self, train_dataset=None):
        if self._train_sampler_factory is None:
            return super()._get_train_sampler(train_dataset)
        # `train_dataset` here has had its unused columns removed; `self.train_dataset` has the same
        # rows in the same order and still carries `id` and the other user columns.
        full = self.train_dataset
        if train_dataset is not None and len(train_dataset) != len(full):
            raise ValueError(
                f"train_sampler needs the training rows unchanged, but the DataLoader's dataset has "
                f"{len(train_dataset)} rows and the trainer's {len(full)}; turn packing off"
            )
        return self._train_sampler_factory(self, full)


class TrainSamplerSFTTrainer(TrainSamplerMixin, SFTTrainer):
    """`trl.SFTTrainer` that accepts `train_sampler=` (see `TrainSamplerMixin`)."""


def optimizer_batch_size(args) -> int:
    """Rows that share one optimizer step: per-device batch x accumulation x processes."""
    return args.per_device_train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size)
