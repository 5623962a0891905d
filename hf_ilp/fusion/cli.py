"""`hf-ilp fuse`: CPI-FT fusion of saved models (core transplant + per-tensor SLERP), streamed."""

import argparse


def register(subparsers) -> None:
    """Add `fuse` to the `hf-ilp` command line."""
    fuse = subparsers.add_parser(
        "fuse",
        help="fuse task models into a base by CPI-FT: transplant each task's core entries, SLERP the rest",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    fuse.add_argument("base", help="the backbone: a save_pretrained folder with safetensors shards")
    fuse.add_argument(
        "--task",
        action="append",
        required=True,
        metavar="NAME=FOLDER",
        help="a task model (repeat the flag; the order is the fusion order)",
    )
    fuse.add_argument("--out", required=True, help="output folder (written elsewhere, moved in when complete)")
    fuse.add_argument("--t", type=float, default=0.5, help="weight of the task models against the backbone, in [0, 1]")
    fuse.add_argument("--core-share", type=float, default=0.01, help="share of entries in each task's core (p = 1%% is 0.01)")
    fuse.add_argument("--tau", type=float, default=0.1, help="Jaccard overlap of cores at which tasks are grouped")
    fuse.set_defaults(func=_fuse)


def _parse_tasks(items):
    tasks = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"hf-ilp fuse: --task expects NAME=FOLDER, got {item!r}")
        if name in tasks:
            raise SystemExit(f"hf-ilp fuse: task {name!r} given twice")
        tasks[name] = path
    return tasks


def _fuse(args) -> int:
    from hf_ilp.fusion.fuse import fuse_checkpoints

    tasks = _parse_tasks(args.task)
    result = fuse_checkpoints(args.base, tasks, args.out, t=args.t, core_share=args.core_share, tau=args.tau)
    for task, n in result.core_entries.items():
        print(f"task {task}: {n} core entries")
    print("groups: " + "; ".join("{" + ", ".join(g) + "}" for g in result.groups))
    print(f"entries claimed by several tasks: {result.shared_core_entries}")
    print(f"fused model written to {result.output_dir}")
    return 0
