"""CPI-FT training: probe fine-tunes per task and `CPIFTTrainer`, the pipelined SFT over groups.

- `train_probes(base, dataset, args, tokenizer)`: one `SFTTrainer` per task, each from a fresh
  copy of the base, saved as `args.output_dir/probe-<task>` (safetensors) for `core_regions`.
- `CPIFTTrainer(SFTTrainer)`: trains the (fused) model on the task groups one after another,
  each stage on the mixed rows of its group's tasks (`cpi_stage_mix="cumulative"`: of its own
  and every earlier group's tasks), with the core regions of every earlier group frozen by
  update masking (`hf_ilp.isolation.masks.UpdateMasker`: the entries are restored bit for bit
  after every optimizer step and their momentum is zeroed, so AdamW's momentum and weight decay
  cannot move them). Each stage is a fresh `SFTTrainer` on the same model (fresh optimizer and
  scheduler) writing to `args.output_dir/stage-K`; callbacks see one on_train_begin/on_train_end
  per stage, as with `hf_ilp.training.train_stages`.
- `run_cpi_ft(...)`: the whole method: probes -> cores -> groups -> fusion -> `CPIFTTrainer`.

    >>> args = CPIFTConfig(output_dir="out", num_train_epochs=1, bf16=False)
    >>> trainer = CPIFTTrainer(model=fused, args=args, train_dataset=mixed, processing_class=tok,
    ...                        groups=[["copy"], ["reverse", "shift"]], cores=load_cores(fused_dir))
    >>> trainer.train()
"""

import dataclasses
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from transformers import TrainerCallback
from trl import SFTTrainer

from hf_ilp.isolation.masks import CompactMask, UpdateMasker
from hf_ilp.training import bind_trainer

logger = logging.getLogger(__name__)


def _tasks_of(dataset, column: str, tasks=None) -> list[str]:
    if column not in dataset.column_names:
        raise ValueError(f"CPI-FT needs a task column {column!r} in the training data; columns are {dataset.column_names}")
    present = set(dataset[column])
    if tasks is None:
        return sorted(present)
    empty = [t for t in tasks if t not in present]
    if empty:
        raise ValueError(f"task(s) {empty} have no rows in the training data (column {column!r} holds {sorted(present)})")
    return list(tasks)


def _rows_of(dataset, column: str, tasks) -> object:
    wanted = set(tasks)
    return dataset.filter(lambda t: t in wanted, input_columns=column)


def train_probes(base, train_dataset, args, processing_class, tasks: Sequence[str] | None = None, callbacks=()):
    """Fine-tune a fresh copy of `base` (a model folder or Hub id) on each task alone; return `{task: folder}`."""
    from transformers import AutoModelForCausalLM

    column = getattr(args, "cpi_task_column", "task")
    tasks = _tasks_of(train_dataset, column, tasks)
    epochs = getattr(args, "cpi_probe_epochs", None) or args.num_train_epochs
    out = {}
    for task in tasks:
        path = Path(args.output_dir) / f"probe-{task}"
        probe_args = dataclasses.replace(args, output_dir=str(path), num_train_epochs=epochs)
        logger.info("CPI-FT probe fine-tune on task %r", task)
        trainer = bind_trainer(SFTTrainer(
            model=AutoModelForCausalLM.from_pretrained(base, dtype="auto"),
            args=probe_args,
            train_dataset=_rows_of(train_dataset, column, [task]),
            processing_class=processing_class,
            callbacks=list(callbacks),
        ))
        trainer.train()
        trainer.save_model(str(path))
        out[task] = path
    return out


def _union(masks: Sequence[Mapping[str, CompactMask]]) -> dict[str, CompactMask]:
    out = {}
    names = {n for m in masks for n in m}
    for name in sorted(names):
        parts = [m[name] for m in masks if name in m and m[name].count]
        if parts:
            out[name] = CompactMask.from_indices(torch.cat([p.indices() for p in parts]), parts[0].shape)
    return out


class _FreezeEntries(TrainerCallback):
    """Brackets every optimizer step with the masker's snapshot/restore (bitwise freezing)."""

    def __init__(self, masker: UpdateMasker):
        self.masker = masker

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        self.masker.optimizer = optimizer

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.masker.snapshot()

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.masker.restore()


class CPIFTTrainer(SFTTrainer):
    """Pipelined SFT over task groups, freezing the cores of earlier groups (see the module docstring).

    Args (beyond `SFTTrainer`'s):
        groups: task groups in training order (`group_tasks(...)[0]` or `FusionResult.groups`).
        cores: `{task: {parameter name: CompactMask}}` (`core_regions` / `load_cores`).
    Every task of `groups` must have rows in `train_dataset` (column `args.cpi_task_column`);
    rows of tasks in no group are refused.
    """

    def __init__(self, model, args=None, train_dataset=None, *, groups, cores, callbacks=None, **kwargs):
        column = getattr(args, "cpi_task_column", "task")
        groups = [list(g) for g in groups]
        if not groups or not all(groups):
            raise ValueError(f"groups must be a non-empty list of non-empty task lists, got {groups}")
        flat = [t for g in groups for t in g]
        if train_dataset is None:
            raise ValueError("CPIFTTrainer needs a train_dataset with a task column")
        _tasks_of(train_dataset, column, flat)
        stray = sorted(set(train_dataset[column]) - set(flat))
        if stray:
            raise ValueError(f"rows of task(s) {stray} belong to no group {groups}; add them to a group or drop the rows")
        lacking = [t for g in groups[:-1] for t in g if t not in cores]
        if lacking:
            raise ValueError(f"no core region for task(s) {lacking}; pass cores for every task of the earlier groups")
        super().__init__(model=model, args=args, train_dataset=train_dataset, callbacks=callbacks, **kwargs)
        self.groups, self.cores, self._column = groups, cores, column
        self._rows = train_dataset  # as given: each stage's trainer prepares its own share of it
        self._callbacks = list(callbacks or [])
        # what a stage's trainer gets besides its args and rows (the model is already wrapped, if PEFT wraps it)
        self._stage_kwargs = {k: v for k, v in kwargs.items() if k not in ("peft_config", "processing_class")}
        self._masker = UpdateMasker(dict(self.model.named_parameters()))
        self.stage = None
        self.stage_trainers: list[SFTTrainer] = []

    def frozen_masks(self, stage: int) -> dict[str, CompactMask]:
        """The entries frozen in `stage`: the union of the cores of the tasks of all earlier groups."""
        params = dict(self.model.named_parameters())
        union = _union([self.cores[t] for g in self.groups[:stage] for t in g])
        return {n: m for n, m in union.items() if n in params}

    def train(self, resume_from_checkpoint=None, **kwargs):
        """Train every group in turn; returns the last stage's `TrainOutput`.

        As `hf_ilp.training.train_stages` does, each stage is a fresh `SFTTrainer` (fresh optimizer and
        scheduler) on the same model, with its own copy of the args (`output_dir/stage-K`) and its own
        rows; this trainer's args and dataset are left as they were given. The stages' trainers are
        kept in `stage_trainers`; `state` is the last one's.
        """
        if resume_from_checkpoint:
            raise ValueError("CPIFTTrainer runs several stages; resuming one stage from a checkpoint is not supported")
        output = None
        cumulative = getattr(self.args, "cpi_stage_mix", "group") == "cumulative"
        self.stage_trainers = []
        for stage, group in enumerate(self.groups):
            self.stage = stage
            tasks = [t for g in self.groups[: stage + 1] for t in g] if cumulative else group
            rows = _rows_of(self._rows, self._column, tasks)
            frozen = self.frozen_masks(stage)
            self._masker.set_masks(frozen)
            logger.info(
                "CPI-FT stage %d/%d: tasks %s, %d rows, %d frozen entries",
                stage + 1, len(self.groups), tasks, len(rows), sum(m.count for m in frozen.values()),
            )
            stage_args = dataclasses.replace(self.args, output_dir=os.path.join(self.args.output_dir, f"stage-{stage}"))
            trainer = bind_trainer(SFTTrainer(model=self.model, args=stage_args, train_dataset=rows,
                                              processing_class=self.processing_class,
                                              callbacks=[*self._callbacks, _FreezeEntries(self._masker)], **self._stage_kwargs))
            output = trainer.train(**kwargs)
            self.stage_trainers.append(trainer)
            self.state = trainer.state
        return output


def run_cpi_ft(base, train_dataset, args, processing_class, tasks: Sequence[str] | None = None, callbacks=()):
    """The whole CPI-FT pipeline on a base model folder; returns `(trainer, FusionResult)`.

    Probes go to `args.output_dir/probe-<task>`, the fused model to `args.output_dir/fused`, the
    pipelined SFT stages to `args.output_dir/stage-K`. Fusion runs on the main process only.
    """
    from accelerate import PartialState
    from transformers import AutoModelForCausalLM

    from hf_ilp.fusion.fuse import FusionResult, fuse_checkpoints, load_cores

    column = getattr(args, "cpi_task_column", "task")
    tasks = _tasks_of(train_dataset, column, tasks)
    probes = train_probes(base, train_dataset, args, processing_class, tasks, callbacks)
    fused_dir = Path(args.output_dir) / "fused"
    state = PartialState()
    if state.is_main_process:
        fuse_checkpoints(base, probes, fused_dir, t=args.cpi_slerp_t, core_share=args.cpi_core_share, tau=args.cpi_jaccard_tau)
    state.wait_for_everyone()
    result = FusionResult(**json.loads((fused_dir / "cpi_ft.json").read_text()))
    logger.info("CPI-FT fused %s into %s; groups %s", list(probes), fused_dir, result.groups)
    model = AutoModelForCausalLM.from_pretrained(fused_dir, dtype="auto")
    trainer = CPIFTTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        processing_class=processing_class,
        groups=result.groups,
        cores=load_cores(fused_dir),
        callbacks=list(callbacks),
    )
    trainer.train()
    return trainer, result
