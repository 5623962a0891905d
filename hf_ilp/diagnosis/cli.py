"""`hf-ilp diagnose`: diagnose a saved fine-tuning run and print the summary.

    hf-ilp diagnose --model out/final_model --base_model Qwen/Qwen2.5-0.5B --dataset train.jsonl \
        --records out/hf_ilp_records --output out/diagnosis --dtype bfloat16 --device_map auto

Models by Hub id or local folder (`--revision`, `--dtype`, `--device_map`, `--trust_remote_code`
as in transformers); the dataset as a Hub id, a save_to_disk folder or a data file; every
`DiagnoserConfig` field is a flag (`--duplicate_similarity 0.95`, `--encoder lexical`, ...), and
`--config run.yaml` sets any of them (the command line wins). Flags are snake_case like TRL's and
transformers'; the kebab-case spellings (`--duplicate-similarity`, `--no-progress`) still work.
"""

import argparse
from dataclasses import MISSING, fields

_REQUIRED = ("model", "dataset", "records", "output")
_ALIASES = {"base": "base_model", "dataset_name": "dataset", "output_dir": "output"}  # the flags' other spellings


def _flags(name: str) -> list[str]:
    """`--snake_case`, and the `--kebab-case` spelling when it differs."""
    snake, kebab = "--" + name, "--" + name.replace("_", "-")
    return [snake] if snake == kebab else [snake, kebab]


def register(subparsers) -> None:
    """Add `diagnose` to the `hf-ilp` command line."""
    from hf_ilp.diagnosis.config import DiagnoserConfig

    p = subparsers.add_parser(
        "diagnose",
        help="give every unlearned training sample a cause (ILP diagnosis) and write the report folder",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", default=None, help="YAML file whose keys set any of these flags (the command line wins)")
    p.add_argument("--model", help="fine-tuned model: Hub id or folder (save_pretrained; its tokenizer is used)")
    p.add_argument("--base_model", "--base", dest="base_model", default=None,
                   help="the model fine-tuning started from: Hub id or folder; omit it for a PEFT (LoRA) model, "
                        "whose base is read with its adapters disabled")
    p.add_argument("--dataset", "--dataset_name", dest="dataset",
                   help="training data: a Hub dataset id, a datasets save_to_disk folder, or a .json/.jsonl/.parquet/.csv file")
    p.add_argument("--dataset_config", default=None, help="configuration name of a Hub dataset")
    p.add_argument("--split", default="train", help="split to read when --dataset holds several")
    p.add_argument("--records", help="LearnTracker records folder (output_dir/hf_ilp_records)")
    p.add_argument("--probes", default=None, help="optional prerequisite probes (id, probe_prompts, probe_completions)")
    p.add_argument("--output", "--output_dir", dest="output", help="report folder to write (replaced atomically)")
    p.add_argument("--revision", default=None, help="model revision (branch, tag or commit) on the Hub")
    p.add_argument("--dtype", default="auto", help="dtype to load both models in (auto, bfloat16, float16, float32)")
    p.add_argument("--device_map", default=None, help="device map for both models (e.g. auto, cuda:0, cpu)")
    p.add_argument(*_flags("trust_remote_code"), dest="trust_remote_code", action=argparse.BooleanOptionalAction,
                   default=False, help="allow custom model code from the Hub")
    for f in fields(DiagnoserConfig):
        default = f.default if f.default is not MISSING else None
        text = f.metadata.get("help", "").replace("%", "%%")
        if isinstance(default, bool):
            p.add_argument(*_flags(f.name), dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=text)
        else:
            p.add_argument(*_flags(f.name), dest=f.name, type=type(default), default=default, help=text)
    p.set_defaults(func=_diagnose, parser=p)


def _with_config(args):
    """`args` with the YAML `--config` values wherever the command line left the flag at its default."""
    import yaml

    values = yaml.safe_load(open(args.config)) or {}
    if not isinstance(values, dict):
        raise SystemExit(f"hf-ilp diagnose: --config {args.config} must hold a mapping of flag names to values")
    for key, value in values.items():
        name = key.replace("-", "_")
        name = _ALIASES.get(name, name)
        if name in ("config", "func", "parser") or not hasattr(args, name):
            raise SystemExit(f"hf-ilp diagnose: --config {args.config}: unknown key {key!r}")
        if getattr(args, name) == args.parser.get_default(name):
            setattr(args, name, value)
    return args


def _diagnose(args) -> int:
    from pathlib import Path

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_ilp.diagnosis.config import DiagnoserConfig
    from hf_ilp.diagnosis.diagnoser import diagnose
    from hf_ilp.diagnosis.display import print_summary

    if args.config:
        args = _with_config(args)
    missing = [f"--{name}" for name in _REQUIRED if not getattr(args, name)]
    if missing:
        raise SystemExit(f"hf-ilp diagnose: {', '.join(missing)} required (as flags or in --config)")
    config = DiagnoserConfig(**{f.name: getattr(args, f.name) for f in fields(DiagnoserConfig)})
    if not Path(args.records).exists():
        raise SystemExit(f"hf-ilp diagnose: --records {args.records} does not exist")
    load = dict(revision=args.revision, trust_remote_code=args.trust_remote_code, dtype=args.dtype)
    if args.device_map:
        load["device_map"] = args.device_map
    tokenizer = AutoTokenizer.from_pretrained(args.model, revision=args.revision, trust_remote_code=args.trust_remote_code)
    model = _load_model(args.model, load)
    base = base_tokenizer = None
    if args.base_model:
        base_tokenizer = _maybe_tokenizer(args.base_model)
        base = AutoModelForCausalLM.from_pretrained(args.base_model, **load)
        if not args.device_map:
            base = base.to(next(model.parameters()).device)
    dataset = load_table(args.dataset, args.split, args.dataset_config)
    probes = load_table(args.probes, args.split) if args.probes else None
    report = diagnose(model, base, tokenizer, dataset, args.records, probes=probes, config=config,
                      base_tokenizer=base_tokenizer)
    out = report.save(args.output)
    print_summary(report)
    print(f"report written to {out}")
    return 0


def _load_model(name_or_path, load):
    """The fine-tuned model: a PEFT adapter folder is loaded onto its base, anything else as a model."""
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    if (Path(name_or_path) / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        return AutoPeftModelForCausalLM.from_pretrained(name_or_path, **load)
    return AutoModelForCausalLM.from_pretrained(name_or_path, **load)


def load_table(path, split="train", config=None):
    """A `datasets.Dataset` from a save_to_disk folder (Dataset or DatasetDict), a data file, a folder
    of data files or a Hub dataset id."""
    from pathlib import Path

    from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

    given, path = path, Path(path)
    if path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()):
        data = load_from_disk(str(path))
    elif path.is_file():
        kind = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}.get(path.suffix)
        if kind is None:
            raise SystemExit(f"hf-ilp diagnose: {path} is not a .json/.jsonl/.parquet/.csv file or a save_to_disk folder")
        data = load_dataset(kind, data_files=str(path), split="train")
    else:  # a folder of data files, or a Hub dataset id
        try:
            data = load_dataset(str(given), name=config)
        except Exception as err:  # noqa: BLE001 - any failure: say what was looked for
            raise SystemExit(f"hf-ilp diagnose: {given} is no save_to_disk folder or data file, and loading it as a "
                             f"folder of data files or a Hub dataset failed ({type(err).__name__}: {err})") from err
    if isinstance(data, DatasetDict):
        if split not in data:
            raise SystemExit(f"hf-ilp diagnose: {path} has splits {list(data)}; choose one with --split")
        data = data[split]
    assert isinstance(data, Dataset)
    return data


def _maybe_tokenizer(path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):  # a base folder without its own tokenizer: nothing to compare
        return None
