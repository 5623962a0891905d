"""`LearnTracker`: per-sample learning dynamics from the training passes that run anyway.

TRL's `SFTTrainer` computes per-token log-probabilities, top-1 flags and the label mask in every
training forward (its fused LM head); a plain `transformers.Trainer` forward returns the logits.
A forward hook on the model reads them, recognizes each row of the batch by the hash of its
tokens (no `id` column has to survive TRL's processing) and keeps, per row, the statistics of its
first training forward since the previous observation. At each observation point those are
gathered across processes and appended to the records: no extra forward pass during training.
At the end of each training run (each stage of `hf_ilp.training.train_stages`) every tracked row
is checked on the current weights with `check_learned` (the only extra forward), so that rows of
earlier stages are observed after later ones. See `hf_ilp.tracking.records` for the schema.

This module is the callback: when to observe, and what it reads from its trainer. The per-row
tensor math is `hf_ilp.tracking.row_stats`; the observations, the records they make and their
round trip through checkpoints are `hf_ilp.tracking.history`.
"""

from __future__ import annotations

import copy
import math
import sys
import warnings
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import DefaultFlowCallback

from hf_ilp.tracking.config import LearnTrackerConfig
from hf_ilp.tracking.history import LearningHistory, checkpoint_state, names_preview
from hf_ilp.tracking.learn_check import TokenizedRows, column_lists, pass_at_n, row_hash, score_rows, tokenize_rows
from hf_ilp.tracking.records import RECORDS_DIRNAME
from hf_ilp.tracking.row_stats import match_rows, observation, row_statistics


def _trainer_on_stack():
    """The Trainer among the calling frames (the deprecated way to find it, for a tracker not given one)."""
    frame = sys._getframe(2)
    while frame is not None:
        obj = frame.f_locals.get("self")
        if isinstance(obj, Trainer):
            return obj
        frame = frame.f_back
    return None


def _all_gather(obj, args) -> list:
    """`obj` of every process of the run, in rank order (the trainer's view: `args.world_size`)."""
    if args.world_size == 1:
        return [obj]
    from accelerate.utils import gather_object

    return gather_object([obj])


class LearnTracker(TrainerCallback):
    """Record, per training sample, what the model learned, when, and what it forgot.

    Add it to an unmodified `trl.SFTTrainer` (or `transformers.Trainer`) script. It observes every
    row at each epoch end (and every `every_n_steps` steps) from the training forward passes, and
    every tracked row with `check_learned` at the end of each training run; records are written to
    `<output_dir>/hf_ilp_records` at every checkpoint and at the end, restored on
    `resume_from_checkpoint`, and the shares of rows learned / forgotten / never learned go into the
    logs (`ilp/learned`, `ilp/forgotten`, `ilp/never_learned`) of every `report_to` backend; at the
    end of each run, the counts, a table of the unlearned rows and a cartography map go there too
    (`hf_ilp.tracking.loggers.log_records`).

    Args:
        dataset: the rows to track, in the trainer's format (prompt-completion, `messages`, or
            tokenized). Default: the trainer's training set as it prepared it (record ids are its
            `id` column when it has one, else token hashes; the completion is what the loss
            covers). Pass the full dataset for sequential fine-tuning (one trainer per stage sharing
            this callback) so that rows of every stage are observed at every stage end; without it,
            rows join the records when a run first trains them.
        config: a `LearnTrackerConfig`.
        trainer: the trainer it runs in, as TRL's callbacks take it (`LogCompletionsCallback(trainer)`):
            the tracker reads its prepared training set (which keeps the `id` and `stage` columns
            the dataloader drops), goes ahead of its `report_to` callbacks so they log the
            aggregates, and sends them the records at the end. A tracker shared by several
            trainers (one per stage) serves the one in `tracker.trainer`: set it for each, or let
            `hf_ilp.training.train_stages` do it (`hf_ilp.training.bind_trainer`).

    Example:
        >>> from trl import SFTTrainer
        >>> from hf_ilp import LearnTracker, load_records
        >>> trainer = SFTTrainer(model=model, args=args, train_dataset=train)
        >>> trainer.add_callback(LearnTracker(trainer=trainer))
        >>> trainer.train()
        >>> records = load_records(args.output_dir)  # one row per sample, see hf_ilp.tracking.records
    """

    def __init__(self, dataset=None, config: LearnTrackerConfig | None = None, trainer=None):
        self.dataset = dataset
        self.config = config or LearnTrackerConfig()
        self.trainer = trainer
        self.rows: TokenizedRows | None = None
        self.history = LearningHistory()
        self.records_path: Path | None = None
        self._index: dict[str, list[int]] = {}
        self._targets: list[np.ndarray] = []
        self._pending: dict[int, tuple] = {}  # row -> its first presentation since the last observation
        self._running = None  # the trainer of the current run
        self._stage = -1
        self._ended_step: int | None = None  # global_step at the last on_train_end
        self._last_obs_step = -1
        self._hook = None
        self._unmatched = 0
        self._nonfinite: set[int] = set()
        self._uncovered: set[int] = set()

    # ---- set-up -------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, processing_class=None, train_dataloader=None, **kwargs):
        if getattr(args, "packing", False) or getattr(args, "padding_free", False):
            raise ValueError(
                "LearnTracker cannot tell the samples of a packed / padding-free batch apart, so it would record "
                "wrong per-sample numbers. Set `packing=False` and `padding_free=False` in SFTConfig (or drop "
                "LearnTracker from this run)."
            )
        self._running = self._running_trainer(train_dataloader)
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        if state.global_step == 0 and self._ended_step is not None:  # a new run (stage) after a finished one
            self.history.close_run(self._ended_step)
            self._ended_step = None
        self.history.run += 1
        prepared = self._prepared(train_dataloader)
        trained = None if prepared is None else [row_hash(x) for x in column_lists(prepared, ["input_ids"])["input_ids"]]
        if self.rows is None:
            if self.dataset is not None:
                if tokenizer is None:
                    raise ValueError("LearnTracker(dataset=...) needs the trainer's `processing_class` to tokenize it")
                self.rows = tokenize_rows(
                    self.dataset,
                    tokenizer,
                    max_length=getattr(args, "max_length", None),
                    truncation_mode=getattr(args, "truncation_mode", "keep_start"),
                )
            elif trained is None:
                raise ValueError(
                    "LearnTracker cannot list the rows of this training set (an IterableDataset?): pass the rows to "
                    "track with `LearnTracker(dataset=...)`."
                )
            else:
                self.rows = tokenize_rows(prepared, tokenizer)
            self._reindex(first=True)
        if trained is not None:
            missing = [h for h in dict.fromkeys(trained) if h not in self._index]
            if missing and self.dataset is not None:
                raise ValueError(
                    f"LearnTracker: {len(missing)} training row(s) are not in the tracked dataset as tokenized here "
                    "(same tokenizer, EOS handling, max_length and truncation_mode as SFTTrainer): either the tracked "
                    "dataset is not the training data, or a custom tokenization (formatting_func, chat_template_path) "
                    "differs. Pass the trainer's data as LearnTracker(dataset=...) or leave it unset."
                )
            if missing:  # a later run brings new rows: they join the records from now on
                missing = set(missing)
                new = tokenize_rows(prepared.select([k for k, h in enumerate(trained) if h in missing]), tokenizer)
                for attr in ("ids", "targets", "names", "stages", "hashes"):
                    getattr(self.rows, attr).extend(getattr(new, attr))
                self._reindex(first=False)
        stages = {self.rows.stages[self._index[h][0]] for h in trained or ()} - {-1}
        if state.global_step > 0:
            self._restore(args, state)
        earlier = self.history.earlier_stages()
        if len(stages) == 1 and (not earlier or min(stages) >= max(earlier)):
            self._stage = stages.pop()
        elif not stages:
            self._stage = self.history.run
        else:  # rows of several stages, or of a stage already left behind: a continuation is the next stage
            self._stage = max(earlier) + 1 if earlier else -1
        self._last_obs_step = state.global_step
        if self._hook is None:
            self._hook = model.register_forward_hook(self._on_forward, with_kwargs=True)
        self._log_before_reporters()

    def _running_trainer(self, train_dataloader):
        """`self.trainer` when it is the trainer now training (its handler passed this dataloader)."""
        trainer = self.trainer
        if trainer is not None:
            handler = trainer.callback_handler
            if self in handler.callbacks and handler.train_dataloader is train_dataloader:
                return trainer
            raise ValueError(
                "LearnTracker: `tracker.trainer` is not the trainer that is training (a tracker shared by several "
                "trainers serves the one in `tracker.trainer`): set `tracker.trainer = trainer` before each "
                "`trainer.train()`, or run the stages with hf_ilp.training.train_stages, which does."
            )
        warnings.warn(
            "LearnTracker was not given its trainer, so it looked for it on the call stack; that lookup goes in the "
            "next release. Pass the trainer as TRL's callbacks take it: "
            "`trainer.add_callback(LearnTracker(trainer=trainer))` (or set `tracker.trainer = trainer`).",
            FutureWarning,
            stacklevel=3,
        )
        return _trainer_on_stack()

    def _prepared(self, train_dataloader):
        """The training rows as the trainer prepared them (tokenized), or None if they cannot be listed.

        The trainer's own prepared set is preferred: it keeps the `id`/`stage` columns that the
        dataloader's copy drops (`remove_unused_columns`); same rows, same order.
        """
        for dataset in (getattr(self._running, "train_dataset", None), getattr(train_dataloader, "dataset", None)):
            if isinstance(dataset, Dataset) and "input_ids" in dataset.column_names:
                return dataset
        return None

    def _reindex(self, first: bool):
        rows = self.rows
        self._index = {}
        for i, h in enumerate(rows.hashes):
            self._index.setdefault(h, []).append(i)
        self._targets = [np.asarray(t, dtype=bool) for t in rows.targets]
        self.history.resize(len(rows.ids))
        counts = {}
        for name in rows.names:
            counts[name] = counts.get(name, 0) + 1
        dup_ids = [k for k, c in counts.items() if c > 1]
        if dup_ids:
            raise ValueError(
                f"LearnTracker: the `id` column has duplicates ({names_preview(dup_ids)}); records are keyed by id, make them unique"
            )
        if not first:
            return
        dup_rows = [[rows.names[i] for i in idx] for idx in self._index.values() if len(idx) > 1]
        if dup_rows:
            warnings.warn(
                f"LearnTracker: {len(dup_rows)} group(s) of rows have identical tokens and share one record each "
                f"(identical training rows cannot be told apart): {names_preview(dup_rows)}",
                stacklevel=3,
            )
        empty = [rows.names[i] for i in np.flatnonzero(rows.n_targets() == 0)]
        if empty:
            warnings.warn(
                f"LearnTracker: {len(empty)} row(s) have no completion token (empty completion, or truncated away by "
                f"max_length) and are not observed: {names_preview(empty)}",
                stacklevel=3,
            )

    def _log_before_reporters(self):
        # Reporting callbacks (TensorBoard, Trackio, W&B) come before user callbacks in the handler, so
        # they would read `logs` before `on_log` adds the aggregates here: move this callback ahead.
        handler = getattr(self._running, "callback_handler", None)
        if handler is not None and self in handler.callbacks:
            handler.callbacks.remove(self)
            at = sum(1 for cb in handler.callbacks[:1] if isinstance(cb, DefaultFlowCallback))
            handler.callbacks.insert(at, self)

    # ---- the forward hook: statistics of each training row ----------------------------------
    @torch.no_grad()
    def _on_forward(self, module, args, kwargs, output):
        if not module.training:
            return
        fused = bool(kwargs.get("fused_lm_head", False))
        if not fused and kwargs.get("labels") is None:
            return
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            return
        attn = kwargs.get("attention_mask")
        tmask, matched, unmatched = match_rows(
            input_ids.detach().cpu().numpy(), None if attn is None else attn.detach().cpu().numpy(), self._index, self._targets
        )
        self._unmatched += unmatched
        self.history.counter += 1
        if not matched:
            return
        tmask = torch.from_numpy(tmask).to(input_ids.device)
        stats = row_statistics(output, input_ids, tmask, kwargs.get("labels"), fused=fused)
        for b, idx in matched:
            seen = observation(stats[b])
            if seen is None:
                continue
            entry = (self.history.counter, *seen)
            for i in idx:
                if stats[b][3]:
                    self._uncovered.add(i)
                if not math.isfinite(seen[0]):
                    self._nonfinite.add(i)
                self._pending.setdefault(i, entry)

    # ---- observations -----------------------------------------------------------------------
    def _merged_pending(self, args) -> dict[int, tuple]:
        merged: dict[int, tuple] = {}
        for part in _all_gather(self._pending, args):
            for i, entry in part.items():
                if i not in merged or entry[0] < merged[i][0]:
                    merged[i] = entry
        return merged

    def _observe_window(self, kind, args, state):
        merged = self._merged_pending(args)
        self._pending = {}
        problems = _all_gather((self._unmatched, sorted(self._nonfinite), sorted(self._uncovered)), args)
        self._unmatched, self._nonfinite, self._uncovered = 0, set(), set()
        unmatched = sum(p[0] for p in problems)
        nonfinite = sorted({i for p in problems for i in p[1]})
        uncovered = sorted({i for p in problems for i in p[2]})
        if unmatched:
            raise RuntimeError(
                f"LearnTracker: {unmatched} training row(s) since the last observation match no tracked row: the "
                "collator or a transform changes the tokens between the dataset and the model. Track the data as "
                "the model sees it (LearnTracker(dataset=...) with those rows) or remove the transform."
            )
        if nonfinite:
            warnings.warn(f"LearnTracker: non-finite loss at step {state.global_step} for rows {names_preview(self.rows.names[i] for i in nonfinite)}; recorded as NaN", stacklevel=2)
        if uncovered:
            warnings.warn(
                f"LearnTracker: some completion tokens of rows {names_preview(self.rows.names[i] for i in uncovered)} carry no "
                "label in training (assistant mask narrower than the last answer?): they count as not reproduced",
                stacklevel=2,
            )
        self._last_obs_step = state.global_step
        if not merged:
            return
        idx = np.array(sorted(merged), dtype=np.int64)
        values = np.array([merged[i][1:] for i in idx], dtype=np.float64)
        p_gold = values[:, 3]
        self._append(
            kind,
            state,
            idx,
            nll=values[:, 0],
            token_acc=values[:, 1],
            exact=values[:, 2].astype(bool),
            p_gold=p_gold,
            pass_at_n=pass_at_n(p_gold, self.config.num_samples) if self.config.temperature == 1.0 else np.full(len(idx), np.nan),
        )

    def _observe_all(self, kind, args, state, model):
        valid = np.flatnonzero(self.rows.n_targets() > 0)
        mine = valid[args.process_index :: args.world_size]
        if len(valid) and len(mine) < -(-len(valid) // args.world_size):  # equal counts: FSDP / ZeRO-3 forwards are collective
            mine = np.append(mine, valid[-1])
        scores = score_rows(
            model,
            self.rows,
            mine,
            batch_size=self.config.batch_size,
            num_samples=self.config.num_samples,
            temperature=self.config.temperature,
            progress=state.is_world_process_zero,
            desc=f"learn-check ({kind})",
        )
        parts = _all_gather((mine, scores), args)
        idx = np.concatenate([p[0] for p in parts])
        idx, first = np.unique(idx, return_index=True)  # sorted, each row once
        cols = {k: np.concatenate([p[1][k] for p in parts])[first] for k in ("nll", "token_acc", "exact", "p_gold", "pass_at_n")}
        self._append(kind, state, idx, **cols)

    def _append(self, kind, state, idx, **values):
        self.history.append(kind, state.global_step, state.epoch or 0.0, self._stage, idx, **values)

    def on_step_end(self, args, state, control, **kwargs):
        epoch_done = state.epoch is not None and abs(state.epoch - round(state.epoch)) < 1e-9
        if self.config.observe_epochs and epoch_done:
            self._observe_window("epoch", args, state)
        elif self.config.every_n_steps and state.global_step % self.config.every_n_steps == 0:
            self._observe_window("steps", args, state)

    def on_epoch_end(self, args, state, control, **kwargs):
        # an epoch cut short by max_steps or a stop signal: observe what it trained
        if self.config.observe_epochs and self._last_obs_step != state.global_step:
            self._observe_window("epoch", args, state)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._pending = {}
        self._observe_all("final", args, state, model)
        self._ended_step = state.global_step
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._write(args, state, self._records_dir(args))
        trainer, self._running = self._running, None
        if trainer is not None and args.report_to and state.is_world_process_zero:
            from hf_ilp.tracking.loggers import log_records  # counts, unlearned rows and cartography

            log_records(self.records, trainer, max_rows=self.config.log_samples)

    # ---- aggregates in the logs ---------------------------------------------------------------
    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or not self.history.events:
            return
        shares = self.history.shares()
        logs.update(shares)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(shares)

    # ---- records, checkpoints and resume ----------------------------------------------------
    def fork(self) -> "LearnTracker":
        """A copy that goes on recording from this tracker's history, for a run that continues the
        same model (extra epochs after the last stage): its records hold the earlier runs, then the
        new one, and are written to the new run's `output_dir` (`records_dir` is not inherited).
        This tracker is left as it is; the tracked dataset is shared, not copied; the copy has no
        trainer yet (give it the new run's)."""
        if self._hook is not None:
            raise ValueError("LearnTracker.fork: a run is still training with this tracker; fork it after train()")
        new = copy.deepcopy(self, memo={id(self.dataset): self.dataset, id(self.trainer): None, id(self._running): None})
        new.config = replace(self.config, records_dir=None)
        new.records_path = None
        return new

    @property
    def records(self):
        """The records so far, as a `datasets.Dataset` (schema: `hf_ilp.tracking.records`)."""
        if self.rows is None:
            raise ValueError("LearnTracker has no records yet: training has not started")
        return self.history.records(self.rows, self.config.slope_window)

    def _records_dir(self, args) -> Path:
        return Path(self.config.records_dir or Path(args.output_dir) / RECORDS_DIRNAME)

    def _write(self, args, state, path, pending=None):
        if state.is_world_process_zero:
            self.records_path = self.history.write(path, self.rows, asdict(self.config), pending or {}, state.global_step)

    def on_save(self, args, state, control, **kwargs):
        pending = self._merged_pending(args)
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        self._write(args, state, checkpoint / RECORDS_DIRNAME, pending)
        self._write(args, state, self._records_dir(args), pending)

    def _restore(self, args, state):
        saved, folders = checkpoint_state(args, state.global_step)
        if saved is None:
            warnings.warn(
                f"LearnTracker: resuming at step {state.global_step} but no tracker state was saved with the checkpoint "
                f"(looked in {', '.join(map(str, folders))}); records start at this step",
                stacklevel=3,
            )
            return
        self._pending = self.history.load_state(saved, self.rows, folders[0])
