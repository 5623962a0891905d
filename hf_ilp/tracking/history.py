"""What `LearnTracker` has observed, and its round trip through records folders and checkpoints.

`LearningHistory` holds the observations (one event per observation point: kind, step, epoch,
stage, the rows observed and their statistics), the counters that order them, and per row
whether it was ever / last seen learned. It writes them as records (`records.save_records`, with
the resume state) and restores them from a checkpoint's records folder. The callback decides
when to observe; this class only keeps and persists what was observed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hf_ilp.tracking.records import RECORDS_DIRNAME, SCHEMA_VERSION, build_records, load_tracker_state, save_records


def names_preview(names, limit=10) -> str:
    """The first `limit` of `names`, comma-separated, with the total when there are more."""
    names = list(names)
    return ", ".join(map(str, names[:limit])) + (f" ... ({len(names)} in all)" if len(names) > limit else "")


class LearningHistory:
    """The observations of a `LearnTracker` and the counters saved with them.

    Attributes:
        events: one dict per observation (`kind`, `step`, `epoch`, `stage`, `idx` and a value array
            per statistic), in order.
        counter: training forwards seen (orders the presentations inside an observation window).
        step_offset: optimizer steps of the finished runs (steps add up across stages).
        run: index of the current training run (-1 before the first).
        observed / learned_last / learned_ever: per tracked row.
    """

    def __init__(self):
        self.events: list[dict] = []
        self.counter = 0
        self.step_offset = 0
        self.run = -1
        self.observed = self.learned_last = self.learned_ever = np.zeros(0, dtype=bool)

    def resize(self, n_rows: int) -> None:
        """Track `n_rows` rows (new rows start unobserved)."""
        for name in ("observed", "learned_last", "learned_ever"):
            old = getattr(self, name)
            new = np.zeros(n_rows, dtype=bool)
            new[: len(old)] = old
            setattr(self, name, new)

    def close_run(self, ended_step: int) -> None:
        """A new run continues after one that ended at `ended_step`: its final check becomes a stage end."""
        self.step_offset += ended_step
        for ev in self.events:
            if ev["kind"] == "final":
                ev["kind"] = "stage_end"

    def earlier_stages(self) -> list[int]:
        return [ev["stage"] for ev in self.events if ev["stage"] >= 0]

    def append(self, kind: str, step: int, epoch: float, stage: int, idx: np.ndarray, **values) -> None:
        """Add an observation of rows `idx` at the run's `step` (the step offset is added here)."""
        self.events.append(
            {"kind": kind, "step": self.step_offset + step, "epoch": float(epoch), "stage": stage, "idx": idx, **values}
        )
        self._count(idx, values["exact"])

    def _count(self, idx, exact) -> None:
        self.observed[idx] = True
        self.learned_last[idx] = exact
        self.learned_ever[idx] |= exact

    def shares(self) -> dict[str, float]:
        """Shares of the observed rows learned now, forgotten (learned once, not now), never learned."""
        observed = max(int(self.observed.sum()), 1)
        learned = int((self.learned_last & self.observed).sum())
        forgotten = int((self.learned_ever & ~self.learned_last & self.observed).sum())
        never = int((~self.learned_ever & self.observed).sum())
        return {"ilp/learned": learned / observed, "ilp/forgotten": forgotten / observed, "ilp/never_learned": never / observed}

    def records(self, rows, slope_window: int):
        return build_records(rows, self.events, slope_window)

    # ---- persistence ----------------------------------------------------------------------------
    def state(self, rows, pending: dict, global_step: int) -> dict:
        """The resume state saved beside the records (`records.save_records`)."""
        return {
            "global_step": global_step,
            "row_names": rows.names,
            "row_hashes": rows.hashes,
            "counter": self.counter,
            "step_offset": self.step_offset,
            "run": self.run,
            "pending": pending,
            "events": self.events,
        }

    def write(self, path, rows, config: dict, pending: dict, global_step: int) -> Path:
        """Write the records, their `meta.json` and the resume state to `path` (atomically)."""
        meta = {
            "config": config,
            "n_rows": len(rows.ids),
            "n_observations": len(self.events),
            "global_step": self.step_offset + global_step,
            "versions": _versions(),
        }
        return save_records(path, self.records(rows, config["slope_window"]), meta, self.state(rows, pending, global_step))

    def load_state(self, saved: dict, rows, source) -> dict:
        """Take the history from a saved resume `state` of the same rows; returns its pending entries."""
        if saved["row_hashes"] != rows.hashes or saved["row_names"] != rows.names:
            changed = {n for n, _ in set(zip(saved["row_names"], saved["row_hashes"])) ^ set(zip(rows.names, rows.hashes))}
            raise ValueError(
                f"LearnTracker: the tracked dataset changed since checkpoint {source} was saved; rows added, removed "
                f"or edited: {names_preview(sorted(changed)) or '(same rows, another order)'}. Resume with the same data and settings."
            )
        self.counter = saved["counter"]
        self.step_offset = saved["step_offset"]
        self.run = saved["run"]
        self.events = saved["events"]
        self.observed[:] = self.learned_last[:] = self.learned_ever[:] = False
        for ev in self.events:
            self._count(ev["idx"], ev["exact"])
        return saved["pending"]


def checkpoint_state(args, global_step: int) -> tuple[dict | None, list[Path]]:
    """The tracker state saved with the checkpoint a run resumes from at `global_step`.

    Looks in `args.resume_from_checkpoint`, then `<output_dir>/checkpoint-<global_step>`; returns
    `(state, [folder])` for the first one saved at that step, else `(None, folders looked in)`.
    """
    candidates = []
    if isinstance(getattr(args, "resume_from_checkpoint", None), str):
        candidates.append(Path(args.resume_from_checkpoint))
    candidates.append(Path(args.output_dir) / f"checkpoint-{global_step}")
    for folder in candidates:
        saved = load_tracker_state(folder / RECORDS_DIRNAME)
        if saved is not None and saved.get("global_step") == global_step:
            return saved, [folder]
    return None, candidates


def _versions() -> dict:
    import transformers
    import trl

    import hf_ilp

    return {"hf_ilp": hf_ilp.__version__, "transformers": transformers.__version__, "trl": trl.__version__, "schema_version": SCHEMA_VERSION}
