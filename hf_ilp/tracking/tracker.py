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
from transformers.trainer_callback import CallbackHandler, DefaultFlowCallback

from hf_ilp.tracking.config import LearnTrackerConfig
from hf_ilp.tracking.learn_check import TokenizedRows, column_lists, pass_at_n, position_chunks, row_hash, score_rows, tokenize_rows
from hf_ilp.tracking.records import RECORDS_DIRNAME, SCHEMA_VERSION, build_records, load_tracker_state, save_records

def _names(names, limit=10) -> str:
    names = list(names)
    return ", ".join(map(str, names[:limit])) + (f" ... ({len(names)} in all)" if len(names) > limit else "")


def _caller_of_type(cls):
    """The `self` of the nearest calling frame that is a `cls` (the Trainer or its CallbackHandler).

    Callbacks are not handed the trainer; the tracker looks it up to read what events do not pass.
    """
    frame = sys._getframe(2)
    while frame is not None:
        obj = frame.f_locals.get("self")
        if isinstance(obj, cls):
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
    (`hf_ilp.diagnosis.log_records`).

    Args:
        dataset: the rows to track, in the trainer's format (prompt-completion, `messages`, or
            tokenized). Default: the trainer's training set as it prepared it (record ids are its
            `id` column when it has one, else token hashes; the completion is what the loss
            covers). Pass the full dataset for sequential fine-tuning (one trainer per stage sharing
            this callback) so that rows of every stage are observed at every stage end; without it,
            rows join the records when a run first trains them.
        config: a `LearnTrackerConfig`.

    Example:
        >>> from trl import SFTTrainer
        >>> from hf_ilp import LearnTracker, load_records
        >>> trainer = SFTTrainer(model=model, args=args, train_dataset=train, callbacks=[LearnTracker()])
        >>> trainer.train()
        >>> records = load_records(args.output_dir)  # one row per sample, see hf_ilp.tracking.records
    """

    def __init__(self, dataset=None, config: LearnTrackerConfig | None = None):
        self.dataset = dataset
        self.config = config or LearnTrackerConfig()
        self.rows: TokenizedRows | None = None
        self._index: dict[str, list[int]] = {}
        self._targets: list[np.ndarray] = []
        self._events: list[dict] = []
        self._pending: dict[int, tuple] = {}
        self._counter = 0  # training forwards seen: orders the presentations inside a window
        self._step_offset = 0  # optimizer steps of the finished runs
        self._run = -1
        self._stage = -1
        self._ended_step: int | None = None  # global_step at the last on_train_end
        self._last_obs_step = -1
        self._hook = None
        self._unmatched = 0
        self._nonfinite: set[int] = set()
        self._uncovered: set[int] = set()
        self._learned_last = self._learned_ever = self._observed = None
        self.records_path: Path | None = None

    # ---- set-up -------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, processing_class=None, train_dataloader=None, **kwargs):
        if getattr(args, "packing", False) or getattr(args, "padding_free", False):
            raise ValueError(
                "LearnTracker cannot tell the samples of a packed / padding-free batch apart, so it would record "
                "wrong per-sample numbers. Set `packing=False` and `padding_free=False` in SFTConfig (or drop "
                "LearnTracker from this run)."
            )
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        if state.global_step == 0 and self._ended_step is not None:  # a new run (stage) after a finished one
            self._step_offset += self._ended_step
            for ev in self._events:
                if ev["kind"] == "final":
                    ev["kind"] = "stage_end"
            self._ended_step = None
        self._run += 1
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
        earlier = [ev["stage"] for ev in self._events if ev["stage"] >= 0]
        if len(stages) == 1 and (not earlier or min(stages) >= max(earlier)):
            self._stage = stages.pop()
        elif not stages:
            self._stage = self._run
        else:  # rows of several stages, or of a stage already left behind: a continuation is the next stage
            self._stage = max(earlier) + 1 if earlier else -1
        self._last_obs_step = state.global_step
        if self._hook is None:
            self._hook = model.register_forward_hook(self._on_forward, with_kwargs=True)
        self._log_before_reporters()

    @staticmethod
    def _prepared(train_dataloader):
        """The training rows as the trainer prepared them (tokenized), or None if they cannot be listed.

        The trainer's own prepared set is preferred: it keeps the `id`/`stage` columns that the
        dataloader's copy drops (`remove_unused_columns`); same rows, same order.
        """
        for dataset in (getattr(_caller_of_type(Trainer), "train_dataset", None), getattr(train_dataloader, "dataset", None)):
            if isinstance(dataset, Dataset) and "input_ids" in dataset.column_names:
                return dataset
        return None

    def _reindex(self, first: bool):
        rows = self.rows
        self._index = {}
        for i, h in enumerate(rows.hashes):
            self._index.setdefault(h, []).append(i)
        self._targets = [np.asarray(t, dtype=bool) for t in rows.targets]
        n = len(rows.ids)
        for name, default in (("_learned_last", False), ("_learned_ever", False), ("_observed", False)):
            old = getattr(self, name)
            new = np.full(n, default)
            if old is not None:
                new[: len(old)] = old
            setattr(self, name, new)
        counts = {}
        for name in rows.names:
            counts[name] = counts.get(name, 0) + 1
        dup_ids = [k for k, c in counts.items() if c > 1]
        if dup_ids:
            raise ValueError(
                f"LearnTracker: the `id` column has duplicates ({_names(dup_ids)}); records are keyed by id, make them unique"
            )
        if not first:
            return
        dup_rows = [[rows.names[i] for i in idx] for idx in self._index.values() if len(idx) > 1]
        if dup_rows:
            warnings.warn(
                f"LearnTracker: {len(dup_rows)} group(s) of rows have identical tokens and share one record each "
                f"(identical training rows cannot be told apart): {_names(dup_rows)}",
                stacklevel=3,
            )
        empty = [rows.names[i] for i in np.flatnonzero(rows.n_targets() == 0)]
        if empty:
            warnings.warn(
                f"LearnTracker: {len(empty)} row(s) have no completion token (empty completion, or truncated away by "
                f"max_length) and are not observed: {_names(empty)}",
                stacklevel=3,
            )

    def _log_before_reporters(self):
        # Reporting callbacks (TensorBoard, Trackio, W&B) come before user callbacks in the handler, so
        # they would read `logs` before `on_log` adds the aggregates here: move this callback ahead.
        handler = _caller_of_type(CallbackHandler)
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
        ids = input_ids.detach().cpu().numpy()
        attn = kwargs.get("attention_mask")
        attn = np.ones(ids.shape, dtype=bool) if attn is None else attn.detach().cpu().numpy().astype(bool)
        n_batch, width = ids.shape
        lengths = attn.sum(1)
        offsets = attn.argmax(1)  # first real token (right or left padding)
        tmask = np.zeros((n_batch, width - 1), dtype=bool)
        matched = []
        for b in range(n_batch):
            off, length = int(offsets[b]), int(lengths[b])
            if length == 0:
                continue
            idx = self._index.get(row_hash(ids[b, off : off + length]))
            if idx is None:
                self._unmatched += 1
                continue
            tmask[b, off : off + length - 1] = self._targets[idx[0]][1:]
            matched.append((b, idx))
        self._counter += 1
        if not matched:
            return
        device = input_ids.device
        if fused and np.array_equal(output.label_mask.detach().cpu().numpy(), tmask):
            # the usual SFT case: the loss covers exactly the completions, and the fused head's
            # per-token outputs are zero elsewhere, so row sums are the statistics
            stats = torch.stack(
                [
                    output.log_probs.detach().double().sum(1),
                    output.label_mask.detach().double().sum(1),
                    output.is_top1.detach().double().sum(1),
                    torch.zeros(n_batch, dtype=torch.float64, device=device),
                ],
                dim=1,
            ).cpu().numpy()
        else:
            stats = self._masked_stats(fused, torch.from_numpy(tmask).to(device), input_ids, kwargs, output)
        for b, idx in matched:
            lp_sum, count, n_top1, n_uncovered = stats[b]
            if count == 0:
                continue
            nll = -lp_sum / count
            entry = (self._counter, nll, n_top1 / count, bool(n_top1 == count and n_uncovered == 0), math.exp(lp_sum))
            for i in idx:
                if n_uncovered:
                    self._uncovered.add(i)
                if not math.isfinite(nll):
                    self._nonfinite.add(i)
                self._pending.setdefault(i, entry)

    @staticmethod
    def _masked_stats(fused, tmask, input_ids, kwargs, output) -> np.ndarray:
        """Per-row (log-prob sum, scored tokens, top-1 tokens, unlabeled completion tokens) over `tmask`."""
        n_batch = tmask.shape[0]
        row_of = torch.arange(n_batch, device=tmask.device)[:, None].expand_as(tmask)[tmask]
        if fused:
            lp = output.log_probs.detach()[tmask].double()
            top1 = output.is_top1.detach()[tmask].bool()
            covered = output.label_mask.detach()[tmask].bool()
        else:  # the model's logits, read a chunk of scored positions at a time (no float32 copy of them all)
            logits = output.logits.detach()
            rows, cols = tmask.nonzero(as_tuple=True)
            gold = input_ids[:, 1:][tmask]
            lp = torch.empty(len(gold), dtype=torch.float64, device=tmask.device)
            top1 = torch.empty(len(gold), dtype=torch.bool, device=tmask.device)
            for sl in position_chunks(1, len(gold), logits.shape[-1]):
                chunk = logits[rows[sl], cols[sl]].float()
                lp[sl] = torch.log_softmax(chunk, -1).gather(-1, gold[sl, None]).squeeze(-1).double()
                top1[sl] = chunk.argmax(-1) == gold[sl]
            covered = (kwargs["labels"][:, 1:] != -100)[tmask]
        zeros = torch.zeros(n_batch, dtype=torch.float64, device=tmask.device)
        return torch.stack(
            [
                zeros.index_add(0, row_of, lp * covered),
                zeros.index_add(0, row_of, covered.double()),
                zeros.index_add(0, row_of, (top1 & covered).double()),
                zeros.index_add(0, row_of, (~covered).double()),
            ],
            dim=1,
        ).cpu().numpy()

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
            warnings.warn(f"LearnTracker: non-finite loss at step {state.global_step} for rows {_names(self.rows.names[i] for i in nonfinite)}; recorded as NaN", stacklevel=2)
        if uncovered:
            warnings.warn(
                f"LearnTracker: some completion tokens of rows {_names(self.rows.names[i] for i in uncovered)} carry no "
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
        self._events.append(
            {
                "kind": kind,
                "step": self._step_offset + state.global_step,
                "epoch": float(state.epoch or 0.0),
                "stage": self._stage,
                "idx": idx,
                **values,
            }
        )
        self._observed[idx] = True
        self._learned_last[idx] = values["exact"]
        self._learned_ever[idx] |= values["exact"]

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
        trainer = _caller_of_type(Trainer) if args.report_to and state.is_world_process_zero else None
        if trainer is not None:  # counts, unlearned rows and cartography to the report_to loggers
            from hf_ilp.diagnosis.loggers import log_records

            log_records(self.records, trainer, max_rows=self.config.log_samples)

    # ---- aggregates in the logs ---------------------------------------------------------------
    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or not self._events:
            return
        observed = max(int(self._observed.sum()), 1)
        learned = int((self._learned_last & self._observed).sum())
        forgotten = int((self._learned_ever & ~self._learned_last & self._observed).sum())
        logs["ilp/learned"] = learned / observed
        logs["ilp/forgotten"] = forgotten / observed
        logs["ilp/never_learned"] = int((~self._learned_ever & self._observed).sum()) / observed
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update({k: v for k, v in logs.items() if k.startswith("ilp/")})

    # ---- records, checkpoints and resume ----------------------------------------------------
    def fork(self) -> "LearnTracker":
        """A copy that goes on recording from this tracker's history, for a run that continues the
        same model (extra epochs after the last stage): its records hold the earlier runs, then the
        new one, and are written to the new run's `output_dir` (`records_dir` is not inherited).
        This tracker is left as it is; the tracked dataset is shared, not copied."""
        if self._hook is not None:
            raise ValueError("LearnTracker.fork: a run is still training with this tracker; fork it after train()")
        new = copy.deepcopy(self, memo={id(self.dataset): self.dataset})
        new.config = replace(self.config, records_dir=None)
        new.records_path = None
        return new

    @property
    def records(self):
        """The records so far, as a `datasets.Dataset` (schema: `hf_ilp.tracking.records`)."""
        if self.rows is None:
            raise ValueError("LearnTracker has no records yet: training has not started")
        return build_records(self.rows, self._events, self.config.slope_window)

    def _records_dir(self, args) -> Path:
        return Path(self.config.records_dir or Path(args.output_dir) / RECORDS_DIRNAME)

    def _state(self, pending, global_step) -> dict:
        return {
            "global_step": global_step,
            "row_names": self.rows.names,
            "row_hashes": self.rows.hashes,
            "counter": self._counter,
            "step_offset": self._step_offset,
            "run": self._run,
            "pending": pending,
            "events": self._events,
        }

    def _write(self, args, state, path, pending=None):
        if not state.is_world_process_zero:
            return
        tracker_state = self._state(pending or {}, state.global_step)
        meta = {
            "config": asdict(self.config),
            "n_rows": len(self.rows.ids),
            "n_observations": len(self._events),
            "global_step": self._step_offset + state.global_step,
            "versions": _versions(),
        }
        self.records_path = save_records(path, self.records, meta, tracker_state)

    def on_save(self, args, state, control, **kwargs):
        pending = self._merged_pending(args)
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        self._write(args, state, checkpoint / RECORDS_DIRNAME, pending)
        self._write(args, state, self._records_dir(args), pending)

    def _restore(self, args, state):
        candidates = []
        if isinstance(getattr(args, "resume_from_checkpoint", None), str):
            candidates.append(Path(args.resume_from_checkpoint))
        candidates.append(Path(args.output_dir) / f"checkpoint-{state.global_step}")
        for folder in candidates:
            saved = load_tracker_state(folder / RECORDS_DIRNAME)
            if saved is not None and saved.get("global_step") == state.global_step:
                break
        else:
            warnings.warn(
                f"LearnTracker: resuming at step {state.global_step} but no tracker state was saved with the checkpoint "
                f"(looked in {', '.join(map(str, candidates))}); records start at this step",
                stacklevel=3,
            )
            return
        if saved["row_hashes"] != self.rows.hashes or saved["row_names"] != self.rows.names:
            changed = {n for n, _ in set(zip(saved["row_names"], saved["row_hashes"])) ^ set(zip(self.rows.names, self.rows.hashes))}
            raise ValueError(
                f"LearnTracker: the tracked dataset changed since checkpoint {folder} was saved; rows added, removed "
                f"or edited: {_names(sorted(changed)) or '(same rows, another order)'}. Resume with the same data and settings."
            )
        self._counter = saved["counter"]
        self._step_offset = saved["step_offset"]
        self._run = saved["run"]
        self._pending = saved["pending"]
        self._events = saved["events"]
        self._observed[:] = self._learned_last[:] = self._learned_ever[:] = False
        for ev in self._events:
            self._observed[ev["idx"]] = True
            self._learned_last[ev["idx"]] = ev["exact"]
            self._learned_ever[ev["idx"]] |= ev["exact"]


def _versions() -> dict:
    import transformers
    import trl

    import hf_ilp

    return {"hf_ilp": hf_ilp.__version__, "transformers": transformers.__version__, "trl": trl.__version__, "schema_version": SCHEMA_VERSION}
