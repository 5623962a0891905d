"""The diagnosis and the tracker's records in the loggers a run reports to (`report_to`).

Everything goes through the trainer's own integration callbacks, so it lands in the run people
already watch: the counts as scalars with `trainer.log` (every backend, at the current global
step), then, per backend that has them, a table of the unlearned samples and the figures:

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
carry a Hub token or a path of this machine are sent as `<redacted>`
(`hf_ilp.diagnosis.privacy.assert_no_secrets`).

    >>> sent = log_report(report, trainer)   # after hf_ilp.diagnose
    >>> sent["backends"]
    {'tensorboard': ['table', 'notes', 'cartography', 'causes']}
"""

from __future__ import annotations

import math
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hf_ilp.diagnosis.display import clip_text
from hf_ilp.diagnosis.report import CAUSES, UNEXPLAINED
from hf_ilp.diagnosis.privacy import assert_no_secrets, publishable

#: Text columns of a report shown in its table, when the report has them.
TEXT_COLUMNS = ("prompt", "completion", "ft_says", "ft_expected", "base_says", "dup_prompt", "dup_completion")
#: Columns of the records shown in the end-of-training table.
RECORD_COLUMNS = ("id", "stage", "learned_ever", "forgetting_events", "first_learned_step", "final_p_gold",
                  "final_pass_at_n", "confidence", "variability", "loss_slope")
MAX_TEXT = 160  # characters of a text cell
REDACTED = "<redacted>"


def log_report(report, trainer, max_rows: int = 200, prefix: str = "ilp") -> dict:
    """Send a `DiagnosisReport` to the `report_to` loggers of `trainer` (main process only).

    Scalars `{prefix}/diagnosis/<cause>` (unlearned samples per cause), `.../n_unlearned` and
    `.../learned_share`; the table `.../unlearned` (the `max_rows` unlearned samples of highest
    confidence: id, cause, confidence, runner_up and the report's text columns); the figures
    `.../cartography` and `.../causes` (`report.plots`, else drawn by `plot_report`); the notes.
    Returns what was sent where: `{"step", "scalars", "backends": {name: [parts]}}`; `{}` when
    the trainer reports to no logger or this is not the main process.
    """
    if not _reporting(trainer):
        return {}
    summary = publishable(report).summary
    counts = summary["counts"]
    scalars = {c: counts.get(c, 0) for c in CAUSES + (UNEXPLAINED,)}
    scalars.update(n_unlearned=summary["n_unlearned"], learned_share=summary["learned_share"])
    samples = report.unlearned()
    columns = ["id", "cause", "confidence", "runner_up"] + [c for c in TEXT_COLUMNS if c in samples.column_names]
    order = _ranked(list(samples["confidence"]), descending=True)[:max_rows]
    picked = samples.select(order).select_columns(columns) if len(order) else None
    rows = [[row[c] for c in columns] for row in picked] if picked is not None else []
    with tempfile.TemporaryDirectory(prefix="hf_ilp_log-") as tmp:
        plots = report.plots if report.plots and all(Path(p).is_file() for p in report.plots.values()) else None
        if plots is None:
            from hf_ilp.diagnosis.display import plot_report

            plots = plot_report(report, tmp)
        images = {name: _read_png(path) for name, path in plots.items()}
    payload = _Payload("diagnosis", scalars, columns, rows, images, list(summary.get("notes", [])))
    return _send(payload, trainer, prefix)


def log_records(records, trainer, max_rows: int = 200, prefix: str = "ilp") -> dict:
    """Send `LearnTracker` records (a Dataset or its folder) to the `report_to` loggers of `trainer`.

    For the end of a tracked run, before any diagnosis: scalars `{prefix}/records/n_learned`,
    `n_forgotten` (learned once, not at the end), `n_never_learned` and `n_observed`; the table
    `.../unlearned` (the `max_rows` rows not reproduced at the end, lowest final p(gold) first);
    the figure `.../cartography` (learned, forgotten, never learned). Returns what `log_report` does.
    """
    from datasets import Dataset

    if not _reporting(trainer):
        return {}
    if not isinstance(records, Dataset):
        from hf_ilp.tracking import load_records

        records = load_records(records)
    table = records.select_columns(list(RECORD_COLUMNS) + ["obs_step", "final_exact"]).with_format("arrow")[:]
    observed = np.asarray(table.column("obs_step").combine_chunks().value_lengths().fill_null(0)) > 0
    final = np.asarray(table.column("final_exact")) & observed
    ever = np.asarray(table.column("learned_ever")) & observed
    scalars = {"n_learned": int(final.sum()), "n_forgotten": int((ever & ~final).sum()),
               "n_never_learned": int((observed & ~ever).sum()), "n_observed": int(observed.sum())}
    unlearned = np.flatnonzero(observed & ~final)
    p_gold = np.asarray(table.column("final_p_gold").to_numpy(zero_copy_only=False), dtype=float)[unlearned]
    picked = unlearned[_ranked(p_gold, descending=False)[:max_rows]]
    rows = [list(row.values()) for row in table.select(list(RECORD_COLUMNS)).take(picked).to_pylist()]
    conf = np.asarray(table.column("confidence").to_numpy(zero_copy_only=False), dtype=float)
    var = np.asarray(table.column("variability").to_numpy(zero_copy_only=False), dtype=float)
    groups = {"learned": final, "forgotten": ever & ~final, "never learned": observed & ~ever}
    images = {"cartography": _records_cartography(conf, var, groups)}
    payload = _Payload("records", scalars, list(RECORD_COLUMNS), rows, images, [])
    return _send(payload, trainer, prefix)


# ---- what goes out ------------------------------------------------------------------------------
@dataclass
class _Payload:
    """One call's content: `name` (the key under `prefix`), scalars, a table, figures, notes."""

    name: str
    scalars: dict
    columns: list
    rows: list
    images: dict = field(default_factory=dict)  # name -> HxWx3 uint8 array
    notes: list = field(default_factory=list)

    def __post_init__(self):
        self.scalars = {k: float(v) for k, v in self.scalars.items() if v is not None and math.isfinite(float(v))}
        self.rows = [[_value(v) for v in row] for row in self.rows]
        texts = [(r, c) for r, row in enumerate(self.rows) for c, v in enumerate(row) if isinstance(v, str)]
        safe = _publishable([self.rows[r][c] for r, c in texts], f"the {self.name} table")
        for (r, c), text in zip(texts, safe):
            self.rows[r][c] = clip_text(text, MAX_TEXT)
        self.notes = _publishable([str(n) for n in self.notes], f"the {self.name} notes")

    def markdown(self) -> str:
        def cell(v):
            text = "-" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)
            return text.replace("|", "\\|") or " "

        lines = ["| " + " | ".join(self.columns) + " |", "|" + " --- |" * len(self.columns)]
        lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in self.rows]
        return "\n".join(lines)


def _value(v):
    """A table cell: numpy scalars as Python ones, a non-finite float as None."""
    if isinstance(v, np.generic):
        v = v.item()
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _publishable(texts: list, what: str) -> list:
    """`texts` as they may leave this machine: each one holding a Hub token or a local path becomes `<redacted>`."""
    try:
        assert_no_secrets("\n".join(texts), what)
        return list(texts)
    except ValueError:
        pass
    out = []
    for text in texts:
        try:
            assert_no_secrets(text, what)
            out.append(text)
        except ValueError:
            out.append(REDACTED)
    return out


def _ranked(values, descending: bool) -> np.ndarray:
    """Positions of `values` sorted (stable), NaN / None last."""
    v = np.array([math.nan if x is None else x for x in values], dtype=float)
    key = np.where(np.isnan(v), np.inf, -v if descending else v)
    return np.argsort(key, kind="stable")


def _read_png(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _records_cartography(conf, var, groups: dict) -> np.ndarray:
    """Confidence vs variability of every observed row, coloured learned / forgotten / never learned."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hf_ilp.diagnosis.display import COLORS

    colors = {"learned": "#cccccc", "forgotten": COLORS["forgetting"], "never learned": COLORS["knowledge_conflict"]}
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for name, sel in groups.items():
        ax.scatter(var[sel], conf[sel], s=10 if name == "learned" else 14, c=colors[name],
                   label=f"{name} ({int(sel.sum())})", linewidths=0)
    ax.set_xlabel("variability (std of p(gold) over observations)")
    ax.set_ylabel("confidence (mean p(gold) over observations)")
    ax.set_title("Training dynamics of each sample, learned or not at the end")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


# ---- where it goes -------------------------------------------------------------------------------
def _reporting(trainer) -> bool:
    return bool(trainer.args.report_to) and trainer.state.is_world_process_zero


def _send(payload: _Payload, trainer, prefix: str) -> dict:
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

    def send(self, base: str, payload: _Payload, step: int) -> list:
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
