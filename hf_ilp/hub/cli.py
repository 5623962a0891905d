"""`hf-ilp report REPO_OR_PATH [--json | --html [OUT]]` and `hf-ilp push DIR`."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report",
        help="print the incomplete-learning diagnosis of a model (Hub repo id or local folder)",
        description="Print the DiagnosisReport stored in a model card (Hub repo or local folder) or a report folder.",
    )
    p.add_argument("source", metavar="REPO_OR_PATH", help="Hub model repo id (user/name), a model folder with its card (diagnose_sft: <output_dir>/final_model), or a report folder")
    p.add_argument("--revision", default=None, help="branch, tag or commit of the Hub repo")
    p.add_argument("--repo-type", default="model", choices=["model", "dataset"], help="kind of Hub repo (default: model)")
    p.add_argument("--samples", action="store_true", help="also load the per-sample rows and list example unlearned samples")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the summary as JSON (for machines)")
    out.add_argument(
        "--html", nargs="?", const="report.html", default=None, metavar="OUT",
        help="write the diagnosis (summary, cartography map, unlearned samples with their evidence) as one "
        "self-contained HTML page to OUT (default: report.html in the current folder) and print its path",
    )
    p.set_defaults(func=_report)

    p = subparsers.add_parser(
        "push",
        help="push a run's output folder (model, card, diagnosis dataset) to the Hub",
        description="Push a model folder prepared by a recipe: the model with its card, and the per-sample diagnosis as a dataset repo. Retries network faults with backoff; the Hub endpoint and token come from HF_ENDPOINT / HF_TOKEN or `hf auth login`.",
    )
    p.add_argument("output_dir", metavar="DIR", help="the folder holding the model, its README.md card and hf_ilp_report/ (diagnose_sft: <output_dir>/final_model)")
    p.add_argument("--hub_model_id", default=None, help="model repo id (default: the one saved in DIR/hf_ilp_push.json)")
    p.add_argument("--dataset_repo_id", default=None, help="dataset repo id for the per-sample diagnosis (default: <hub_model_id>-ilp-diagnosis)")
    p.add_argument("--private", action="store_true", default=None, help="create the repos as private")
    p.add_argument("--revision", default=None, help="branch of the model repo to push to")
    p.add_argument("--max_attempts", type=int, default=5, help="attempts per step before giving up (default: 5)")
    p.set_defaults(func=_push)


def _report(args) -> int:
    import json
    import math
    import sys

    from huggingface_hub.utils import logging as hub_logging

    from hf_ilp.diagnosis.report import CAUSES, UNEXPLAINED
    from hf_ilp.hub.load import load_report

    # huggingface_hub retries an unreachable Hub with a warning per attempt; the one line below
    # says what was not found and where it was looked for
    verbosity = hub_logging.get_verbosity()
    hub_logging.set_verbosity_error()
    try:
        report = load_report(args.source, revision=args.revision, samples=args.samples or args.html is not None, repo_type=args.repo_type)
        if args.html is not None:
            from hf_ilp.diagnosis.html import write_html

            print(write_html(report, args.html).resolve())
            return 0
    except (FileNotFoundError, ValueError) as exc:  # nothing found where we looked, a bad card, a page refused
        print(f"hf-ilp report: {exc}", file=sys.stderr)
        return 2
    finally:
        hub_logging.set_verbosity(verbosity)
    s = report.summary
    if args.json:
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in s.items()}
        print(json.dumps(clean, indent=2, sort_keys=True, default=str))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    n_unlearned = s["n_unlearned"]
    table = Table(title=f"Incomplete learning: {args.source}")
    table.add_column("cause")
    table.add_column("unlearned samples", justify="right")
    table.add_column("share of unlearned", justify="right")
    for cause in CAUSES + (UNEXPLAINED,):
        count = s["counts"][cause]
        table.add_row(cause, str(count), f"{count / n_unlearned:.1%}" if n_unlearned else "-")
    console.print(table)
    learned = s.get("learned_share")
    learned_text = "n/a" if learned is None or math.isnan(learned) else f"{learned:.1%}"
    console.print(f"samples: {s['n_samples']}  learned exactly: {learned_text}  unlearned: {n_unlearned}")
    if s.get("diagnosis_dataset"):
        console.print(f"per-sample diagnosis: dataset {s['diagnosis_dataset']}")
    if report.samples is not None and n_unlearned:
        examples = report.unlearned().select(range(min(10, n_unlearned)))
        t = Table(title="unlearned samples (first 10)")
        for col in ("id", "cause", "confidence", "runner_up"):
            t.add_column(col)
        for row in examples:
            t.add_row(str(row["id"]), row["cause"], f"{row['confidence']:.2f}", str(row["runner_up"]))
        console.print(t)
    return 0


def _push(args) -> int:
    from hf_ilp.hub.push import HubPushError, push_run

    try:
        result = push_run(
            args.output_dir,
            hub_model_id=args.hub_model_id,
            dataset_repo_id=args.dataset_repo_id,
            private=args.private,
            revision=args.revision,
            max_attempts=args.max_attempts,
        )
    except HubPushError as exc:
        print(exc)
        return 1
    except (FileNotFoundError, ValueError) as exc:  # not a prepared folder, or a bad repo id
        print(f"hf-ilp push: {exc}")
        return 2
    print(f"pushed model {result.model_repo_id} (commit {result.model_commit[:10]})")
    print(f"pushed diagnosis dataset {result.dataset_repo_id} (commit {result.dataset_commit[:10]})")
    return 0
