"""Per-sample learning records: the evidence every diagnosis stands on.

Records are a `datasets.Dataset` saved with `save_to_disk` into a folder (by default
`<output_dir>/hf_ilp_records/`) that also holds `meta.json` (`schema_version`, the tracker's
settings, library versions) and `tracker_state.json` (what a resumed run needs). Load them with
`hf_ilp.load_records(path)`; `path` may be the records folder or the `output_dir` holding it.

Schema version 1: one row per tracked sample; the `obs_*` and per-observation columns are lists
with one entry per observation **of that row** (all rows share the `stage_end`/`final`
observations; a training-pass observation only lists the rows trained since the previous one).

| column | type | meaning |
| --- | --- | --- |
| `id` | str | the dataset's `id` column, else the hash of the row's tokens (`row_hash`) |
| `stage` | int | the row's `stage` column, -1 when the data has none |
| `n_completion_tokens` | int | completion tokens scored (EOS included); 0: nothing to learn, never observed |
| `row_hash` | str | 16-hex-digit hash of the row's token ids (how the tracker recognizes it in a batch) |
| `obs_step` | list[int] | optimizer steps since the tracker's first training run (stages add up) |
| `obs_epoch` | list[float] | `state.epoch` of the run being trained (restarts at each stage) |
| `obs_stage` | list[int] | stage being trained (the trained rows' `stage`; else the run's index, from 0; a run over rows of several stages: -1, or the next stage number when it follows stage-by-stage runs) |
| `obs_kind` | list[str] | `epoch`, `steps` (both from the training forward passes: the row's first training forward since the previous observation), `stage_end`, `final` (both from `check_learned` on the current weights, every row) |
| `nll` | list[float] | mean completion-token negative log-likelihood |
| `token_acc` | list[float] | share of completion tokens that are the argmax |
| `exact` | list[bool] | greedy decoding reproduces the completion (teacher-forced argmax at every completion token) |
| `p_gold` | list[float] | probability of the whole completion (temperature 1) |
| `confidence` | float | Cartography confidence: mean `p_gold` over the row's observations |
| `variability` | float | Cartography variability: population std of `p_gold` |
| `correctness` | float | Cartography correctness: share of observations with `exact` |
| `first_learned_step` | int | `obs_step` of the first `exact` observation, -1 if never |
| `forgetting_events` | int | 1 -> 0 flips of `exact` between consecutive observations |
| `loss_slope` | float | least-squares slope of `nll` per optimizer step over the last `slope_window` observations (NaN with fewer than two distinct steps) |
| `final_exact` | bool | `exact` at the `final` observation (else the last one) |
| `final_p_gold` | float | `p_gold` at the `final` observation (else the last one) |
| `final_pass_at_n` | float | pass@N at the tracker's temperature at the `final` observation (NaN before it) |
| `learned_ever` | bool | some observation has `exact` |

A row with no observation has empty lists, NaN statistics, `first_learned_step` -1 and False flags.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from datasets import Dataset, Features, Sequence, Value, load_from_disk

from hf_ilp._io import atomic_dir

SCHEMA_VERSION = 1
RECORDS_DIRNAME = "hf_ilp_records"

FEATURES = Features(
    {
        "id": Value("string"),
        "stage": Value("int64"),
        "n_completion_tokens": Value("int64"),
        "row_hash": Value("string"),
        "obs_step": Sequence(Value("int64")),
        "obs_epoch": Sequence(Value("float64")),
        "obs_stage": Sequence(Value("int64")),
        "obs_kind": Sequence(Value("string")),
        "nll": Sequence(Value("float64")),
        "token_acc": Sequence(Value("float64")),
        "exact": Sequence(Value("bool")),
        "p_gold": Sequence(Value("float64")),
        "confidence": Value("float64"),
        "variability": Value("float64"),
        "correctness": Value("float64"),
        "first_learned_step": Value("int64"),
        "forgetting_events": Value("int64"),
        "loss_slope": Value("float64"),
        "final_exact": Value("bool"),
        "final_p_gold": Value("float64"),
        "final_pass_at_n": Value("float64"),
        "learned_ever": Value("bool"),
    }
)


def _slope(steps, values) -> float:
    x = np.asarray(steps, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    if len(np.unique(x)) < 2 or not np.all(np.isfinite(y)):
        return float("nan")
    x = x - x.mean()
    return float((x * (y - y.mean())).sum() / (x * x).sum())


def build_records(rows, events, slope_window: int = 3) -> Dataset:
    """Group observation `events` (dicts of arrays over row indices) into one record per row."""
    n = len(rows.ids)
    per_row = [{k: [] for k in ("obs_step", "obs_epoch", "obs_stage", "obs_kind", "nll", "token_acc", "exact", "p_gold")} for _ in range(n)]
    final_pass = np.full(n, np.nan)
    final_seen = np.zeros(n, dtype=bool)
    final_vals = {}
    for ev in events:
        for j, i in enumerate(ev["idx"]):
            r = per_row[i]
            r["obs_step"].append(int(ev["step"]))
            r["obs_epoch"].append(float(ev["epoch"]))
            r["obs_stage"].append(int(ev["stage"]))
            r["obs_kind"].append(ev["kind"])
            r["nll"].append(float(ev["nll"][j]))
            r["token_acc"].append(float(ev["token_acc"][j]))
            r["exact"].append(bool(ev["exact"][j]))
            r["p_gold"].append(float(ev["p_gold"][j]))
            if ev["kind"] == "final":
                final_seen[i] = True
                final_vals[i] = (bool(ev["exact"][j]), float(ev["p_gold"][j]))
                final_pass[i] = float(ev["pass_at_n"][j])
    n_targets = rows.n_targets()
    columns = {k: [] for k in FEATURES}
    for i, r in enumerate(per_row):
        p = np.asarray(r["p_gold"], dtype=np.float64)
        ex = np.asarray(r["exact"], dtype=bool)
        flips = int(np.sum(ex[:-1] & ~ex[1:])) if len(ex) > 1 else 0
        learned = np.flatnonzero(ex)
        if final_seen[i]:
            fin_exact, fin_p = final_vals[i]
        elif len(ex):
            fin_exact, fin_p = bool(ex[-1]), float(p[-1])
        else:
            fin_exact, fin_p = False, float("nan")
        columns["id"].append(rows.names[i])
        columns["stage"].append(int(rows.stages[i]))
        columns["n_completion_tokens"].append(int(n_targets[i]))
        columns["row_hash"].append(rows.hashes[i])
        for k, v in r.items():
            columns[k].append(v)
        columns["confidence"].append(float(p.mean()) if len(p) else float("nan"))
        columns["variability"].append(float(p.std()) if len(p) else float("nan"))
        columns["correctness"].append(float(ex.mean()) if len(ex) else float("nan"))
        columns["first_learned_step"].append(int(r["obs_step"][learned[0]]) if len(learned) else -1)
        columns["forgetting_events"].append(flips)
        columns["loss_slope"].append(_slope(r["obs_step"][-slope_window:], r["nll"][-slope_window:]))
        columns["final_exact"].append(fin_exact)
        columns["final_p_gold"].append(fin_p)
        columns["final_pass_at_n"].append(float(final_pass[i]))
        columns["learned_ever"].append(bool(len(learned)))
    return Dataset.from_dict(columns, features=FEATURES)


def save_records(path, records: Dataset, meta: dict, state: dict | None = None) -> Path:
    """Write `records` (+ `meta.json`, + `tracker_state.json` when given) to `path`, atomically."""
    path = Path(path)
    with atomic_dir(path) as tmp:
        records.save_to_disk(str(tmp))
        (tmp / "meta.json").write_text(json.dumps({"schema_version": SCHEMA_VERSION, **meta}, indent=2, default=str))
        if state is not None:
            (tmp / "tracker_state.json").write_text(json.dumps(state))
    return path


def load_records(path) -> Dataset:
    """Load records written by `LearnTracker` from the records folder or the `output_dir` holding it.

    Raises a clear error if the folder holds no records or records of another schema version.
    """
    path = Path(path)
    if not (path / "meta.json").is_file() and (path / RECORDS_DIRNAME / "meta.json").is_file():
        path = path / RECORDS_DIRNAME
    meta_file = path / "meta.json"
    if not meta_file.is_file():
        raise FileNotFoundError(
            f"load_records: no LearnTracker records in {path} (expected meta.json there or in {path / RECORDS_DIRNAME})"
        )
    meta = json.loads(meta_file.read_text())
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(
            f"load_records: {path} has records schema_version {meta.get('schema_version')!r}; this hf_ilp reads "
            f"version {SCHEMA_VERSION}"
        )
    return load_from_disk(str(path))
