"""DiagnosisReport: the per-sample verdicts and their summary, one object from diagnosis to Hub.

Layout on disk (a folder, written atomically):
    samples.parquet   one row per training sample: `id`, `learned`, `cause`, `confidence`,
                      `runner_up`, `runner_up_confidence`, then evidence columns (signal values,
                      NaN where a signal was not computed), and (schema 2) what a reader needs
                      to see it: `row` (index in the training data), `prompt` and `completion`
                      text (a conversation's turns after their role), `ft_says` / `ft_expected`
                      (what the fine-tuned model says from where it first leaves the target, and
                      what the target says there; `ft_diverges_at` in completion tokens), the
                      same for the base model (`base_*`), the near-duplicate's text
                      (`dup_prompt`, `dup_completion`), and the learning curve
                      (`curve_step`, `curve_exact`, `curve_p_gold`: one entry per observation)
    summary.json      `schema_version`, counts per cause, `n_samples`, `n_unlearned`,
                      `unexplained_share`, `settings`, `versions`, `notes`; `ids`: "dataset"
                      (its `id` column) or "content_hash" (rows without one: show `row` instead)
    plots/*.png       optional figures (cartography map, bar chart per cause)
    report.html       the report as one page to open in a browser (`hf_ilp.diagnosis.write_html`)
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_ilp.files import atomic_dir

#: 2 added the readable evidence (text, learning curve, `row`); version-1 reports load as they are.
SCHEMA_VERSION = 2

#: The five causes of incomplete learning, as stable strings, then the honest remainder.
CAUSES = (
    "missing_knowledge",
    "knowledge_conflict",
    "data_inconsistency",
    "forgetting",
    "under_training",
)
UNEXPLAINED = "unexplained"
LEARNED = ""  # the `cause` of a learned sample

REQUIRED_COLUMNS = ("id", "learned", "cause", "confidence", "runner_up", "runner_up_confidence")


@dataclass
class DiagnosisReport:
    """Per-sample verdicts (`samples`, a `datasets.Dataset`) and a JSON-able `summary`.

    Build one with `DiagnosisReport.from_rows(rows, settings=..., notes=...)`; the summary's
    counts are derived from the rows, never passed in.
    """

    samples: Any  # datasets.Dataset
    summary: dict = field(default_factory=dict)
    plots: dict = field(default_factory=dict)  # name -> path of a PNG

    # construction -------------------------------------------------------------------------
    @classmethod
    def from_rows(cls, rows: list[dict], settings: dict | None = None, notes: list[str] | None = None):
        from datasets import Dataset

        for i, row in enumerate(rows):
            missing = [c for c in REQUIRED_COLUMNS if c not in row]
            if missing:
                raise ValueError(f"report row {i} (id={row.get('id')!r}) lacks columns {missing}")
            cause = row["cause"]
            if row["learned"] and cause != LEARNED:
                raise ValueError(f"row {row['id']!r} is learned but has cause {cause!r}; learned rows have cause ''")
            if not row["learned"] and cause not in CAUSES + (UNEXPLAINED,):
                raise ValueError(f"row {row['id']!r} has cause {cause!r}; expected one of {CAUSES + (UNEXPLAINED,)}")
        samples = Dataset.from_list(rows) if rows else Dataset.from_dict({c: [] for c in REQUIRED_COLUMNS})
        return cls(samples=samples, summary=cls._summarize(rows, settings or {}, notes or []))

    @staticmethod
    def _summarize(rows, settings, notes) -> dict:
        counts = {c: 0 for c in CAUSES + (UNEXPLAINED,)}
        for row in rows:
            if not row["learned"]:
                counts[row["cause"]] += 1
        n_unlearned = sum(counts.values())
        return {
            "schema_version": SCHEMA_VERSION,
            "n_samples": len(rows),
            "n_unlearned": n_unlearned,
            "learned_share": (len(rows) - n_unlearned) / len(rows) if rows else math.nan,
            "counts": counts,
            "unexplained_share": counts[UNEXPLAINED] / n_unlearned if n_unlearned else 0.0,
            "settings": settings,
            "versions": _versions(),
            "notes": list(notes),
        }

    # views ----------------------------------------------------------------------------------
    @property
    def counts(self) -> dict:
        return dict(self.summary["counts"])

    def unlearned(self):
        return self.samples.filter(lambda learned: not learned, input_columns="learned")

    def by_cause(self, cause: str):
        if cause not in CAUSES + (UNEXPLAINED,):
            raise ValueError(f"unknown cause {cause!r}; expected one of {CAUSES + (UNEXPLAINED,)}")
        return self.samples.filter(lambda c: c == cause, input_columns="cause")

    def __len__(self):
        return len(self.samples)

    # persistence ----------------------------------------------------------------------------
    def save(self, path, html: bool = True) -> Path:
        """Write the report folder atomically and return its path; `html=True` adds `report.html`
        (left out, with a warning, when the page would carry a token or a path of this machine)."""
        path = Path(path)
        with atomic_dir(path) as tmp:
            self.samples.to_parquet(str(tmp / "samples.parquet"))
            plots = {}
            if self.plots:
                (tmp / "plots").mkdir()
                for name, src in self.plots.items():
                    dst = tmp / "plots" / Path(src).name
                    shutil.copyfile(src, dst)
                    plots[name] = f"plots/{dst.name}"
            summary = dict(self.summary, plots=plots)
            (tmp / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True, default=str))
            if html:
                from hf_ilp.diagnosis.html import write_html

                try:
                    write_html(self, tmp / "report.html")
                except ValueError as exc:  # the secrets check: a page that cannot be shared is not written
                    warnings.warn(f"{path}: report.html not written: {exc}", stacklevel=2)
        self.plots = {name: str(path / rel) for name, rel in plots.items()}
        return path

    @classmethod
    def load(cls, path) -> "DiagnosisReport":
        """Read a folder written by `save`. Older schema versions load; newer ones are refused."""
        from datasets import Dataset

        path = Path(path)
        summary_file, samples_file = path / "summary.json", path / "samples.parquet"
        for f in (summary_file, samples_file):
            if not f.is_file():
                raise FileNotFoundError(f"{path} is not a DiagnosisReport folder: {f.name} is missing")
        summary = json.loads(summary_file.read_text())
        check_schema_version(summary.get("schema_version"), source=str(summary_file))
        plots = {name: str(path / rel) for name, rel in summary.pop("plots", {}).items()}
        return cls(samples=Dataset.from_parquet(str(samples_file)), summary=summary, plots=plots)


def check_schema_version(version, source: str) -> None:
    """Raise a clear error for a missing, malformed or newer report schema version."""
    if version is None:
        raise ValueError(f"{source}: field 'schema_version' is missing")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"{source}: field 'schema_version' must be a positive integer, got {version!r}")
    if version > SCHEMA_VERSION:
        raise ValueError(
            f"{source}: field 'schema_version' is {version}, newer than this hf_ilp understands "
            f"({SCHEMA_VERSION}); upgrade hf_ilp"
        )


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("hf_ilp", "torch", "transformers", "trl", "datasets"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out
