"""`hf-ilp world build`: build (or load from cache) ILP-World and write it to a folder."""

import argparse


def register(subparsers) -> None:
    """Add `world build` to the `hf-ilp` command line."""
    world = subparsers.add_parser("world", help="ILP-World: the offline world with planted causes of incomplete learning")
    commands = world.add_subparsers(dest="world_command", metavar="COMMAND", required=True)
    build = commands.add_parser(
        "build",
        help="build ILP-World and write its base model, tokenizer and datasets (save_to_disk and JSONL) to --out",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    build.add_argument("--size", default="small", help="world size: tiny (tests) or small (demo, benchmarks)")
    build.add_argument("--seed", type=int, default=0, help="seed of every random choice in the world")
    build.add_argument("--out", required=True, help="folder to write (replaced atomically if it exists)")
    build.add_argument("--cache-dir", default=None, help="world cache (default: $HF_ILP_CACHE or ~/.cache/hf_ilp)")
    build.add_argument("--rebuild", action="store_true", help="ignore a cached copy and build again")
    build.set_defaults(func=_build)


def _build(args) -> int:
    import logging
    import sys

    from hf_ilp.world.build import build_world

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        world = build_world(size=args.size, seed=args.seed, cache_dir=args.cache_dir, rebuild=args.rebuild)
        out = world.export(args.out)
    except (ValueError, OSError) as err:
        print(f"hf-ilp world build: error: {err}", file=sys.stderr)
        return 2
    print(f"ILP-World {world.size} (seed {world.seed}): {len(world.train)} train / {len(world.validation)} validation samples")
    print(f"written to {out}")
    return 0
