"""Sequential fine-tuning: one trainer per stage of the data, one model throughout.

Left-side forgetting (a cause of incomplete learning) exists only when a model is fine-tuned on
one dataset after another. `train_stages` is that protocol, written once for every part of
hf_ilp: the ILP-World recipe, the tests, the benchmarks and the interventions that compare
sequential with shuffled training.

    >>> from trl import SFTTrainer
    >>> trainer = train_stages(model, tokenizer, world.train, world.sft_config("out"), callbacks=[tracker])
    >>> trainer.model  # the model after the last stage
"""

import dataclasses
import os
import shutil
from pathlib import Path

from trl import SFTTrainer

from hf_ilp._io import move_into_place


def train_stages(
    model,
    processing_class,
    train_dataset,
    args,
    callbacks=(),
    eval_dataset=None,
    trainer_cls=SFTTrainer,
    peft_config=None,
):
    """Fine-tune `model` on each distinct `stage` of `train_dataset` in ascending order; return the last trainer.

    Every stage gets a fresh trainer (so a fresh optimizer and scheduler) on the same model and the
    same callback instances, with its outputs in `args.output_dir/stage-K`; callbacks therefore see
    one `on_train_begin`/`on_train_end` per stage and can tell stages apart by the trainer's
    `args.output_dir`. Without a `stage` column this is one ordinary training run in
    `args.output_dir`. `peft_config`, if given, wraps the model once, in the first stage.

    `args.resume_from_checkpoint` is honoured: a checkpoint path for a run without stages; `True`
    resumes every stage from the last checkpoint in its own folder (a finished stage from its
    final checkpoint, a stage with none from its start).
    """
    resume = getattr(args, "resume_from_checkpoint", None)
    resume = True if str(resume).lower() == "true" else resume  # `--resume_from_checkpoint true` parses as a string
    if "stage" not in train_dataset.column_names:
        return _train(trainer_cls, model, processing_class, train_dataset, args, callbacks, eval_dataset, peft_config,
                      resume)
    if resume not in (None, False, True):
        raise ValueError(
            f"resume_from_checkpoint={resume!r}: with a 'stage' column each stage has its own checkpoints "
            f"(output_dir/stage-K/checkpoint-N); pass True to resume every stage from its last one"
        )
    stages = sorted(set(train_dataset["stage"]))
    trainer = None
    for stage in stages:
        subset = train_dataset.filter(lambda s, k=stage: s == k, input_columns="stage")
        stage_args = dataclasses.replace(args, output_dir=os.path.join(args.output_dir, f"stage-{stage}"))
        stage_resume = _last_checkpoint(stage_args.output_dir) if resume else None
        trainer = _train(trainer_cls, model, processing_class, subset, stage_args, callbacks, eval_dataset, peft_config,
                         stage_resume)
        model, peft_config = trainer.model, None
    return trainer


def _last_checkpoint(folder):
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(folder) if os.path.isdir(folder) else None


def _train(trainer_cls, model, processing_class, train_dataset, args, callbacks, eval_dataset, peft_config, resume=None):
    kwargs = {"peft_config": peft_config} if peft_config is not None else {}
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processing_class,
        callbacks=list(callbacks),
        **kwargs,
    )
    trainer.train(resume_from_checkpoint=resume or None)
    return trainer


def save_final_model(trainer, processing_class, folder, extra=None) -> Path:
    """`trainer.save_model` and the tokenizer into `folder`, which appears only once complete.

    Every process must call it: under FSDP and DeepSpeed ZeRO-3 the weights are gathered
    collectively, then the main process writes them. `extra(tmp_folder)` may add files (main
    process only) before the folder is moved into place.
    """
    folder = Path(folder)
    tmp = folder.parent / f".{folder.name}.saving"
    accelerator = trainer.accelerator
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))
    if accelerator.is_main_process:
        processing_class.save_pretrained(str(tmp))
        if extra is not None:
            extra(tmp)
        move_into_place(tmp, folder)
    accelerator.wait_for_everyone()
    return folder


def no_activation_checkpointing() -> dict:
    """Training arguments that turn activation checkpointing off (TRL's configs turn it on).

    transformers 5.23 renamed `gradient_checkpointing` to `activation_checkpointing` (the old
    name stays as a deprecated alias); this names every one of the two that `TrainingArguments` has.
    """
    from transformers import TrainingArguments

    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    return {name: False for name in ("activation_checkpointing", "gradient_checkpointing") if name in fields}


#: Flags that point a recipe at a user's model or data: with any of them, the recipe's default config
#: (the budget of the embedded world) is not read, as in TRL's scripts.
USER_RUN_FLAGS = ("--model_name_or_path", "--dataset_name", "--task_datasets")
#: Recipe flags renamed, kept one release as aliases that warn: `--world_size` (a demo world's
#: size) read like `TrainingArguments.world_size` (the number of processes).
DEPRECATED_FLAGS = ("--world_size",)


def parse_recipe_args(parser, default_config=None, argv=None):
    """Parse a recipe's command line the TRL way (`--config x.yaml` sets defaults, flags override).

    `default_config` (the embedded world's budget: `recipe_config(name)`) is read when the command
    line names no `--config` and no model or dataset of the user's (`USER_RUN_FLAGS`), so every
    recipe runs with no arguments while a run on a user's model gets TRL's defaults and what its
    own `--config` says. Without an accelerator, bf16 and activation checkpointing default to off
    (6x faster on a CPU) and `use_cpu` to on: only then do the processes started by
    `accelerate launch --multi_gpu --num_processes N` form one gloo group instead of N
    independent runs. A YAML value or a flag still wins over these defaults.
    """
    import sys
    from pathlib import Path

    import torch

    argv = list(sys.argv[1:] if argv is None else argv)
    named = {arg.split("=", 1)[0] for arg in argv if arg.startswith("--")}
    argv, renamed_config = _renamed_flags(parser, argv, named)
    user_run = bool(named & set(USER_RUN_FLAGS))
    if "--config" not in named and not user_run and default_config is not None and Path(default_config).is_file():
        argv = ["--config", str(default_config), *argv]
    if not torch.accelerator.is_available():
        parser.set_defaults(bf16=False, use_cpu=True, **no_activation_checkpointing())
    try:
        return parser.parse_args_and_config(argv)
    finally:
        if renamed_config:
            os.unlink(renamed_config)


def _renamed_flags(parser, argv, named) -> tuple[list, str | None]:
    """`argv` with the deprecated aliases of the `--config` YAML renamed (TRL refuses YAML keys it
    has no field for) in a temporary copy (returned second, for the caller to remove), and a
    FutureWarning for each deprecated alias given as a flag or a key."""
    import tempfile
    import warnings

    import yaml

    new_name = {old: f"--{action.dest}" for action in parser._actions for old in action.option_strings if old in DEPRECATED_FLAGS}
    for old in sorted(set(new_name) & named):
        warnings.warn(f"the flag {old} is deprecated and will be removed in the next release; use {new_name[old]} "
                      f"(the same value)", FutureWarning, stacklevel=3)
    argv = list(argv)
    for k, arg in enumerate(argv):
        inline = arg.startswith("--config=")
        if not (inline or (arg == "--config" and k + 1 < len(argv))):
            continue
        path = arg.split("=", 1)[1] if inline else argv[k + 1]
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            config = yaml.safe_load(f) or {}
        stale = [key for key in config if f"--{key}" in new_name]
        if not stale:
            continue
        for key in stale:
            new = new_name[f"--{key}"]
            warnings.warn(f"the config key {key} is deprecated and will be removed in the next release; use {new} "
                          f"(the same value), in {path}", FutureWarning, stacklevel=3)
            config.setdefault(new[2:], config[key])
            del config[key]
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="recipe-config-", delete=False) as f:
            yaml.safe_dump(config, f)
        argv[k : k + (1 if inline else 2)] = ["--config", f.name]
        return argv, f.name
    return argv, None


def load_model_and_tokenizer(model_args, training_args):
    """The model and tokenizer of a recipe run on a user's model, loaded as TRL's `sft.py` loads
    them: `model_args` (a `trl.ModelConfig`: model_name_or_path, revision, dtype,
    attn_implementation, 4/8-bit quantization) and `training_args.trust_remote_code`."""
    from accelerate import PartialState
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import get_quantization_config

    path = model_args.model_name_or_path
    trust = bool(getattr(training_args, "trust_remote_code", False))
    kwargs = dict(revision=model_args.model_revision, trust_remote_code=trust, dtype=model_args.dtype,
                  attn_implementation=model_args.attn_implementation)
    quantization = get_quantization_config(model_args)
    if quantization is not None:
        kwargs.update(quantization_config=quantization, device_map={"": PartialState().local_process_index})
    model = AutoModelForCausalLM.from_pretrained(path, **{k: v for k, v in kwargs.items() if v is not None})
    tokenizer = AutoTokenizer.from_pretrained(path, revision=model_args.model_revision, trust_remote_code=trust)
    return model, tokenizer


def prefixed_arguments(config_cls, prefix: str, name: str):
    """A dataclass with `config_cls`'s fields, each named `prefix + field`, for a recipe's parser
    (flags and YAML keys) where two configs share a field name (`--tracker_batch_size`,
    `--diagnosis_batch_size`); its `config()` builds the `config_cls` instance."""
    import typing

    hints = typing.get_type_hints(config_cls)
    specs = []
    for f in dataclasses.fields(config_cls):
        default = {"default": f.default} if f.default is not dataclasses.MISSING else {"default_factory": f.default_factory}
        metadata = {**f.metadata, "help": f.metadata.get("help", "").replace("%", "%%")}  # argparse formats help with %
        specs.append((prefix + f.name, hints[f.name], dataclasses.field(metadata=metadata, **default)))

    def config(self):
        return config_cls(**{f.name: getattr(self, prefix + f.name) for f in dataclasses.fields(config_cls)})

    return dataclasses.make_dataclass(name, specs, namespace={"config": config, "__doc__": f"`{config_cls.__name__}` "
                                                              f"as `{prefix}*` flags."})


def recipe_config(name: str):
    """The default config of the recipe `name` ("diagnose_sft", "epi_sft", "cpi_ft", "fp4_sft"):
    `recipes/configs/<name>.yaml` in the source tree, shipped as the package data
    `hf_ilp.recipe_configs`, so that a recipe script copied anywhere still finds its defaults."""
    from hf_ilp.resources import data_dir

    folder = data_dir("hf_ilp.recipe_configs")
    path = folder / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.yaml"))
        raise FileNotFoundError(f"no default config for the recipe {name!r}; the recipes with one: {known}")
    return path
