"""Scalars, a table, figures and notes to the loggers a run reports to (`report_to`).

Everything goes through the trainer's own integration callbacks, so it lands in the run people
already watch: the scalars with `trainer.log` (every backend, at the current global step), then,
per backend that has them, the table and the figures:

| backend     | table                    | figures          | notes           |
| ----------- | ------------------------ | ---------------- | --------------- |
| tensorboard | `add_text` (Markdown)    | `add_image`      | `add_text`      |
| wandb       | `wandb.Table`            | `wandb.Image`    |                 |
| trackio     | `trackio.Table`          | `trackio.Image`  | `trackio.Markdown` |
| comet_ml    | `log_table`              | `log_image`      | `log_text`      |
| mlflow      | `log_table`              | `log_image`      | `log_text`      |

A backend that is not in `report_to` (or not installed) is skipped; one whose run has ended with
training (TensorBoard's writer, Trackio's and MLflow's runs) is reopened for the call and closed
after it (Trackio reopens the run named `run_name`: set it to keep one run). Texts that would
carry a Hub token or a path of this machine are sent as `<redacted>` (`hf_ilp.privacy`).

What is sent is built where it is known: the tracker's records by `hf_ilp.tracking.loggers.log_records`,
a diagnosis by `hf_ilp.diagnosis.loggers.log_report`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from hf_ilp.privacy import redacted

MAX_TEXT = 160  # characters of a text cell


def clip_text(text, limit=60) -> str:
    """`text` on one line, cut to `limit` characters with an ellipsis."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


@dataclass
class Payload:
    """One call's content: `name` (the key under `prefix`), scalars, a table, figures, notes."""

    name: str
    scalars: dict
    columns: list
    rows: list
    images: dict = field(default_factory=dict)  # name -> HxWx3 uint8 array
    notes: list = field(default_factory=list)

    def __post_init__(self):
        self.scalars = {k: float(v) for k, v in self.scalars.items() if v is not None and math.isfinite(float(v))}
        self.rows = [[_cell(v) for v in row] for row in self.rows]
        texts = [(r, c) for r, row in enumerate(self.rows) for c, v in enumerate(row) if isinstance(v, str)]
        safe = redacted([self.rows[r][c] for r, c in texts], f"the {self.name} table")
        for (r, c), text in zip(texts, safe):
            self.rows[r][c] = clip_text(text, MAX_TEXT)
        self.notes = redacted([str(n) for n in self.notes], f"the {self.name} notes")

    def markdown(self) -> str:
        def cell(v):
            text = "-" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)
            return text.replace("|", "\\|") or " "

        lines = ["| " + " | ".join(self.columns) + " |", "|" + " --- |" * len(self.columns)]
        lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in self.rows]
        return "\n".join(lines)


def _cell(v):
    """A table cell: numpy scalars as Python ones, a non-finite float as None."""
    if isinstance(v, np.generic):
        v = v.item()
    return None if isinstance(v, float) and not math.isfinite(v) else v


def ranked(values, descending: bool) -> np.ndarray:
    """Positions of `values` sorted (stable), NaN / None last."""
    v = np.array([math.nan if x is None else x for x in values], dtype=float)
    key = np.where(np.isnan(v), np.inf, -v if descending else v)
    return np.argsort(key, kind="stable")


def reports_to_loggers(trainer) -> bool:
    """Whether `trainer` reports to a logger (`report_to`) and this is its main process."""
    return bool(trainer.args.report_to) and trainer.state.is_world_process_zero


def send(payload: Payload, trainer, prefix: str) -> dict:
    """Send `payload` under `{prefix}/{payload.name}` to the `report_to` loggers of `trainer`.

    The scalars go through `trainer.log` (every backend, at the current global step); the table,
    figures and notes to each backend that has them. A backend's failure is a warning, never the
    end of the run. Returns `{"step", "scalars", "backends": {name: [parts]}}`.
    """
    state = trainer.state
    base = f"{prefix}/{payload.name}"
    backends = [b for b in map(_backend, trainer.callback_handler.callbacks) if b is not None]
    live = [b for b in backends if _guarded(f"open the {b.name} logger", b.open, trainer)]
    sent = {"step": state.global_step, "scalars": [], "backends": {}}
    try:
        scalars = {f"{base}/{k}": v for k, v in payload.scalars.items()}
        if scalars and _guarded("log the scalars with trainer.log", trainer.log, dict(scalars)) is not False:
            sent["scalars"] = sorted(scalars)
        for b in live:
            parts = _guarded(f"send the {payload.name} table and figures to {b.name}", b.send, base, payload,
                             state.global_step)
            if parts is not False:
                sent["backends"][b.name] = parts
    finally:
        for b in live:
            _guarded(f"close the {b.name} logger", b.close)
    return sent


def _guarded(what: str, fn, *args):
    """`fn(*args)`, or a warning and False: a logger's failure must not end the run that logs to it."""
    try:
        return fn(*args)
    except Exception as e:
        warnings.warn(f"hf_ilp: could not {what}: {type(e).__name__}: {e}", stacklevel=3)
        return False


def _backend(callback):
    from transformers.integrations import integration_utils as iu

    for cls_name, backend in (("TensorBoardCallback", _TensorBoard), ("WandbCallback", _Wandb),
                              ("TrackioCallback", _Trackio), ("CometCallback", _Comet), ("MLflowCallback", _MLflow)):
        cls = getattr(iu, cls_name, None)
        if cls is not None and isinstance(callback, cls):
            return backend(callback)
    return None


class _Backend:
    """One `report_to` integration callback: `open` (reopen what training closed; False: skip it),
    `send` (table, figures, notes; returns the parts sent), `close` (what `open` reopened)."""

    name = ""

    def __init__(self, callback):
        self.cb = callback
        self.reopened = False

    def open(self, trainer) -> bool:
        return True

    def send(self, base: str, payload: Payload, step: int) -> list:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _TensorBoard(_Backend):
    name = "tensorboard"

    def open(self, trainer):
        if self.cb.tb_writer is None and self.cb.logging_dir is not None:  # closed by on_train_end
            self.cb._init_summary_writer(trainer.args)
            self.reopened = True
        return self.cb.tb_writer is not None

    def send(self, base, payload, step):
        writer, parts = self.cb.tb_writer, []
        if payload.rows:
            writer.add_text(f"{base}/unlearned", payload.markdown(), step)
            parts.append("table")
        if payload.notes:
            writer.add_text(f"{base}/notes", "\n".join(f"- {n}" for n in payload.notes), step)
            parts.append("notes")
        for name, image in payload.images.items():
            writer.add_image(f"{base}/{name}", image, step, dataformats="HWC")
            parts.append(name)
        writer.flush()
        return parts

    def close(self):
        if self.reopened and self.cb.tb_writer is not None:
            self.cb.tb_writer.close()
            self.cb.tb_writer = None


class _Wandb(_Backend):
    name = "wandb"

    def open(self, trainer):
        return self.cb._wandb is not None and self.cb._wandb.run is not None

    def send(self, base, payload, step):
        wandb, logs = self.cb._wandb, {}
        if payload.rows:
            logs[f"{base}/unlearned"] = wandb.Table(columns=payload.columns, data=payload.rows)
        for name, image in payload.images.items():
            logs[f"{base}/{name}"] = wandb.Image(image, caption=f"{base}/{name}")
        if logs:
            wandb.log({**logs, "train/global_step": step})  # the step metric WandbCallback defines
        return [("table" if k.endswith("/unlearned") else k.rsplit("/", 1)[1]) for k in logs]


class _Trackio(_Backend):
    name = "trackio"

    def open(self, trainer):
        if not self.cb._initialized:  # finished by on_train_end: resume the run named args.run_name
            self.cb.setup(trainer.args, trainer.state, trainer.model)
            self.reopened = True
        return self.cb._trackio.context_vars.current_run.get() is not None

    def send(self, base, payload, step):
        trackio, logs, parts = self.cb._trackio, {}, []
        if payload.rows and hasattr(trackio, "Table"):
            logs[f"{base}/unlearned"] = trackio.Table(columns=payload.columns, data=payload.rows)
            parts.append("table")
        if payload.notes and hasattr(trackio, "Markdown"):
            logs[f"{base}/notes"] = trackio.Markdown("\n".join(f"- {n}" for n in payload.notes))
            parts.append("notes")
        if hasattr(trackio, "Image"):
            for name, image in payload.images.items():
                logs[f"{base}/{name}"] = trackio.Image(image, caption=f"{base}/{name}")
                parts.append(name)
        if logs:
            trackio.log({**logs, "train/global_step": step})
        return parts

    def close(self):
        if self.reopened:
            self.cb._trackio.finish()
            self.cb._initialized = False


class _Comet(_Backend):
    name = "comet_ml"

    def open(self, trainer):
        experiment = self.cb._experiment
        return experiment is not None and getattr(experiment, "alive", True)

    def send(self, base, payload, step):
        experiment, parts = self.cb._experiment, []
        stem = base.replace("/", "_")
        if payload.rows and hasattr(experiment, "log_table"):
            experiment.log_table(f"{stem}_unlearned.csv", tabular_data=payload.rows, headers=payload.columns)
            parts.append("table")
        if payload.notes and hasattr(experiment, "log_text"):
            experiment.log_text("\n".join(payload.notes), step=step, metadata={"name": f"{base}/notes"})
            parts.append("notes")
        if hasattr(experiment, "log_image"):
            for name, image in payload.images.items():
                experiment.log_image(image, name=f"{stem}_{name}", step=step)
                parts.append(name)
        return parts


class _MLflow(_Backend):
    name = "mlflow"

    def open(self, trainer):
        mlflow = self.cb._ml_flow
        if not self.cb._initialized:
            return False
        if mlflow.active_run() is None:  # ended by on_train_end: resume it
            last = mlflow.last_active_run()
            if last is None:
                return False
            mlflow.start_run(run_id=last.info.run_id)
            self.reopened = True
        return True

    def send(self, base, payload, step):
        mlflow, parts = self.cb._ml_flow, []
        if payload.rows and hasattr(mlflow, "log_table"):
            data = {c: [row[k] for row in payload.rows] for k, c in enumerate(payload.columns)}
            mlflow.log_table(data=data, artifact_file=f"{base}/unlearned.json")
            parts.append("table")
        if payload.notes and hasattr(mlflow, "log_text"):
            mlflow.log_text("\n".join(payload.notes), f"{base}/notes.txt")
            parts.append("notes")
        if hasattr(mlflow, "log_image"):
            for name, image in payload.images.items():
                mlflow.log_image(image, artifact_file=f"{base}/{name}-step{step}.png")
                parts.append(name)
        return parts

    def close(self):
        if self.reopened:
            self.cb._ml_flow.end_run()
