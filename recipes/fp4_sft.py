"""Supervised fine-tuning with FP4 (E2M1) fake-quantized linears and Half-S scaling.

Runs on the embedded ILP-World with no arguments, or on any Hub model and dataset by flag:

    accelerate launch recipes/fp4_sft.py                     # ILP-World (tiny), --fp4 halfs
    accelerate launch recipes/fp4_sft.py --fp4 max           # max-scaling baseline
    accelerate launch recipes/fp4_sft.py --fp4 none          # full precision
    accelerate launch recipes/fp4_sft.py --config recipes/configs/fp4_sft.yaml \\
        --model_name_or_path Qwen/Qwen2.5-0.5B --dataset_name trl-lib/Capybara --bf16 true

The linears (all but the first, the last and the LM head) are swapped for `FP4Linear` by
`HalfSFP4TrainerMixin` before the Trainer's `accelerator.prepare`. The saved model is a plain
full-precision checkpoint (the quantization is simulated in training only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from trl import ModelConfig, ScriptArguments, SFTConfig, SFTTrainer, TrlParser, get_peft_config

from hf_ilp.recipes import load_model_and_tokenizer, parse_recipe_args, recipe_config, recipe_logger
from hf_ilp.training import save_final_model
from hf_ilp.files import write_json_atomic
from hf_ilp.fp4 import FP4Linear, HalfSConfig, HalfSFP4TrainerMixin, backends


log = recipe_logger("fp4_sft")

@dataclass
class FP4ScriptArguments(ScriptArguments):
    """Data and FP4 options; without `--dataset_name` the embedded ILP-World is used."""

    fp4: str = field(
        default="halfs",
        metadata={"help": "Scaling of weights and activations: 'halfs', 'max', 'half', 'mse', or "
                  "'none' (no FP4).", "choices": ["halfs", "max", "half", "mse", "none"]},
    )
    fp4_group_size: int = field(
        default=32, metadata={"help": "FP4 scaling group: block size (16, 32), -1 row, 0 tensor."}
    )
    ilp_world_size: str = field(
        default="tiny",
        metadata={"help": "ILP-World size when no dataset is given. (old name, deprecated: --world_size)", "aliases": ["--world_size"]},
    )
    world_seed: int = field(default=0, metadata={"help": "ILP-World seed when no dataset is given."})


class FP4SFTTrainer(HalfSFP4TrainerMixin, SFTTrainer):
    """`SFTTrainer` whose linears train in FP4 (`fp4_config`)."""


def _load(script_args: FP4ScriptArguments, training_args, model_args: ModelConfig):
    if script_args.dataset_name is None:
        from hf_ilp.world import build_world

        log.info(f"ILP-World '{script_args.ilp_world_size}' (seed {script_args.world_seed})")
        world = build_world(script_args.ilp_world_size, seed=script_args.world_seed)
        keep = ["prompt", "completion"]
        return (world.load_base_model(), world.tokenizer, world.train.select_columns(keep),
                world.validation.select_columns(keep))
    from datasets import load_dataset

    if model_args.model_name_or_path is None:
        raise ValueError("fp4_sft: --dataset_name needs --model_name_or_path (a Hub id or a local folder)")
    data = load_dataset(script_args.dataset_name, name=script_args.dataset_config)
    model, tokenizer = load_model_and_tokenizer(model_args, training_args)
    return (model, tokenizer, data[script_args.dataset_train_split],
            data.get(script_args.dataset_test_split))


def main(script_args: FP4ScriptArguments, training_args: SFTConfig, model_args: ModelConfig):
    model, tokenizer, train, validation = _load(script_args, training_args, model_args)
    fp4_config = None
    if script_args.fp4 != "none":
        fp4_config = HalfSConfig(mode=script_args.fp4, group_size=script_args.fp4_group_size)
        log.info(f"FP4 kernels: {backends()}")
    trainer = FP4SFTTrainer(
        model=model, args=training_args, train_dataset=train,
        eval_dataset=validation if training_args.eval_strategy != "no" else None,
        processing_class=tokenizer, peft_config=get_peft_config(model_args), fp4_config=fp4_config,
    )
    n_fp4 = sum(isinstance(m, FP4Linear) for m in trainer.model.modules())
    log.info(f"--fp4 {script_args.fp4}: {n_fp4} linears in FP4")
    result = trainer.train()
    out = Path(training_args.output_dir)
    summary = {
        "fp4": script_args.fp4, "group_size": script_args.fp4_group_size, "fp4_linears": n_fp4,
        "train_loss": result.training_loss, "global_step": result.global_step,
        "final_logged_loss": next((h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h), None),
    }
    save_final_model(trainer, tokenizer, out / "final_model")
    if trainer.is_world_process_zero():
        write_json_atomic(out / "fp4_summary.json", summary)
        log.info(f"done: mean train loss {summary['train_loss']:.4f}, last logged loss "
              f"{summary['final_logged_loss']}, {n_fp4} FP4 linears ({script_args.fp4}); "
              f"model in {out / 'final_model'}")
    return summary


def make_parser(subparsers=None):
    dataclass_types = (FP4ScriptArguments, SFTConfig, ModelConfig)
    if subparsers is not None:
        return subparsers.add_parser("fp4_sft", help="SFT with Half-S FP4 linears", dataclass_types=dataclass_types)
    return TrlParser(dataclass_types)


if __name__ == "__main__":
    main(*parse_recipe_args(make_parser(), recipe_config("fp4_sft")))
