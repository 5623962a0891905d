"""Run the intervention for one cause: checks first, then one new, complete, saved output folder.

`intervene(cause, report, train_dataset, output_dir, ...)` validates everything it can before
training (the report describes this dataset, it flags samples with that cause, the knowledge
source finds documents, ...), then writes `output_dir` atomically:

    intervention.json   what ran: cause, method, settings, the input report's counts and
                        fingerprint, what was produced (relative paths), details, log history
    train_dataset/      the training set the new run used (`Dataset.save_to_disk`)
    cpt_corpus/         knowledge injection only: the continued pre-training mixture
    model/              the trained model (or PEFT adapter) and its tokenizer
    run/                the trainer's output folder (checkpoints removed; e.g. tracker records)

Inputs are never modified: models are deep-copied or loaded from their paths, datasets are new.

    result = intervene("forgetting", report, train, "out/intervention-forgetting",
                       base_model=base, model=sft_model, tokenizer=tok, args=sft_args)
    after = diagnose(result.model, base, tok, train, records_of(result.run_dir))
    print(before_after(report, after))
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from hf_ilp.files import atomic_dir
from hf_ilp.diagnosis.report import CAUSES, UNEXPLAINED
from hf_ilp.interventions._common import check_report_matches, fresh_model, require_flagged
from hf_ilp.interventions.base import Intervention, InterventionInputs
from hf_ilp.interventions.config import InterventionConfig


@dataclass
class InterventionResult:
    """What `intervene` produced: the output folder, its manifest and the trained model in memory."""

    cause: str
    path: Path
    manifest: dict
    model: Any = None

    @property
    def model_path(self) -> Path:
        return self.path / "model"

    @property
    def run_dir(self) -> Path:
        return self.path / "run"

    def load_train_dataset(self):
        from datasets import load_from_disk

        return load_from_disk(str(self.path / "train_dataset"))

    @property
    def removed_ids(self) -> list[str]:
        """Training rows the intervention took out of the data (the members a judge rejected)."""
        return [str(i) for i in self.manifest["details"].get("dropped", [])]

    def annotate(self, report, before=None) -> None:
        """Record in a (new) report's summary which intervention produced the model it describes,
        and, given the report `before` it, how far it confirmed that diagnosis (`confirmation`)."""
        report.summary["intervention"] = {"cause": self.cause, "method": self.manifest["method"],
                                          "path": str(self.path)}
        if before is not None:
            found = confirmation(before, report, self.cause, removed=self.removed_ids)
            report.summary["intervention"]["confirmation"] = {k: v for k, v in found.items() if not k.endswith("_ids")}


def report_fingerprint(report) -> str:
    """A short hash of a report's (id, learned, cause) rows: names the exact diagnosis an output came from."""
    h = hashlib.sha256()
    for row in report.samples.select_columns(["id", "learned", "cause"]):
        h.update(f"{row['id']}\t{row['learned']}\t{row['cause']}\n".encode())
    return h.hexdigest()[:16]


def before_after(before, after) -> list[dict]:
    """Unlearned count per cause before and after, side by side (rows: cause, before, after, change)."""
    rows = []
    for cause in CAUSES + (UNEXPLAINED,):
        b, a = before.counts.get(cause, 0), after.counts.get(cause, 0)
        rows.append({"cause": cause, "before": b, "after": a, "change": a - b})
    b, a = before.summary["n_unlearned"], after.summary["n_unlearned"]
    rows.append({"cause": "total", "before": b, "after": a, "change": a - b})
    return rows


def confirmation(before, after, cause: str, removed: Sequence[str] = ()) -> dict:
    """How far fixing `cause` confirmed its diagnosis, sample by sample.

    Of the samples the report `before` attributed to `cause`: `fixed` are learned in `after` (the
    diagnosis of the model the intervention produced, on the same data), `unfixed` are still
    unlearned (`still`: what `after` now attributes them to), `removed` left the training data
    (e.g. the members a judge rejected; no longer a sample to learn). `fixed_share` is fixed over
    flagged minus removed (NaN when nothing is left). The `*_ids` lists name the samples.
    """
    if cause not in CAUSES:
        raise ValueError(f"unknown cause {cause!r}; expected one of {CAUSES}")
    flagged = [str(i) for i in before.by_cause(cause)["id"]]
    gone = {str(i) for i in removed}
    verdict = {str(i): (bool(learned), c) for i, learned, c in zip(after.samples["id"], after.samples["learned"],
                                                                    after.samples["cause"])}
    absent = [i for i in flagged if i not in gone and i not in verdict]
    if absent:
        raise ValueError(f"the report after the intervention lacks {len(absent)} of the samples flagged before "
                         f"(e.g. {absent[:3]}); diagnose the new model on the same training data")
    fixed = [i for i in flagged if i not in gone and verdict[i][0]]
    unfixed = [i for i in flagged if i not in gone and not verdict[i][0]]
    removed_ids = [i for i in flagged if i in gone]
    kept = len(flagged) - len(removed_ids)
    return {"cause": cause, "flagged": len(flagged), "fixed": len(fixed), "unfixed": len(unfixed),
            "removed": len(removed_ids), "fixed_share": len(fixed) / kept if kept else math.nan,
            "still": dict(Counter(verdict[i][1] for i in unfixed)),
            "fixed_ids": fixed, "unfixed_ids": unfixed, "removed_ids": removed_ids}


def _is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


@contextlib.contextmanager
def _scratch_dir():
    """A throw-away folder for the outputs of a non-main process (the main one publishes)."""
    with tempfile.TemporaryDirectory(prefix="hf_ilp-intervention-") as tmp:
        yield Path(tmp)


@functools.cache
def _interventions() -> dict[str, Intervention]:
    """Each cause's `Intervention` (one per module: adding a cause is adding its module and a line here)."""
    from hf_ilp.interventions.forgetting import ForgettingIntervention
    from hf_ilp.interventions.inconsistency import InconsistencyIntervention
    from hf_ilp.interventions.knowledge import KnowledgeIntervention
    from hf_ilp.interventions.under_training import UnderTrainingIntervention

    found = (KnowledgeIntervention(), InconsistencyIntervention(), ForgettingIntervention(), UnderTrainingIntervention())
    return {cause: intervention for intervention in found for cause in intervention.causes}


#: Causes whose intervention continues the fine-tuned model instead of a new run from the base.
CONTINUATIONS = tuple(cause for cause, i in _interventions().items() if i.continues_fine_tuned)


def intervene(
    cause: str,
    report,
    train_dataset,
    output_dir,
    *,
    base_model,
    tokenizer,
    args,
    model=None,
    eval_dataset=None,
    knowledge_source=None,
    general_texts: Sequence[str] | None = None,
    judge: Callable | str | None = None,
    peft_config=None,
    callbacks: Sequence = (),
    config: InterventionConfig | None = None,
) -> InterventionResult:
    """Apply the intervention for `cause` and save a new run in `output_dir` (see the module doc).

    Args:
        cause: one of `CAUSES`.
        report: the `DiagnosisReport` made on `train_dataset`.
        train_dataset: the SFT data the report describes (`id`, `prompt`, `completion`, opt. `stage`).
        base_model: the pre-trained model (object or path); new SFT runs start from it.
        tokenizer, args: the tokenizer and the `SFTConfig` of the original run; each new run
            copies `args` with its own `output_dir`.
        model: the fine-tuned model (object or path; a PEFT adapter folder loads trainable);
            under_training continues from it.
        eval_dataset: validation rows for under_training's early stopping.
        knowledge_source: a `KnowledgeSource` for the knowledge causes; `general_texts` the
            general corpus (default: the source's own texts).
        judge: who decides a conflicting group under `config.inconsistency_strategy="resolve"` (the
            default): None (default) for the base model's likelihood (`likelihood_judge`, margin
            `config.inconsistency_margin`), "majority", or a callable `(prompt, completions) -> index | None`
            (see `resolve_conflicts`). Groups it cannot decide are bucketed.
        peft_config: train a PEFT adapter (e.g. `LoraConfig`) instead of all weights.
        callbacks: extra callbacks for the new SFT run (e.g. a fresh `LearnTracker`).
    """
    interventions = _interventions()
    if cause not in interventions:
        raise ValueError(f"unknown cause {cause!r}; expected one of {tuple(interventions)}")
    config = config or InterventionConfig()
    config.validate()  # also refused when built; again here for a config changed since
    if not (judge is None or judge == "majority" or callable(judge)):
        raise ValueError(f"judge must be None (the base model's likelihood), 'majority' or a callable "
                         f"(prompt, completions) -> index | None, got {judge!r}")
    check_report_matches(report, train_dataset, "train_dataset")
    flagged = require_flagged(report, [cause])
    intervention = interventions[cause]
    inputs = InterventionInputs(
        cause=cause, report=report, train=train_dataset, flagged=flagged, base_model=base_model, model=model,
        tokenizer=tokenizer, args=args, eval_dataset=eval_dataset, knowledge_source=knowledge_source,
        general_texts=general_texts, judge=judge, peft_config=peft_config, callbacks=tuple(callbacks), config=config,
    )
    prepared = intervention.check(inputs)  # everything that can fail on bad input, before any output exists

    output_dir = Path(output_dir)
    from accelerate import PartialState

    state = PartialState()  # every process trains; only the main one publishes the folder
    place = atomic_dir(output_dir) if state.is_main_process else _scratch_dir()
    with place as tmp:
        run_args = dataclasses.replace(args, output_dir=str(tmp / "run"), save_strategy="no")
        method, details, used_train, trainer = intervention.run(inputs, prepared, tmp, run_args)
        used_train.save_to_disk(str(tmp / "train_dataset"))
        trained = trainer.model
        trained.save_pretrained(str(tmp / "model"))
        tokenizer.save_pretrained(str(tmp / "model"))
        for ckpt in (tmp / "run").rglob("checkpoint-*"):
            shutil.rmtree(ckpt, ignore_errors=True)
        outputs = {"train_dataset": "train_dataset", "model": "model", "run": "run"}
        if (tmp / "cpt_corpus").exists():
            outputs["cpt_corpus"] = "cpt_corpus"
        manifest = {
            "cause": cause,
            "method": method,
            "config": dataclasses.asdict(config),
            "input_report": {"fingerprint": report_fingerprint(report), "counts": report.counts,
                             "n_samples": report.summary.get("n_samples"), "flagged": len(flagged)},
            "inputs": {"train_rows": len(train_dataset), "peft": peft_config is not None or hasattr(trained, "peft_config")},
            "outputs": outputs,
            "details": details,
            "log_history": trainer.state.log_history,
        }
        (tmp / "intervention.json").write_text(json.dumps(manifest, indent=2, default=str))
    state.wait_for_everyone()
    return InterventionResult(cause=cause, path=output_dir, manifest=manifest, model=trained)


def intervene_and_rediagnose(causes: Sequence[str], report, train_dataset, output_dir, *, base_model, tokenizer, args,
                             probes=None, diagnoser_config=None, tracker=None, **intervene_kwargs) -> dict:
    """For each cause: `intervene`, then diagnose the new model on the same `train_dataset`; the new
    report is saved in `<run>/report` and records the intervention that produced it and how far it
    confirmed the diagnosis (`confirmation`). Returns `{cause: (InterventionResult, DiagnosisReport)}`.

    A new run from the base model gets a fresh `LearnTracker`. under_training continues the
    fine-tuned model: pass the `tracker` of the run that `report` diagnosed and a fork of it
    (`LearnTracker.fork`) records the extra epochs after that run's history, so the new diagnosis
    still sees the earlier stages (without it, only the extra epochs are on record).
    Every cause is checked first (a cause the report does not flag fails before any training).
    """
    from hf_ilp.diagnosis import diagnose
    from hf_ilp.tracking import LearnTracker

    causes = [c.strip() for c in causes if c.strip()]
    known = tuple(_interventions())
    unknown = [c for c in causes if c not in known]
    if unknown:
        raise ValueError(f"unknown cause(s) {unknown} to intervene on; expected some of {known}")
    check_report_matches(report, train_dataset, "train_dataset")
    for cause in causes:
        require_flagged(report, [cause])
    base = fresh_model(base_model)
    extra_callbacks = list(intervene_kwargs.pop("callbacks", ()))
    out = {}
    for cause in causes:
        continues = cause in CONTINUATIONS and tracker is not None
        recorder = tracker.fork() if continues else LearnTracker(dataset=train_dataset)
        result = intervene(cause, report, train_dataset, Path(output_dir) / f"intervention-{cause}",
                           base_model=base_model, tokenizer=tokenizer, args=args,
                           callbacks=[*extra_callbacks, recorder], **intervene_kwargs)
        after = diagnose(result.model, base, tokenizer, train_dataset, recorder.records, probes=probes,
                         config=diagnoser_config)
        result.annotate(after, before=report)
        if _is_main_process():
            after.save(result.path / "report")
        out[cause] = (result, after)
    return out


def format_before_after(before, afters: dict) -> str:
    """A plain-text table: unlearned count per cause before, and after each intervention; the last
    line says, per intervention, how many of the samples it targeted are now learned
    (`confirmation`: fixed / flagged, rows it removed from the data left out)."""
    causes = list(afters)
    head = f"{'cause':<20}{'before':>8}" + "".join(f"{'after ' + c[:14]:>22}" for c in causes)
    lines = [head, "-" * len(head)]
    tables = {c: {r["cause"]: r for r in before_after(before, rep)} for c, (_, rep) in afters.items()}
    for row in before_after(before, before):
        name = row["cause"]
        cells = "".join(f"{tables[c][name]['after']:>14} ({tables[c][name]['change']:+d})".rjust(22) for c in causes)
        lines.append(f"{name:<20}{row['before']:>8}{cells}")
    cells = ""
    for c, (result, rep) in afters.items():
        found = confirmation(before, rep, c, removed=result.removed_ids)
        cell = f"{found['fixed']}/{found['flagged'] - found['removed']}"
        cells += (cell + (f" ({found['fixed_share']:.0%})" if found["flagged"] > found["removed"] else "")).rjust(22)
    lines += ["-" * len(head), f"{'fixed / flagged':<28}{cells}"]
    return "\n".join(lines)
