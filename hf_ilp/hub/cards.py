"""Model and dataset cards that carry a DiagnosisReport, and the way back from a card to a report.

The model card keeps what TRL writes (model-index, base_model, tags, its text) and adds:
- YAML metadata under the key `hf_ilp` (see `to_card_metadata`): schema version, counts per
  cause, unexplained share, settings, library versions, the id of the per-sample diagnosis
  dataset and what the model was trained on;
- `model-index` evaluation results (through huggingface_hub's `EvalResult`): the share of
  training samples reproduced exactly and the count of unlearned samples per cause;
- a Markdown section rendered from `model_cards/diagnosis_section.md`: a table of causes, one
  table of example samples per cause, and the report's plots as images stored in the repo.
  The section sits between two HTML comments, so amending a card again replaces it.

Cards never carry a token, a path of the machine or another secret: settings are scrubbed
(`_scrub`) and every text about to leave the machine is checked (`assert_no_secrets`).

Example:
    >>> trainer.create_model_card(model_name="my-model")        # TRL's card
    >>> amend_model_card("out", report, model_repo_id="me/my-model",
    ...                  dataset_repo_id="me/my-model-ilp-diagnosis")
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from hf_ilp._rows import as_text, split_messages
from hf_ilp.diagnosis.privacy import TOKEN_RE as _TOKEN_RE
from hf_ilp.diagnosis.privacy import assert_no_secrets, publishable  # noqa: F401 (public here too)
from hf_ilp.diagnosis.privacy import finite as _finite
from hf_ilp.diagnosis.privacy import looks_like_path as _looks_like_path
from hf_ilp.diagnosis.privacy import scrub as _scrub
from hf_ilp.diagnosis.report import CAUSES, SCHEMA_VERSION, UNEXPLAINED, DiagnosisReport, check_schema_version
from hf_ilp.resources import data_dir

METADATA_KEY = "hf_ilp"
#: Where the report folder lives inside a run's output folder (and inside the model repo).
REPORT_DIRNAME = "hf_ilp_report"
_BEGIN, _END = "<!-- hf_ilp:diagnosis:begin -->", "<!-- hf_ilp:diagnosis:end -->"
_TAGS = ("hf_ilp", "incomplete-learning")
_EXAMPLES_PER_CAUSE = 5
_CAUSE_TEXT = {
    "missing_knowledge": "the base model lacks the prerequisite knowledge",
    "knowledge_conflict": "the sample contradicts what the base model confidently knows",
    "data_inconsistency": "a near-duplicate prompt in the training data has a different answer",
    "forgetting": "learned at an earlier stage or observation, lost by the end",
    "under_training": "never learned and still improving: more optimization should fix it",
    UNEXPLAINED: "no cause's evidence is strong enough",
}


class CardMetadataError(ValueError):
    """A card's `hf_ilp` metadata is missing, malformed or from a newer hf_ilp."""


# metadata <-> report ---------------------------------------------------------------------------
def to_card_metadata(
    report: DiagnosisReport, dataset_repo_id: str | None = None, dataset_revision: str | None = None, trained_on: str | None = None
) -> dict:
    """The `hf_ilp` YAML block of a card: the report's summary, scrubbed, plus the dataset links."""
    s = report.summary
    return _scrub(
        {
            "schema_version": s.get("schema_version", SCHEMA_VERSION),
            "n_samples": s["n_samples"],
            "n_unlearned": s["n_unlearned"],
            "learned_share": _finite(s.get("learned_share")),
            "counts": {c: int(s["counts"].get(c, 0)) for c in CAUSES + (UNEXPLAINED,)},
            "unexplained_share": _finite(s.get("unexplained_share")),
            "settings": s.get("settings", {}),
            "versions": s.get("versions", {}),
            "notes": list(s.get("notes", [])),
            "diagnosis_dataset": dataset_repo_id,
            "diagnosis_dataset_revision": dataset_revision,
            "trained_on": trained_on,
            "plots": {name: f"{REPORT_DIRNAME}/plots/{Path(p).name}" for name, p in sorted(report.plots.items())},
        }
    )


def from_card_metadata(metadata: dict, source: str) -> DiagnosisReport:
    """Rebuild a DiagnosisReport (summary only, `samples=None`) from a card's metadata.

    `metadata` is the whole YAML dict of the card; `source` names the card in errors. Missing,
    malformed or newer-schema `hf_ilp` metadata raises `CardMetadataError` naming the field.
    """
    block = (metadata or {}).get(METADATA_KEY)
    if block is None:
        raise CardMetadataError(f"{source}: field '{METADATA_KEY}' is missing from the card metadata; was this model diagnosed with hf_ilp?")
    if not isinstance(block, dict):
        raise CardMetadataError(f"{source}: field '{METADATA_KEY}' must be a mapping, got {type(block).__name__}")
    try:
        check_schema_version(block.get("schema_version"), source=f"{source}: {METADATA_KEY}")
    except ValueError as exc:
        raise CardMetadataError(str(exc).replace("field 'schema_version'", f"field '{METADATA_KEY}.schema_version'")) from None
    for name in ("n_samples", "n_unlearned"):
        _require_int(block, name, source)
    counts = block.get("counts")
    if not isinstance(counts, dict):
        raise CardMetadataError(f"{source}: field '{METADATA_KEY}.counts' must be a mapping of cause -> count, got {counts!r}")
    for cause in CAUSES + (UNEXPLAINED,):
        _require_int(counts, cause, source, prefix=f"{METADATA_KEY}.counts.")
    unknown = sorted(set(counts) - set(CAUSES + (UNEXPLAINED,)))
    if unknown:
        raise CardMetadataError(f"{source}: field '{METADATA_KEY}.counts' has unknown causes {unknown}; expected {list(CAUSES + (UNEXPLAINED,))}")
    summary = {k: v for k, v in block.items() if k != "plots"}
    for key in ("learned_share", "unexplained_share"):
        summary[key] = math.nan if summary.get(key) is None else float(summary[key])
    summary.setdefault("settings", {})
    summary.setdefault("versions", {})
    summary.setdefault("notes", [])
    return DiagnosisReport(samples=None, summary=summary, plots=dict(block.get("plots") or {}))


def _require_int(block: dict, name: str, source: str, prefix: str = f"{METADATA_KEY}.") -> None:
    value = block.get(name)
    if value is None:
        raise CardMetadataError(f"{source}: field '{prefix}{name}' is missing")
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise CardMetadataError(f"{source}: field '{prefix}{name}' must be a non-negative integer, got {value!r}")


# model card ------------------------------------------------------------------------------------
def amend_model_card(
    output_dir,
    report: DiagnosisReport,
    model_repo_id: str | None = None,
    dataset_repo_id: str | None = None,
    trained_on: str | None = None,
    dataset_revision: str | None = None,
    train_dataset=None,
) -> Path:
    """Add the diagnosis to `output_dir/README.md` (TRL's card), or write a card if there is none.

    Idempotent: the `hf_ilp` metadata, the evaluation results it owns and the Markdown section
    are replaced, everything else in the card is kept. Returns the card's path.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "README.md"
    model_name = (model_repo_id or output_dir.name).split("/")[-1]
    section = render_diagnosis_section(report, model_repo_id=model_repo_id, dataset_repo_id=dataset_repo_id, train_dataset=train_dataset)
    if path.is_file():
        card = ModelCard.load(path)
        body = _strip_section(card.text).rstrip() + "\n\n" + section + "\n"
    else:
        card = ModelCard.from_template(
            ModelCardData(library_name="transformers"),
            template_path=str(templates_dir() / "model_card.md"),
            model_name=model_name,
            diagnosis_section=section,
        )
        body = card.text
    data = card.data
    if isinstance(data.base_model, str) and _looks_like_path(data.base_model):
        # a local folder is not a Hub id, and it names a path of this machine: keep only its name
        local, name = data.base_model, Path(data.base_model.rstrip("/")).name
        body = body.replace(f"[{local}](https://huggingface.co/{local})", f"`{name}`").replace(local, name)
        data.base_model = None
    data.tags = sorted(set(data.tags or []) | set(_TAGS))
    data.model_name = data.model_name or model_name
    kept = [r for r in (data.eval_results or []) if not r.metric_type.startswith("hf_ilp/")]
    data.eval_results = kept + _eval_results(report, EvalResult, trained_on=trained_on or dataset_repo_id)
    block = to_card_metadata(report, dataset_repo_id=dataset_repo_id, dataset_revision=dataset_revision, trained_on=trained_on)
    setattr(data, METADATA_KEY, block)
    text = f"---\n{data.to_yaml()}\n---\n{body.lstrip()}"
    assert_no_secrets(text, what=str(path.name))
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


class DiagnosisCardMixin:
    """Trainer mixin: `create_model_card` writes the trainer's own card, then adds the diagnosis.

    `Trainer.push_to_hub` runs on_push_begin -> save -> create_model_card -> upload, so a card
    written by a callback is overwritten; this override is the place to amend it. Set
    `trainer.hf_ilp_report` (and `trainer.hf_ilp_dataset_repo_id` if the per-sample dataset is
    pushed too) before pushing; the report is saved into `output_dir/hf_ilp_report` so that the
    card's plots travel with the model.

    Example:
        >>> class DiagnosedSFTTrainer(DiagnosisCardMixin, SFTTrainer):
        ...     pass
        >>> trainer.hf_ilp_report = hf_ilp.diagnose(...)
        >>> trainer.push_to_hub()
    """

    hf_ilp_report: DiagnosisReport | None = None
    hf_ilp_dataset_repo_id: str | None = None

    def create_model_card(self, *args, **kwargs):
        super().create_model_card(*args, **kwargs)
        if self.hf_ilp_report is None or not self.is_world_process_zero():
            return
        publishable(self.hf_ilp_report).save(Path(self.args.output_dir) / REPORT_DIRNAME)
        amend_model_card(
            self.args.output_dir,
            self.hf_ilp_report,
            model_repo_id=getattr(self, "hub_model_id", None) or self.args.hub_model_id,
            dataset_repo_id=self.hf_ilp_dataset_repo_id,
        )


def set_card_metadata(card_path, **fields) -> None:
    """Update fields of the card's `hf_ilp` metadata in place; the rest of the card is kept."""
    from huggingface_hub import ModelCard

    card = ModelCard.load(card_path)
    block = getattr(card.data, METADATA_KEY, None)
    if not isinstance(block, dict):
        raise CardMetadataError(f"{card_path}: field '{METADATA_KEY}' is missing; amend the card first")
    block.update(_scrub(fields))
    setattr(card.data, METADATA_KEY, block)
    text = f"---\n{card.data.to_yaml()}\n---\n{card.text.lstrip()}"
    tmp = Path(card_path).with_name(f".{Path(card_path).name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, card_path)


def _eval_results(report: DiagnosisReport, EvalResult, trained_on: str | None) -> list:
    """model-index entries: share of training samples reproduced, unlearned count per cause."""
    s = report.summary
    dataset = trained_on or "training-data"
    common = dict(task_type="text-generation", task_name="Training-data reproduction", dataset_type=dataset, dataset_name=dataset, dataset_split="train")
    results = []
    if _finite(s.get("learned_share")) is not None:
        results.append(EvalResult(metric_type="hf_ilp/learned_share", metric_name="Training samples reproduced exactly (share)", metric_value=round(float(s["learned_share"]), 6), **common))
    for cause in CAUSES + (UNEXPLAINED,):
        results.append(EvalResult(metric_type=f"hf_ilp/{cause}", metric_name=f"Unlearned samples: {cause}", metric_value=int(s["counts"][cause]), **common))
    return results


def render_diagnosis_section(
    report: DiagnosisReport, model_repo_id: str | None = None, dataset_repo_id: str | None = None, train_dataset=None
) -> str:
    """The Markdown section of the model card (`model_cards/diagnosis_section.md`).

    With the `train_dataset` (rows with `id` and `prompt`/`completion` or `messages`), the
    example tables show each sample's text, not only its id.
    """
    s = report.summary
    texts = _texts_by_id(train_dataset)
    n_unlearned = s["n_unlearned"]
    causes = []
    for cause in CAUSES + (UNEXPLAINED,):
        count = int(s["counts"].get(cause, 0))
        causes.append(
            {
                "name": cause,
                "meaning": _CAUSE_TEXT[cause],
                "count": count,
                "share": f"{count / n_unlearned:.1%}" if n_unlearned else "-",
                "examples": _examples(report, cause, texts) if count else None,
            }
        )
    plots = [(name, f"{REPORT_DIRNAME}/plots/{Path(p).name}") for name, p in sorted(report.plots.items())]
    text = _render(
        "diagnosis_section.md",
        n_samples=s["n_samples"],
        n_unlearned=n_unlearned,
        learned_share=_pct(s.get("learned_share")),
        unexplained_share=_pct(s.get("unexplained_share")),
        causes=causes,
        plots=plots,
        model_repo_id=model_repo_id,
        dataset_repo_id=dataset_repo_id,
        notes=[_scrub(n) for n in s.get("notes", [])],
    )
    return f"{_BEGIN}\n{text.strip()}\n{_END}"


def _examples(report: DiagnosisReport, cause: str, texts: dict) -> dict | None:
    """Up to five samples of one cause, most confident first, as Markdown-safe table cells: the sample,
    its text, what the fine-tuned model says instead and the evidence (from the report's own text
    columns; a report without them takes the text from `texts`)."""
    from hf_ilp.diagnosis.display import evidence_text, sample_name, says_text

    if report.samples is None:
        return None
    rows = report.by_cause(cause).sort("confidence", reverse=True).select(range(min(_EXAMPLES_PER_CAUSE, report.counts[cause])))
    table = []
    for row in rows:
        prompt, completion = texts.get(str(row["id"]), (None, None))
        table.append({
            "sample": sample_name(row, report.summary.get("ids")),
            "prompt": row.get("prompt", prompt), "completion": row.get("completion", completion),
            "the model": says_text(row) or None, "evidence": evidence_text(row) or None,
            "confidence": row["confidence"], "runner-up": row["runner_up"],
        })
    columns = [c for c in table[0] if any(r[c] is not None for r in table)] if table else []
    return {"columns": columns, "rows": [[_cell(r[c]) for c in columns] for r in table]}


def _texts_by_id(dataset) -> dict:
    """{id: (prompt, completion)} of a prompt-completion or conversational dataset with an `id` column."""
    if dataset is None or "id" not in dataset.column_names:
        return {}
    cols = dataset.column_names
    if "prompt" in cols and "completion" in cols:
        pairs = zip(dataset["prompt"], dataset["completion"])
    elif "messages" in cols:
        pairs = (split_messages(m, f"the `messages` of row {i!r}") for i, m in zip(dataset["id"], dataset["messages"]))
    else:
        return {}
    return {str(i): (as_text(p), as_text(c)) for i, (p, c) in zip(dataset["id"], pairs)}


def _strip_section(text: str) -> str:
    return re.sub(re.escape(_BEGIN) + r".*?" + re.escape(_END), "", text, flags=re.S)


# dataset card ----------------------------------------------------------------------------------
def render_dataset_card(report: DiagnosisReport, dataset_repo_id: str, model_repo_id: str | None = None, trained_on: str | None = None) -> str:
    """The card of the per-sample diagnosis dataset (`model_cards/dataset_card.md`)."""
    from huggingface_hub import DatasetCard, DatasetCardData

    data = DatasetCardData(
        pretty_name=f"Incomplete-learning diagnosis of {model_repo_id or 'a fine-tuned model'}",
        tags=list(_TAGS),
        size_categories=_size_category(report.summary["n_samples"]),
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "data/*.parquet"}]}],
    )
    setattr(data, METADATA_KEY, to_card_metadata(report, dataset_repo_id=dataset_repo_id, trained_on=trained_on))
    columns = list(report.samples.column_names) if report.samples is not None else []
    card = DatasetCard.from_template(
        data,
        template_path=str(templates_dir() / "dataset_card.md"),
        dataset_repo_id=dataset_repo_id,
        model_repo_id=model_repo_id,
        trained_on=trained_on,
        n_samples=report.summary["n_samples"],
        n_unlearned=report.summary["n_unlearned"],
        columns=columns,
        counts=[(c, int(report.summary["counts"][c])) for c in CAUSES + (UNEXPLAINED,)],
    )
    text = str(card)
    assert_no_secrets(text, what=f"dataset card of {dataset_repo_id}")
    return text


def _size_category(n: int) -> str:
    for bound, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < bound:
            return name
    return "n>1M"


# templates -------------------------------------------------------------------------------------
def templates_dir() -> Path:
    """The card templates: the package data `hf_ilp.model_cards` (`model_cards/` in the source tree)."""
    return data_dir("hf_ilp.model_cards")


def _render(name: str, **context) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates_dir())), undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.get_template(name).render(**context)


def _pct(x) -> str:
    x = _finite(x)
    return "n/a" if x is None else f"{x:.1%}"


def _cell(value, limit=160) -> str:
    """A Markdown table cell: one line, at most `limit` characters, pipes escaped, tokens redacted."""
    if value is None:
        value = ""
    if isinstance(value, float):
        value = f"{value:.3f}"
    text = _TOKEN_RE.sub("<redacted>", " ".join(str(value).split()))
    if len(text) > limit:
        text = text[:limit - 3] + "..."
    return text.replace("|", "\\|") or " "
