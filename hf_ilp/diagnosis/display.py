"""Figures and the printed summary of a DiagnosisReport (matplotlib Agg, rich).

    >>> paths = plot_report(report, "plots/")      # {"cartography": ..., "causes": ...}
    >>> print_summary(report)                       # a table of causes, shares and confidences
    >>> evidence_text(report.samples[0])            # one sentence: why this sample got its cause
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hf_ilp.diagnosis.report import CAUSES, UNEXPLAINED
from hf_ilp.reporting import clip_text

#: One colour per verdict, kept fixed so that every figure and card reads the same way.
COLORS = {
    "missing_knowledge": "#1f77b4",
    "knowledge_conflict": "#d62728",
    "data_inconsistency": "#9467bd",
    "forgetting": "#ff7f0e",
    "under_training": "#2ca02c",
    UNEXPLAINED: "#7f7f7f",
}


def sample_name(row, ids: str | None = None) -> str:
    """How a reader refers to a sample: its id, or `row N` where ids are content hashes."""
    if ids == "content_hash" and row.get("row") is not None:
        return f"row {row['row']}"
    return str(row["id"])


def says_text(row) -> str:
    """What the fine-tuned model says where it first leaves the target, against the target ('' when
    the report has no such text)."""
    said, expected = row.get("ft_says") or "", row.get("ft_expected") or ""
    if not said and not expected:
        return ""
    return f"says “{clip_text(said)}” where the target continues “{clip_text(expected)}”"


def evidence_text(row) -> str:
    """One sentence of the evidence behind a sample's cause, from the report's columns (those an
    older report lacks are left out)."""
    cause = row.get("cause") or ""
    parts = []
    if cause == "missing_knowledge":
        p = _num(row, "base_gold_prob")
        if p is not None:
            parts.append(f"the base model gives the target's tokens p={p:.2f} on average")
        if row.get("base_says"):
            parts.append(f"the base says “{clip_text(row['base_says'])}”")
    elif cause == "knowledge_conflict":
        p = _num(row, "base_alt_prob")
        if row.get("base_says") or p is not None:
            said = f"“{clip_text(row['base_says'])}”" if row.get("base_says") else "another answer"
            where = f" where the target says “{clip_text(row['base_expected'])}”" if row.get("base_expected") else ""
            parts.append(f"the base model says {said}{where}" + (f" (p={p:.2f})" if p is not None else ""))
        if _num(row, "ft_follows_base") == 1.0:
            parts.append("the fine-tuned model still prefers it")
    elif cause == "data_inconsistency":
        if row.get("dup_neighbor") or row.get("dup_prompt"):
            text = f"“{clip_text(row['dup_prompt'])}” → “{clip_text(row.get('dup_completion', ''))}”" if row.get("dup_prompt") else ""
            sim = _num(row, "dup_similarity")
            parts.append(f"a near-duplicate prompt ({row.get('dup_neighbor') or '?'}) has another answer"
                         + (f": {text}" if text else "") + (f" (similarity {sim:.2f})" if sim is not None else ""))
    elif cause == "forgetting":
        step, stage = _num(row, "first_learned_step"), _num(row, "forgot_stage")
        if step is not None or stage is not None:
            parts.append("reproduced" + (f" from step {step:.0f}" if step is not None and step >= 0 else "")
                         + ", lost by the end"
                         + (f" (last reproduced while stage {stage:.0f} was trained)" if stage is not None else ""))
    elif cause == "under_training":
        drop, rare, ratio = _num(row, "loss_drop"), _num(row, "template_rarity"), _num(row, "length_ratio")
        if drop is not None:
            parts.append(f"its loss still fell {drop:.0%} per observation")
        if rare is not None and rare >= 0.9:
            parts.append("its prompt template is rare")
        if ratio is not None and ratio >= 2:
            parts.append(f"its target is {ratio:.1f}x the median length")
    elif cause == UNEXPLAINED:
        parts.append("no cause reaches its threshold")
    return "; ".join(parts)


def _num(row, name):
    value = row.get(name)
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


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
