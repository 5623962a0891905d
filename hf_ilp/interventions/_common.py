"""Helpers shared by the interventions: report/dataset checks, prompts, model copies."""

from __future__ import annotations

import copy

from hf_ilp._rows import as_text, split_messages
from hf_ilp.diagnosis.report import CAUSES


def prompt_text(row) -> str:
    """A row's prompt as plain text (conversational prompts: the turns' contents joined)."""
    return as_text(row["prompt"] if "prompt" in row else split_messages(row["messages"])[0])


def check_report_matches(report, dataset, name: str = "dataset") -> None:
    """Refuse a report that was not made on `dataset` (ids it names that the dataset lacks)."""
    if "id" not in dataset.column_names:
        raise ValueError(f"{name} needs an 'id' column to be matched with a DiagnosisReport")
    ids = {str(i) for i in dataset["id"]}
    report_ids = [str(i) for i in report.samples["id"]]
    unknown = [i for i in report_ids if i not in ids]
    if unknown:
        raise ValueError(
            f"the DiagnosisReport does not describe {name}: {len(unknown)} of its {len(report_ids)} sample ids "
            f"(e.g. {unknown[:3]}) are not in the {name}'s {len(ids)} ids; pass the report made on this dataset"
        )


def flagged_ids(report, cause: str) -> list[str]:
    """Ids of the unlearned samples the report attributes to `cause`."""
    if cause not in CAUSES:
        raise ValueError(f"unknown cause {cause!r}; expected one of {CAUSES}")
    return [str(i) for i in report.by_cause(cause)["id"]]


def require_flagged(report, causes) -> list[str]:
    """Flagged ids for any of `causes`; a clear error when there are none."""
    ids = [i for c in causes for i in flagged_ids(report, c)]
    if not ids:
        raise ValueError(
            f"the DiagnosisReport flags no sample as {' or '.join(causes)} (counts: {report.counts}); "
            "nothing to intervene on"
        )
    return ids


def fresh_model(model, **load_kwargs):
    """A trainable model that training may change: a deep copy of a model object (the caller's stays
    as it was) or a model loaded from a path (a PEFT adapter folder loads trainable)."""
    if not isinstance(model, (str, bytes)) and not hasattr(model, "__fspath__"):
        clone = copy.deepcopy(model)
        # A model that went through a trainer may carry a per-instance `forward` set there (TRL's fused
        # LM head, accelerate's autocast wrapper) whose closure still calls the ORIGINAL model's forward:
        # the copy would train its own weights yet answer with the original's. Drop the patches; the
        # next trainer sets up what it needs on the copy itself.
        inner = clone.get_base_model() if hasattr(clone, "get_base_model") else None
        for module in {id(m): m for m in (clone, inner) if m is not None}.values():
            module.__dict__.pop("forward", None)
            module.__dict__.pop("_original_forward", None)
        return clone
    from pathlib import Path

    path = Path(model)
    if (path / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        return AutoPeftModelForCausalLM.from_pretrained(str(path), is_trainable=True, **load_kwargs)
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), **load_kwargs)
