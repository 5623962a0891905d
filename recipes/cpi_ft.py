"""CPI-FT (Core Parameter Isolation Fine-Tuning) end to end: probes, cores, groups, fusion, pipelined SFT.

Runs on the embedded multi-task world with no arguments, or on any Hub model and datasets by flag:

    accelerate launch recipes/cpi_ft.py                                   # multi-task world (small)
    accelerate launch recipes/cpi_ft.py --multitask_world_size small --cpi_core_share 0.02
    accelerate launch recipes/cpi_ft.py --model_name_or_path Qwen/Qwen2.5-0.5B \\
        --task_datasets math=openai/gsm8k:main code=sahil2801/CodeAlpaca-20k --bf16 true
    accelerate launch recipes/cpi_ft.py --model_name_or_path ORG/MODEL --dataset_name ORG/MIXED \\
        --cpi_task_column task

Stages (each an `hf_ilp.fusion` function): one probe SFT per task (`output_dir/probe-<task>`),
core regions (top p% of |theta_task - theta_base|), Jaccard grouping, streaming fusion
(`output_dir/fused`, with a card saying what was fused), then `CPIFTTrainer` over the groups
(`output_dir/stage-K`) with earlier groups' cores frozen. The final model goes to
`output_dir/final_model`; on the multi-task world the per-task exact-match accuracy is printed.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from trl import ModelConfig, ScriptArguments, TrlParser

from hf_ilp.recipes import load_model_and_tokenizer, parse_recipe_args, recipe_config, recipe_logger
from hf_ilp.training import save_final_model
from hf_ilp.files import atomic_dir, write_json_atomic
from hf_ilp.fusion import CPIFTConfig, run_cpi_ft


@dataclass
class CPIFTScriptArguments(ScriptArguments):
    """Data options; without `--dataset_name` or `--task_datasets` the multi-task world is used."""

    task_datasets: list[str] = field(
        default_factory=list,
        metadata={"help": "One dataset per task as NAME=DATASET[:CONFIG] (repeatable, Hub ids or local); each "
                  "dataset's rows get task NAME. Alternative to --dataset_name with a task column."},
    )
    multitask_world_size: str = field(
        default="small",
        metadata={"help": "Multi-task world size when no dataset is given. (old name, deprecated: --world_size)", "aliases": ["--world_size"]},
    )
    world_seed: int = field(default=0, metadata={"help": "Multi-task world seed when no dataset is given."})
    world_version: int = field(
        default=2, metadata={"help": "Multi-task world version when no dataset is given: 2 (four skills, the default) or 1 (one input format)."}
    )


log = recipe_logger("cpi_ft")
_log = log.info


def _hub_data(script_args: CPIFTScriptArguments, column: str):
    from datasets import concatenate_datasets, load_dataset

    split = script_args.dataset_train_split
    if script_args.task_datasets:
        parts = []
        for item in script_args.task_datasets:
            name, sep, ref = item.partition("=")
            if not sep or not name or not ref:
                raise ValueError(f"--task_datasets expects NAME=DATASET[:CONFIG], got {item!r}")
            ds_id, _, config = ref.partition(":")
            ds = load_dataset(ds_id, name=config or None, split=split)
            if len(ds) == 0:
                raise ValueError(f"task {name!r}: dataset {ref} split {split!r} has no rows")
            parts.append(ds.add_column(column, [name] * len(ds)))
        return concatenate_datasets(parts)
    ds = load_dataset(script_args.dataset_name, name=script_args.dataset_config, split=split)
    if column not in ds.column_names:
        raise ValueError(f"dataset {script_args.dataset_name} has no task column {column!r} (columns: {ds.column_names}); "
                         "pass --cpi_task_column or use --task_datasets")
    return ds


def _base_folder(model_args: ModelConfig, training_args, out: Path) -> Path:
    """A local safetensors folder of the base model (saved once under output_dir/base if needed)."""
    path = Path(model_args.model_name_or_path)
    if path.is_dir() and (any(path.glob("*.safetensors"))):
        return path
    target = out / "base"
    if int(os.environ.get("RANK", "0")) == 0 and not (target / "config.json").exists():
        model, tokenizer = load_model_and_tokenizer(model_args, training_args)
        with atomic_dir(target) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    from accelerate import PartialState

    PartialState().wait_for_everyone()
    return target


def main(script_args: CPIFTScriptArguments, training_args: CPIFTConfig, model_args: ModelConfig):
    from transformers import AutoTokenizer

    fusion_log = logging.getLogger("hf_ilp.fusion")
    if not fusion_log.handlers and training_args.process_index == 0:  # show probe / stage progress
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("[cpi_ft] %(message)s"))
        fusion_log.addHandler(handler)
        fusion_log.setLevel(logging.INFO)

    out = Path(training_args.output_dir)
    world = None
    if script_args.dataset_name is None and not script_args.task_datasets:
        from hf_ilp.world import build_multitask_world

        _log(f"multi-task world '{script_args.multitask_world_size}' (seed {script_args.world_seed})")
        world = build_multitask_world(script_args.multitask_world_size, seed=script_args.world_seed, version=script_args.world_version)
        base, tokenizer, train, tasks = world.base_model_path, world.tokenizer, world.train, world.tasks
    else:
        if model_args.model_name_or_path is None:
            raise ValueError("cpi_ft: a dataset needs --model_name_or_path (a Hub id or a local folder)")
        train = _hub_data(script_args, training_args.cpi_task_column)
        base = _base_folder(model_args, training_args, out)
        tokenizer = AutoTokenizer.from_pretrained(base)
        tasks = None
    _log(f"{len(train)} training rows; p = {training_args.cpi_core_share}, tau = {training_args.cpi_jaccard_tau}, "
         f"t = {training_args.cpi_slerp_t}; probes, fusion and stages under {out}")
    trainer, fusion = run_cpi_ft(base, train, training_args, tokenizer, tasks=tasks)
    _log(f"groups {fusion.groups}; core overlaps {({k: round(v, 3) for k, v in fusion.overlaps.items()})}; "
         f"fused model in {out / 'fused'}")
    summary = {"groups": fusion.groups, "overlaps": fusion.overlaps, "core_entries": fusion.core_entries,
               "shared_core_entries": fusion.shared_core_entries}
    if world is not None:
        summary["accuracy"] = world.evaluate(trainer.model)
        acc = summary["accuracy"]
        summary["average"], summary["worst"] = sum(acc.values()) / len(acc), min(acc.values())
    save_final_model(trainer, tokenizer, out / "final_model")
    if trainer.is_world_process_zero():
        write_json_atomic(out / "cpi_ft_summary.json", summary)
        if "accuracy" in summary:
            _log(f"per-task exact match {summary['accuracy']}: average {summary['average']:.3f}, worst {summary['worst']:.3f}")
        _log(f"done: model in {out / 'final_model'}, summary in {out / 'cpi_ft_summary.json'}")
    return summary


def make_parser(subparsers=None):
    dataclass_types = (CPIFTScriptArguments, CPIFTConfig, ModelConfig)
    if subparsers is not None:
        return subparsers.add_parser("cpi_ft", help="CPI-FT: core parameter isolation fine-tuning", dataclass_types=dataclass_types)
    return TrlParser(dataclass_types)


if __name__ == "__main__":
    main(*parse_recipe_args(make_parser(), recipe_config("cpi_ft")))
