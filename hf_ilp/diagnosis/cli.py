"""`hf-ilp diagnose`: diagnose a saved fine-tuning run from its folders and print the summary.

    hf-ilp diagnose --model out/ --base world/base_model --dataset world/train \
        --records out/hf_ilp_records --output out/diagnosis [--probes world/probes] [--batch-size 32]

Every `DiagnoserConfig` field is a flag (`--duplicate-similarity 0.95`, `--encoder lexical`, ...).
"""

import argparse
from dataclasses import MISSING, fields


def register(subparsers) -> None:
    """Add `diagnose` to the `hf-ilp` command line."""
    from hf_ilp.diagnosis.config import DiagnoserConfig

    p = subparsers.add_parser(
        "diagnose",
        help="give every unlearned training sample a cause (ILP diagnosis) and write the report folder",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", required=True, help="fine-tuned model folder (save_pretrained; its tokenizer is used)")
    p.add_argument("--base", required=True, help="base model folder the fine-tuning started from")
    p.add_argument("--dataset", required=True,
                   help="training data: a datasets save_to_disk folder, or a .json/.jsonl/.parquet/.csv file")
    p.add_argument("--split", default="train", help="split to read when --dataset holds several")
    p.add_argument("--records", required=True, help="LearnTracker records folder (output_dir/hf_ilp_records)")
    p.add_argument("--probes", default=None, help="optional prerequisite probes (id, probe_prompts, probe_completions)")
    p.add_argument("--output", required=True, help="report folder to write (replaced atomically)")
    for f in fields(DiagnoserConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        if isinstance(default, bool):
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                           help=f.metadata.get("help", "").replace("%", "%%"))
        else:
            p.add_argument(flag, dest=f.name, type=type(default), default=default, help=f.metadata.get("help", "").replace("%", "%%"))
    p.set_defaults(func=_diagnose)


def _diagnose(args) -> int:
    from pathlib import Path

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_ilp.diagnosis.config import DiagnoserConfig
    from hf_ilp.diagnosis.diagnoser import diagnose
    from hf_ilp.diagnosis.display import print_summary

    config = DiagnoserConfig(**{f.name: getattr(args, f.name) for f in fields(DiagnoserConfig)})
    for name in ("model", "base", "records"):
        if not Path(getattr(args, name)).exists():
            raise SystemExit(f"hf-ilp diagnose: --{name} {getattr(args, name)} does not exist")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    base_tokenizer = _maybe_tokenizer(args.base)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    base = AutoModelForCausalLM.from_pretrained(args.base)
    dataset = load_table(args.dataset, args.split)
    probes = load_table(args.probes, args.split) if args.probes else None
    report = diagnose(model, base, tokenizer, dataset, args.records, probes=probes, config=config,
                      base_tokenizer=base_tokenizer)
    out = report.save(args.output)
    print_summary(report)
    print(f"report written to {out}")
    return 0


def load_table(path, split="train"):
    """A `datasets.Dataset` from a save_to_disk folder (Dataset or DatasetDict) or a data file."""
    from pathlib import Path

    from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

    path = Path(path)
    if path.is_dir():
        data = load_from_disk(str(path))
    elif path.is_file():
        kind = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}.get(path.suffix)
        if kind is None:
            raise SystemExit(f"hf-ilp diagnose: {path} is not a .json/.jsonl/.parquet/.csv file or a save_to_disk folder")
        data = load_dataset(kind, data_files=str(path), split="train")
    else:
        raise SystemExit(f"hf-ilp diagnose: {path} does not exist")
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
