"""What every recipe in `recipes/` shares: its command line, its default config, a user's model, its messages.

- `parse_recipe_args(parser, default_config)`: TRL's `--config x.yaml` + flags, with the
  recipe's own YAML as the default budget, CPU-friendly defaults without an accelerator, and the
  renamed flags (`DEPRECATED_FLAGS`) still read, with a FutureWarning;
- `recipe_config(name)`: the recipe's default YAML, shipped with the package;
- `load_model_and_tokenizer(model_args, training_args)`: a user's model, loaded as TRL's `sft.py`;
- `prefixed_arguments(config_cls, prefix, name)`: a config's fields as `prefix*` flags;
- `recipe_logger(name)`: `accelerate.logging`'s logger for a recipe, printing `[name] message`
  lines on the main process only.

    >>> from hf_ilp.recipes import parse_recipe_args, recipe_config, recipe_logger
    >>> script_args, training_args, model_args = parse_recipe_args(make_parser(), recipe_config("epi_sft"))
    >>> recipe_logger("epi_sft").info("training")          # "[epi_sft] training", once per run
"""

import dataclasses
import logging
import os

from hf_ilp.training import no_activation_checkpointing


def recipe_logger(name: str):
    """`accelerate.logging`'s multi-process logger for the recipe `name`: INFO and above as
    `[name] message` lines on stdout, from the main process only (`main_process_only=False` in a
    call logs on every rank). Usable before the trainer exists: the first message sets up
    accelerate's `PartialState` if nothing has yet."""
    import sys

    from accelerate import PartialState
    from accelerate.logging import MultiProcessAdapter

    class RecipeLogger(MultiProcessAdapter):
        def process(self, msg, kwargs):  # no "[RANK i]" on lines that only the main process writes
            kwargs.setdefault("stacklevel", 2)
            return msg, kwargs

        def log(self, level, msg, *args, **kwargs):
            state = PartialState()  # the state accelerate's logger reads; a no-op once the trainer made it
            if not kwargs.get("main_process_only", True) and state.num_processes > 1:
                msg = f"[RANK {state.process_index}] {msg}"
            super().log(level, msg, *args, **kwargs)

    class CurrentStdout(logging.StreamHandler):  # whatever sys.stdout is when a line is written
        stream = property(lambda self: sys.stdout, lambda self, value: None)

    base = logging.getLogger(f"hf_ilp.recipes.{name}")
    if not base.handlers:
        handler = CurrentStdout()
        handler.setFormatter(logging.Formatter(f"[{name}] %(message)s"))
        base.addHandler(handler)
        base.setLevel(logging.INFO)
        base.propagate = False
    return RecipeLogger(base, {})


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
