"""Figures and the printed summary of a DiagnosisReport (matplotlib Agg, rich).

    >>> paths = plot_report(report, "plots/")      # {"cartography": ..., "causes": ...}
    >>> print_summary(report)                       # a table of causes, shares and confidences
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hf_ilp.diagnosis.report import CAUSES, UNEXPLAINED

#: One colour per verdict, kept fixed so that every figure and card reads the same way.
COLORS = {
    "missing_knowledge": "#1f77b4",
    "knowledge_conflict": "#d62728",
    "data_inconsistency": "#9467bd",
    "forgetting": "#ff7f0e",
    "under_training": "#2ca02c",
    UNEXPLAINED: "#7f7f7f",
}


def plot_report(report, out_dir) -> dict:
    """Write the cartography map (confidence vs variability over training, coloured by cause)
    and the per-cause bar chart as PNGs in `out_dir`; return {name: path}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cols = report.samples.column_names
    paths = {}
    if {"cartography_confidence", "cartography_variability"} <= set(cols) and len(report.samples):
        conf = np.asarray(report.samples["cartography_confidence"], dtype=float)
        var = np.asarray(report.samples["cartography_variability"], dtype=float)
        cause = np.asarray(report.samples["cause"], dtype=object)
        fig, ax = plt.subplots(figsize=(6.5, 5))
        learned = cause == ""
        ax.scatter(var[learned], conf[learned], s=6, c="#cccccc", label="learned", linewidths=0)
        for name in CAUSES + (UNEXPLAINED,):
            sel = cause == name
            if sel.any():
                ax.scatter(var[sel], conf[sel], s=14, c=COLORS[name], label=f"{name} ({sel.sum()})", linewidths=0)
        ax.set_xlabel("variability (std of p(gold) over observations)")
        ax.set_ylabel("confidence (mean p(gold) over observations)")
        ax.set_title("Training dynamics of each sample, coloured by diagnosed cause")
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        paths["cartography"] = str(out_dir / "cartography.png")
        fig.savefig(paths["cartography"], dpi=120)
        plt.close(fig)
    counts = report.counts
    names = list(CAUSES) + [UNEXPLAINED]
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    ax.bar(range(len(names)), [counts.get(n, 0) for n in names], color=[COLORS[n] for n in names])
    ax.set_xticks(range(len(names)), [n.replace("_", "\n") for n in names], fontsize=8)
    ax.set_ylabel("unlearned samples")
    ax.set_title(f"Causes of incomplete learning ({report.summary.get('n_unlearned', 0)} unlearned "
                 f"of {report.summary.get('n_samples', 0)})")
    fig.tight_layout()
    paths["causes"] = str(out_dir / "causes.png")
    fig.savefig(paths["causes"], dpi=120)
    plt.close(fig)
    return paths


def print_summary(report, console=None) -> None:
    """Print one row per cause: count, share of the unlearned set, median confidence."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    s = report.summary
    n_un = s.get("n_unlearned", 0)
    table = Table(title=f"ILP diagnosis: {n_un} of {s.get('n_samples', 0)} samples unlearned")
    for col, justify in (("cause", "left"), ("samples", "right"), ("share", "right"), ("median confidence", "right")):
        table.add_column(col, justify=justify)
    causes = np.asarray(report.samples["cause"], dtype=object) if len(report.samples) else np.array([])
    conf = np.asarray(report.samples["confidence"], dtype=float) if len(report.samples) else np.array([])
    for name in CAUSES + (UNEXPLAINED,):
        count = s["counts"].get(name, 0)
        sel = causes == name
        med = f"{np.nanmedian(conf[sel]):.2f}" if sel.any() and name != UNEXPLAINED else "-"
        table.add_row(name, str(count), f"{count / n_un:.1%}" if n_un else "-", med)
    console.print(table)
    for note in s.get("notes", []):
        console.print(f"[dim]note: {note}[/dim]")
