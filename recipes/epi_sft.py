"""Multi-task SFT with Evolving Parameter Isolation (EPI), its static baseline, or none.

Runs on the embedded multi-task world with no arguments, or on any Hub model and dataset by flag:

    accelerate launch recipes/epi_sft.py                          # multi-task world (small), EPI
    accelerate launch recipes/epi_sft.py --isolation static       # mask computed once at step K
    accelerate launch recipes/epi_sft.py --isolation none         # plain SFT
    accelerate launch recipes/epi_sft.py --isolation_ratio 0.1 --isolation_interval 50
    accelerate launch recipes/epi_sft.py --model_name_or_path Qwen/Qwen2.5-0.5B \\
        --dataset_name trl-lib/Capybara --bf16 true --use_peft --lora_r 16

Every K optimizer steps the top share p of trainable entries by importance (EMA of squared
gradients, AdamW's own `exp_avg_sq`, normalized within each tensor) is isolated: those entries do
not move until a later update releases them. The final masks are saved beside the model
(`isolation_masks.safetensors`); on the multi-task world the per-task exact-match accuracy is
printed and written to `epi_summary.json`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from trl import ModelConfig, ScriptArguments, SFTConfig, SFTTrainer, TrlParser, get_peft_config

from hf_ilp.recipes import load_model_and_tokenizer, parse_recipe_args, recipe_config, recipe_logger
from hf_ilp.training import save_final_model
from hf_ilp.files import write_json_atomic
from hf_ilp.isolation import EvolvingIsolationCallback, IsolationConfig


log = recipe_logger("epi_sft")

@dataclass
class EPIScriptArguments(ScriptArguments):
    """Data options; without `--dataset_name` the embedded multi-task world is used."""

    multitask_world_size: str = field(
        default="small",
        metadata={"help": "Multi-task world size ('tiny' or 'small') when no dataset is given. (old name, deprecated: --world_size)", "aliases": ["--world_size"]},
    )
    world_seed: int = field(default=0, metadata={"help": "Multi-task world seed when no dataset is given."})
    world_version: int = field(
        default=2, metadata={"help": "Multi-task world version when no dataset is given: 2 (four skills, the default) or 1 (one input format)."}
    )


@dataclass
class EPISFTConfig(SFTConfig, IsolationConfig):
    """`SFTConfig` plus the isolation fields (`isolation`, `isolation_ratio`, `isolation_interval`, ...)."""

    def __post_init__(self):
        SFTConfig.__post_init__(self)
        IsolationConfig.__post_init__(self)


def _load(script_args: EPIScriptArguments, training_args, model_args: ModelConfig):
    if script_args.dataset_name is None:
        from hf_ilp.world import build_multitask_world

        log.info(f"multi-task world '{script_args.multitask_world_size}' (seed {script_args.world_seed})")
        world = build_multitask_world(script_args.multitask_world_size, seed=script_args.world_seed, version=script_args.world_version)
        return world.load_base_model(), world.tokenizer, world.train.select_columns(["prompt", "completion"]), world
    from datasets import load_dataset

    if model_args.model_name_or_path is None:
        raise ValueError("epi_sft: --dataset_name needs --model_name_or_path (a Hub id or a local folder)")
    data = load_dataset(script_args.dataset_name, name=script_args.dataset_config)
    model, tokenizer = load_model_and_tokenizer(model_args, training_args)
    return model, tokenizer, data[script_args.dataset_train_split], None


def main(script_args: EPIScriptArguments, training_args: EPISFTConfig, model_args: ModelConfig):
    model, tokenizer, train, world = _load(script_args, training_args, model_args)
    callbacks = []
    if training_args.isolation != "none":
        iso = IsolationConfig(**{k: getattr(training_args, k) for k in IsolationConfig.__dataclass_fields__})
        callbacks.append(EvolvingIsolationCallback(iso))
        log.info(f"isolation {iso.isolation}: p={iso.isolation_ratio}, K={iso.isolation_interval}, "
              f"importance {iso.isolation_importance}")
    trainer = SFTTrainer(model=model, args=training_args, train_dataset=train, processing_class=tokenizer,
                         peft_config=get_peft_config(model_args), callbacks=callbacks)
    result = trainer.train()
    out = Path(training_args.output_dir)
    summary = {"isolation": training_args.isolation, "train_loss": result.training_loss,
               "global_step": result.global_step}
    if callbacks:
        summary.update(isolated_share=callbacks[0].isolated_share(), mask_updates=callbacks[0].history)
    if world is not None:
        summary["accuracy"] = world.evaluate(trainer.model)
        summary["average"] = sum(summary["accuracy"].values()) / len(summary["accuracy"])
    save_final_model(trainer, tokenizer, out / "final_model", extra=callbacks[0].save if callbacks else None)
    if trainer.is_world_process_zero():
        write_json_atomic(out / "epi_summary.json", summary)
        acc = ", ".join(f"{t} {a:.2f}" for t, a in summary.get("accuracy", {}).items())
        log.info(f"done ({training_args.isolation}): train loss {result.training_loss:.4f}"
              + (f"; exact match per task: {acc}; average {summary['average']:.3f}" if acc else "")
              + f"; model in {out / 'final_model'}")
    return summary


def make_parser(subparsers=None):
    dataclass_types = (EPIScriptArguments, EPISFTConfig, ModelConfig)
    if subparsers is not None:
        return subparsers.add_parser("epi_sft", help="multi-task SFT with EPI", dataclass_types=dataclass_types)
    return TrlParser(dataclass_types)


if __name__ == "__main__":
    main(*parse_recipe_args(make_parser(), recipe_config("epi_sft")))
