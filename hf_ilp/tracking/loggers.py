"""The tracker's records in the loggers a run reports to (`report_to`), at the end of each run.

`LearnTracker` calls `log_records` when training ends, before any diagnosis: the counts, a table
of the rows not reproduced at the end, and a cartography map. How they reach each backend is
`hf_ilp.reporting`.
"""

from __future__ import annotations

import numpy as np

from hf_ilp.reporting import Payload, ranked, reports_to_loggers, send

#: Columns of the records shown in the end-of-training table.
RECORD_COLUMNS = ("id", "stage", "learned_ever", "forgetting_events", "first_learned_step", "final_p_gold",
                  "final_pass_at_n", "confidence", "variability", "loss_slope")
#: Colours of the cartography map (the diagnosis page's colours for forgetting and knowledge_conflict).
RECORD_COLORS = {"learned": "#cccccc", "forgotten": "#ff7f0e", "never learned": "#d62728"}


def log_records(records, trainer, max_rows: int = 200, prefix: str = "ilp") -> dict:
    """Send `LearnTracker` records (a Dataset or its folder) to the `report_to` loggers of `trainer`.

    For the end of a tracked run, before any diagnosis: scalars `{prefix}/records/n_learned`,
    `n_forgotten` (learned once, not at the end), `n_never_learned` and `n_observed`; the table
    `.../unlearned` (the `max_rows` rows not reproduced at the end, lowest final p(gold) first);
    the figure `.../cartography` (learned, forgotten, never learned). Returns what `hf_ilp.reporting.send`
    does; `{}` when the trainer reports to no logger or this is not the main process.
    """
    from datasets import Dataset

    if not reports_to_loggers(trainer):
        return {}
    if not isinstance(records, Dataset):
        from hf_ilp.tracking.records import load_records

        records = load_records(records)
    table = records.select_columns(list(RECORD_COLUMNS) + ["obs_step", "final_exact"]).with_format("arrow")[:]
    observed = np.asarray(table.column("obs_step").combine_chunks().value_lengths().fill_null(0)) > 0
    final = np.asarray(table.column("final_exact")) & observed
    ever = np.asarray(table.column("learned_ever")) & observed
    scalars = {"n_learned": int(final.sum()), "n_forgotten": int((ever & ~final).sum()),
               "n_never_learned": int((observed & ~ever).sum()), "n_observed": int(observed.sum())}
    unlearned = np.flatnonzero(observed & ~final)
    p_gold = np.asarray(table.column("final_p_gold").to_numpy(zero_copy_only=False), dtype=float)[unlearned]
    picked = unlearned[ranked(p_gold, descending=False)[:max_rows]]
    rows = [list(row.values()) for row in table.select(list(RECORD_COLUMNS)).take(picked).to_pylist()]
    conf = np.asarray(table.column("confidence").to_numpy(zero_copy_only=False), dtype=float)
    var = np.asarray(table.column("variability").to_numpy(zero_copy_only=False), dtype=float)
    groups = {"learned": final, "forgotten": ever & ~final, "never learned": observed & ~ever}
    images = {"cartography": _records_cartography(conf, var, groups)}
    payload = Payload("records", scalars, list(RECORD_COLUMNS), rows, images, [])
    return send(payload, trainer, prefix)


def _records_cartography(conf, var, groups: dict) -> np.ndarray:
    """Confidence vs variability of every observed row, coloured learned / forgotten / never learned."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = RECORD_COLORS
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
