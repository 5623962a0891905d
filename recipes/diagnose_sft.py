"""Fine-tune with TRL's SFTTrainer and count the training samples the model fails to reproduce.

With no arguments it runs on the embedded ILP-World (built, or loaded from its cache, offline),
where the five causes of incomplete learning are planted, and reports the unlearned samples per
planted cause; any Hub model and dataset work by flag:

    accelerate launch recipes/diagnose_sft.py                                   # ILP-World small
    accelerate launch recipes/diagnose_sft.py --ilp_world_size tiny --num_train_epochs 5
    accelerate launch recipes/diagnose_sft.py --model_name_or_path Qwen/Qwen2.5-0.5B \\
        --dataset_name trl-lib/tldr --bf16 true

Data with a `stage` column is fine-tuned stage after stage (`hf_ilp.training.train_stages`), as
sequential fine-tuning is where left-side forgetting happens. Without a GPU, bf16 and activation
(gradient) checkpointing are off unless asked for. The model is saved to
`<output_dir>/final_model`, the per-sample `LearnTracker` records to `<output_dir>/hf_ilp_records`,
the diagnosis (`hf_ilp.diagnose`: a cause per unlearned sample) to `<output_dir>/diagnosis` and the
counts to `<output_dir>/diagnose_summary.json`. `final_model/` gets a model card with the diagnosis;
with `--push_to_hub --hub_model_id USER/NAME` it goes to the Hub, and the per-sample diagnosis to
the dataset `USER/NAME-ilp-diagnosis` (a failed push is retried later with
`hf-ilp push <output_dir>/final_model`).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

from accelerate import PartialState
from trl import ModelConfig, ScriptArguments, SFTConfig, TrlParser, get_peft_config

from hf_ilp.files import write_json_atomic
from hf_ilp.diagnosis import DiagnoserConfig, across_processes, diagnose, log_report
from hf_ilp.diagnosis.display import print_summary
from hf_ilp.hub import publish_run, take_hub_settings
from hf_ilp.recipes import load_model_and_tokenizer, parse_recipe_args, prefixed_arguments, recipe_config, recipe_logger
from hf_ilp.training import save_final_model, train_stages
from hf_ilp.tracking import LearnTracker, LearnTrackerConfig
from hf_ilp.world.evaluate import unlearned_by_cause


@dataclass
class DiagnoseScriptArguments(ScriptArguments):
    """Data options; without `--dataset_name` the embedded ILP-World is used."""

    ilp_world_size: str = field(
        default="small",
        metadata={"help": "ILP-World size ('tiny' or 'small') when no dataset is given. (old name, deprecated: --world_size)", "aliases": ["--world_size"]},
    )
    world_seed: int = field(default=0, metadata={"help": "ILP-World seed when no dataset is given."})
    world_cache_dir: str | None = field(
        default=None, metadata={"help": "ILP-World cache folder (default: $HF_ILP_CACHE or ~/.cache/hf_ilp)."}
    )
    intervene: str | None = field(
        default=None, metadata={"help": "Comma-separated causes to fix after the diagnosis (e.g. "
                                        "'missing_knowledge,forgetting'): one new run and a new diagnosis per cause, "
                                        "shown before/after (hf_ilp.interventions)."})
    knowledge_corpus: str | None = field(
        default=None, metadata={"help": "Dataset (Hub id or folder) with a 'text' column searched by BM25 for the "
                                        "knowledge interventions (default on ILP-World: the world's documents)."})


# every LearnTrackerConfig and DiagnoserConfig field as a flag and YAML key: --tracker_every_n_steps,
# --diagnosis_encoder, ... (prefixed: both configs have a batch_size)
TrackerArguments = prefixed_arguments(LearnTrackerConfig, "tracker_", "TrackerArguments")
DiagnosisArguments = prefixed_arguments(DiagnoserConfig, "diagnosis_", "DiagnosisArguments")


log = recipe_logger("diagnose_sft")
_say = log.info  # one line per run, from the main process


def load_data(script_args: DiagnoseScriptArguments, training_args: SFTConfig, model_args: ModelConfig):
    """(model, tokenizer, train dataset, world or None): ILP-World by default, else the Hub model and dataset."""
    world = None
    if script_args.dataset_name is None:
        from hf_ilp.world import build_world

        _say(f"ILP-World '{script_args.ilp_world_size}' (seed {script_args.world_seed}): building or loading from cache")
        world = build_world(script_args.ilp_world_size, seed=script_args.world_seed, cache_dir=script_args.world_cache_dir)
        train = world.train
        _say(f"ILP-World ready at {world.path}: {len(train)} training samples in stages {sorted(set(train['stage']))}")
    else:
        from datasets import load_dataset

        if getattr(script_args, "dataset_streaming", False):
            raise ValueError("diagnose_sft: --dataset_streaming is not supported: the diagnosis scores every row, so "
                             "the dataset must be listed; drop the flag (rows are still loaded lazily from disk)")
        data = load_dataset(script_args.dataset_name, name=script_args.dataset_config)
        if script_args.dataset_train_split not in data:
            raise ValueError(
                f"diagnose_sft: dataset {script_args.dataset_name!r} has no split {script_args.dataset_train_split!r}; "
                f"choose --dataset_train_split among {sorted(data)}"
            )
        train = data[script_args.dataset_train_split]
    columns = set(train.column_names)
    if not ({"prompt", "completion"} <= columns or "messages" in columns):
        raise ValueError(
            f"diagnose_sft: the training data has columns {sorted(columns)}; the diagnosis needs prompt-completion "
            "rows ('prompt' and 'completion') or conversations ('messages'). Nothing was trained."
        )
    if model_args.model_name_or_path is None:
        if world is None:
            raise ValueError("diagnose_sft: --dataset_name needs --model_name_or_path (a Hub id or a local folder)")
        return world.load_base_model(), world.tokenizer, train, world
    model, tokenizer = load_model_and_tokenizer(model_args, training_args)
    return model, tokenizer, train, world


def main(script_args: DiagnoseScriptArguments, training_args: SFTConfig, model_args: ModelConfig,
         tracker_args=None, diagnosis_args=None) -> dict:
    model, tokenizer, train, world = load_data(script_args, training_args, model_args)
    tracker_config = tracker_args.config() if tracker_args is not None else LearnTrackerConfig()
    diagnoser_config = diagnosis_args.config() if diagnosis_args is not None else DiagnoserConfig()
    records_dir = Path(tracker_config.records_dir or Path(training_args.output_dir) / "hf_ilp_records")
    tracker = LearnTracker(dataset=train, config=dataclasses.replace(tracker_config, records_dir=str(records_dir)))
    callbacks = [tracker]
    hub = take_hub_settings(training_args)  # no Trainer push while training: one push at the end, with the diagnosis
    _say(f"fine-tuning for {training_args.num_train_epochs:g} epoch(s) per stage, lr {training_args.learning_rate:g}")
    trainer = train_stages(
        model, tokenizer, train, training_args, callbacks=callbacks, peft_config=get_peft_config(model_args)
    )
    out = Path(training_args.output_dir)
    summary = {"output_dir": str(out), "n_train": len(train), "records": str(records_dir)}
    # the tracker's final observation is hf_ilp.check_learned on the final weights
    flags = tracker.records["final_exact"]
    summary["n_unlearned"] = len(flags) - sum(flags)
    if world is not None:  # ILP-World only: its ground truth is shown because it is the demo
        summary["unlearned_by_planted_cause"] = unlearned_by_cause(train, flags)
    # the diagnosis, one cause per unlearned sample: every process runs it, its forwards split between them
    if hasattr(trainer.model, "disable_adapter"):  # LoRA: the base is the model with its adapters off
        base = None
    elif model_args.model_name_or_path is not None:  # the model the run started from
        base = load_model_and_tokenizer(model_args, training_args)[0].to(trainer.model.device)
    else:
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(world.base_model_path, dtype=model_args.dtype).to(trainer.model.device)
    _say("diagnosing the unlearned samples (hf_ilp.diagnose)")
    with across_processes():
        report = diagnose(trainer.model, base, tokenizer, train, tracker.records,
                          probes=world.probes if world is not None else None, config=diagnoser_config)
    summary["diagnosis"] = str(out / "diagnosis")
    if trainer.is_world_process_zero():
        report.save(out / "diagnosis")
        print_summary(report)
        logged = log_report(report, trainer, max_rows=tracker_config.log_samples).get("backends")
        if logged:
            _say(f"diagnosis sent to {', '.join(logged)} (report_to)")
    save_final_model(trainer, tokenizer, out / "final_model")
    if trainer.is_world_process_zero():
        write_json_atomic(out / "diagnose_summary.json", summary)
        _print_summary(summary)
        # model card with the diagnosis in final_model/; pushed with --push_to_hub
        trained_on = script_args.dataset_name or f"ilp-world-{script_args.ilp_world_size}-seed{script_args.world_seed}"
        pushed = publish_run(trainer, report, hub, trained_on=trained_on, train_dataset=train, folder=out / "final_model")
        if pushed is not None:
            _say(f"pushed model {pushed.model_repo_id} and diagnosis dataset {pushed.dataset_repo_id}")
    if script_args.intervene:  # causal tests: fix each diagnosed cause, re-run, re-diagnose
        summary["interventions"] = _intervene(script_args, training_args, model_args, trainer, tracker, tokenizer, train,
                                              world)
        if trainer.is_world_process_zero():
            write_json_atomic(out / "diagnose_summary.json", summary)
    return summary


def _intervene(script_args, training_args, model_args, trainer, tracker, tokenizer, train, world) -> dict:
    """Run `hf_ilp.interventions` for the requested causes and print the diagnosis before and after."""
    from hf_ilp.diagnosis.report import DiagnosisReport
    from hf_ilp.interventions import BM25KnowledgeSource, format_before_after, intervene_and_rediagnose

    out = Path(training_args.output_dir)
    PartialState().wait_for_everyone()  # the diagnosis is written by the main process
    before = DiagnosisReport.load(out / "diagnosis")
    causes = script_args.intervene.split(",")
    source = eval_dataset = None
    if script_args.knowledge_corpus:
        from datasets import load_dataset, load_from_disk

        corpus = (load_from_disk(script_args.knowledge_corpus) if Path(script_args.knowledge_corpus).is_dir()
                  else load_dataset(script_args.knowledge_corpus, split="train"))
        source = BM25KnowledgeSource(corpus["text"])
    elif world is not None:
        source = world.knowledge_source()
    if world is not None:
        eval_dataset = world.stopping_validation()
    elif script_args.dataset_test_split and training_args.eval_strategy != "no":
        from datasets import load_dataset

        eval_dataset = load_dataset(script_args.dataset_name, name=script_args.dataset_config,
                                    split=script_args.dataset_test_split)
    _say(f"intervening on {', '.join(causes)}: a new run and a new diagnosis per cause")
    afters = intervene_and_rediagnose(
        causes, before, train, out / "interventions", base_model=model_args.model_name_or_path or world.base_model_path,
        model=trainer.model, tokenizer=tokenizer, args=training_args, eval_dataset=eval_dataset,
        knowledge_source=source, general_texts=world.corpus["text"] if world is not None else None,
        peft_config=get_peft_config(model_args), probes=world.probes if world is not None else None, tracker=tracker)
    if trainer.is_world_process_zero():
        print(format_before_after(before, afters))
        _say(f"intervention runs and their diagnoses in {out / 'interventions'}")
    return {cause: {"path": str(result.path), "method": result.manifest["method"], "counts_after": after.counts,
                    "confirmation": after.summary["intervention"]["confirmation"]}
            for cause, (result, after) in afters.items()}


def _print_summary(summary: dict) -> None:
    if "n_unlearned" in summary:
        share = summary["n_unlearned"] / max(summary["n_train"], 1)
        _say(f"the model fails to reproduce {summary['n_unlearned']} of {summary['n_train']} training samples ({share:.1%})")
    by_cause = summary.get("unlearned_by_planted_cause")
    if by_cause:
        print(f"{'planted cause':<22}{'unlearned':>10}{'total':>8}")
        for cause, counts in by_cause.items():
            print(f"{cause or '(normal)':<22}{counts['unlearned']:>10}{counts['total']:>8}")
    _say(f"model, stage outputs and diagnose_summary.json in {summary['output_dir']}")


def make_parser(subparsers=None):
    dataclass_types = (DiagnoseScriptArguments, SFTConfig, ModelConfig, TrackerArguments, DiagnosisArguments)
    if subparsers is not None:
        parser = subparsers.add_parser("diagnose_sft", help="SFT and unlearned-sample count", dataclass_types=dataclass_types)
    else:
        parser = TrlParser(dataclass_types)
    return parser


if __name__ == "__main__":
    hf_ilp_logger = logging.getLogger("hf_ilp")  # progress of the world build
    hf_ilp_logger.setLevel(logging.INFO)
    hf_ilp_logger.addHandler(logging.StreamHandler())
    main(*parse_recipe_args(make_parser(), recipe_config("diagnose_sft")))
