"""A diagnosis in the loggers a run reports to (`report_to`); the tracker's records too.

`log_report` sends a `DiagnosisReport`: the counts per cause as scalars, a table of the unlearned
samples and the figures. `log_records` (from `hf_ilp.tracking.loggers`) sends the tracker's records
at the end of a run. How they reach each backend (TensorBoard, W&B, Trackio, Comet, MLflow), and
how texts carrying a Hub token or a path of this machine are sent as `<redacted>`, is
`hf_ilp.reporting`.

    >>> sent = log_report(report, trainer)   # after hf_ilp.diagnose
    >>> sent["backends"]
    {'tensorboard': ['table', 'notes', 'cartography', 'causes']}
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from hf_ilp.diagnosis.privacy import publishable
from hf_ilp.diagnosis.report import CAUSES, UNEXPLAINED
from hf_ilp.reporting import MAX_TEXT, Payload, ranked, reports_to_loggers, send  # noqa: F401 (MAX_TEXT: public here too)
from hf_ilp.privacy import REDACTED  # noqa: F401 (public here too)
from hf_ilp.tracking.loggers import RECORD_COLUMNS, log_records  # noqa: F401 (public here too)

#: Text columns of a report shown in its table, when the report has them.
TEXT_COLUMNS = ("prompt", "completion", "ft_says", "ft_expected", "base_says", "dup_prompt", "dup_completion")


def log_report(report, trainer, max_rows: int = 200, prefix: str = "ilp") -> dict:
    """Send a `DiagnosisReport` to the `report_to` loggers of `trainer` (main process only).

    Scalars `{prefix}/diagnosis/<cause>` (unlearned samples per cause), `.../n_unlearned` and
    `.../learned_share`; the table `.../unlearned` (the `max_rows` unlearned samples of highest
    confidence: id, cause, confidence, runner_up and the report's text columns); the figures
    `.../cartography` and `.../causes` (`report.plots`, else drawn by `plot_report`); the notes.
    Returns what was sent where: `{"step", "scalars", "backends": {name: [parts]}}`; `{}` when
    the trainer reports to no logger or this is not the main process.
    """
    if not reports_to_loggers(trainer):
        return {}
    summary = publishable(report).summary
    counts = summary["counts"]
    scalars = {c: counts.get(c, 0) for c in CAUSES + (UNEXPLAINED,)}
    scalars.update(n_unlearned=summary["n_unlearned"], learned_share=summary["learned_share"])
    samples = report.unlearned()
    columns = ["id", "cause", "confidence", "runner_up"] + [c for c in TEXT_COLUMNS if c in samples.column_names]
    order = ranked(list(samples["confidence"]), descending=True)[:max_rows]
    picked = samples.select(order).select_columns(columns) if len(order) else None
    rows = [[row[c] for c in columns] for row in picked] if picked is not None else []
    with tempfile.TemporaryDirectory(prefix="hf_ilp_log-") as tmp:
        plots = report.plots if report.plots and all(Path(p).is_file() for p in report.plots.values()) else None
        if plots is None:
            from hf_ilp.diagnosis.display import plot_report

            plots = plot_report(report, tmp)
        images = {name: _read_png(path) for name, path in plots.items()}
    payload = Payload("diagnosis", scalars, columns, rows, images, list(summary.get("notes", [])))
    return send(payload, trainer, prefix)


def _read_png(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))
