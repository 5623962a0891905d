"""forgetting: global shuffle of the stages plus dynamic resampling of what is being forgotten.

The paper's intervention against left-side forgetting in sequential fine-tuning: train on all
stages shuffled together instead of one after the other, and every K steps (paper: K=500)
measure the accuracy of each subset (stage, task, ...) on a held-out slice; a subset whose
accuracy dropped by more than a relative threshold (paper: 5%) from its best so far is
resampled into the batches until it recovers.

- `global_shuffle(dataset)`: a new dataset, all stages in one shuffled run; the former stage is
  kept in `source_stage` (the natural subset column for resampling).
- `ResamplingSampler`: a training sampler that walks a random permutation of the rows and, while
  some subsets are boosted, replaces a share (`replay_share`) of the draws with rows of those
  subsets. The boosts take effect from the next batches drawn, on every process alike.
- `DynamicResamplingCallback`: measures per-subset exact-match accuracy on the probe slice every
  `every_k_steps` and boosts/unboosts subsets; its `sampler` is the `train_sampler` factory for
  `TrainSamplerMixin`.

    cb = DynamicResamplingCallback(probe, tokenizer, subset_column="source_stage")
    trainer = TrainSamplerSFTTrainer(model=model, args=args, train_dataset=global_shuffle(train),
                                     processing_class=tokenizer, callbacks=[cb], train_sampler=cb.sampler)
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np
import torch
from transformers import TrainerCallback

from hf_ilp.interventions._common import fresh_model
from hf_ilp.interventions.base import Intervention, with_peft


SOURCE_STAGE = "source_stage"


def global_shuffle(dataset, seed: int = 0):
    """All stages in one run: shuffle the rows and move `stage` to `source_stage` (a new dataset)."""
    if "stage" not in dataset.column_names:
        raise ValueError("global_shuffle expects a 'stage' column (sequential fine-tuning stages); the dataset has none")
    return dataset.shuffle(seed=seed).flatten_indices().rename_column("stage", SOURCE_STAGE)


class ResamplingSampler(torch.utils.data.Sampler):
    """`len(subsets)` draws per epoch: a random permutation of the rows, except that while a subset
    is boosted each draw is, with probability `replay_share`, a random row of a boosted subset."""

    def __init__(self, subsets: Sequence, replay_share: float = 0.25, seed: int = 0):
        if not 0.0 < replay_share < 1.0:
            raise ValueError(f"replay_share must be in (0, 1), got {replay_share}")
        self.replay_share, self.seed, self.epoch = replay_share, seed, 0
        self.rows_of = defaultdict(list)
        for i, s in enumerate(subsets):
            self.rows_of[s].append(i)
        self.num_rows = len(subsets)
        self.boosted: set = set()
        self.replayed = 0  # draws taken from boosted subsets so far

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_rows

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        perm = iter(rng.permutation(self.num_rows).tolist())
        for _ in range(self.num_rows):
            # same random numbers whatever is boosted, so every process stays in step
            coin, pick = rng.random(), rng.random()
            if self.boosted and coin < self.replay_share:
                pool = [i for s in sorted(self.boosted, key=str) for i in self.rows_of[s]]
                self.replayed += 1
                yield pool[int(pick * len(pool))]
            else:
                yield next(perm)


class DynamicResamplingCallback(TrainerCallback):
    """Every `every_k_steps` steps, measure each subset's exact-match accuracy on `probe_dataset`
    and boost (resample into the batches) the subsets whose accuracy fell more than `threshold`
    (relative) below their best so far; a subset recovers when it is back within the threshold.

    Args:
        probe_dataset: held-out rows with `prompt`, `completion` and `subset_column`.
        tokenizer: the training tokenizer.
        subset_column: the column naming each row's subset (default `source_stage`).
        every_k_steps: measurement period. Default (None): 20 measurements per run, because the
            paper's K=500 assumes runs of many thousands of steps.
        threshold: relative accuracy drop that triggers resampling (paper: 0.05).
        replay_share: share of the draws taken from boosted subsets while any is boosted.

    Example:
        cb = DynamicResamplingCallback(probe, tokenizer)
        trainer = TrainSamplerSFTTrainer(..., callbacks=[cb], train_sampler=cb.sampler)
    """

    def __init__(self, probe_dataset, tokenizer, subset_column: str = SOURCE_STAGE, every_k_steps: int | None = None,
                 threshold: float = 0.05, replay_share: float = 0.25, batch_size: int = 64):
        for col in ("prompt", "completion", subset_column):
            if col not in probe_dataset.column_names:
                raise ValueError(f"probe_dataset lacks column {col!r}; it has {probe_dataset.column_names}")
        if len(probe_dataset) == 0:
            raise ValueError("probe_dataset is empty; dynamic resampling needs held-out rows per subset")
        self.probe = probe_dataset
        self.tokenizer, self.subset_column = tokenizer, subset_column
        self.every_k_steps, self.threshold = every_k_steps, threshold
        self.replay_share, self.batch_size = replay_share, batch_size
        self.best: dict = {}
        self.history: list[dict] = []
        self._sampler: ResamplingSampler | None = None
        self._period = every_k_steps

    def sampler(self, trainer, dataset) -> ResamplingSampler:
        """`train_sampler` factory for `TrainSamplerMixin`: rows grouped by `subset_column`."""
        if self.subset_column not in dataset.column_names:
            raise ValueError(f"the training dataset lacks the subset column {self.subset_column!r}")
        self._sampler = ResamplingSampler(dataset[self.subset_column], self.replay_share, seed=trainer.args.seed)
        return self._sampler

    @property
    def replayed_draws(self) -> int:
        """Draws the sampler has taken from resampled subsets so far (0 before training)."""
        return self._sampler.replayed if self._sampler is not None else 0

    def on_train_begin(self, args, state, control, **kwargs):
        if self._sampler is None:
            raise RuntimeError("DynamicResamplingCallback needs its sampler in the trainer: train_sampler=callback.sampler")
        self._period = self.every_k_steps or max(1, state.max_steps // 20)

    @torch.no_grad()
    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self._period:
            return
        from hf_ilp.tracking import check_learned

        exact = check_learned(model, self.tokenizer, self.probe, batch_size=self.batch_size, progress=False)["exact"]
        hits = defaultdict(list)
        for ok, s in zip(exact, self.probe[self.subset_column]):
            hits[s].append(ok)
        accuracy = {s: float(np.mean(v)) for s, v in hits.items()}
        for s, acc in accuracy.items():
            best = self.best.get(s, 0.0)
            if best > 0 and acc < best * (1 - self.threshold):
                self._sampler.boosted.add(s)
            else:
                self._sampler.boosted.discard(s)
            self.best[s] = max(best, acc)
        self.history.append({"step": state.global_step, "accuracy": {str(k): v for k, v in accuracy.items()},
                             "boosted": sorted(str(s) for s in self._sampler.boosted)})


class ForgettingIntervention(Intervention):
    """forgetting: one global shuffle of the stages, with `DynamicResamplingCallback` resampling a
    stage whose probe accuracy falls below its best, from the base."""

    causes = ("forgetting",)

    def check(self, inputs):
        stages = set(inputs.train["stage"]) if "stage" in inputs.train.column_names else set()
        if len(stages) < 2:
            raise ValueError("forgetting's global shuffle needs a 'stage' column with at least two stages in train_dataset")

    def run(self, inputs, prepared, tmp, run_args):
        from hf_ilp.interventions.sampling import TrainSamplerSFTTrainer
        from hf_ilp.training import bind_trainer

        cfg, seed = inputs.config, inputs.args.seed
        train = global_shuffle(inputs.train, seed=seed)
        probe = _probe_slice(train, SOURCE_STAGE, cfg.resample_probe_per_subset, seed)
        cb = DynamicResamplingCallback(probe, inputs.tokenizer, subset_column=SOURCE_STAGE,
                                       every_k_steps=cfg.resample_every_k_steps, threshold=cfg.resample_threshold,
                                       replay_share=cfg.resample_replay_share)
        model = with_peft(fresh_model(inputs.base_model), inputs.peft_config)
        trainer = bind_trainer(TrainSamplerSFTTrainer(model=model, args=run_args, train_dataset=train,
                                                      processing_class=inputs.tokenizer, callbacks=[*inputs.callbacks, cb],
                                                      train_sampler=cb.sampler))
        trainer.train()
        details = {"subsets": sorted(map(str, set(train[SOURCE_STAGE]))), "probe_rows": len(probe),
                   "replayed_draws": cb.replayed_draws, "resampling_history": cb.history}
        return "global_shuffle+dynamic_resampling", details, train, trainer


def _probe_slice(dataset, column, per_subset, seed):
    """Up to `per_subset` random rows of each subset (the held-out accuracy probe)."""
    shuffled = dataset.shuffle(seed=seed + 1)
    taken, keep = {}, []
    for i, s in enumerate(shuffled[column]):
        if taken.get(s, 0) < per_subset:
            taken[s] = taken.get(s, 0) + 1
            keep.append(i)
    return shuffled.select(keep)
