"""`hf-ilp` command line: one subcommand per idea, each defined next to the code it drives.

Every module listed in `_SUBCOMMANDS` exposes `register(subparsers)`, which adds its parser and
sets `func` to a handler taking the parsed arguments. Modules keep heavy imports inside their
handlers so that `hf-ilp --help` stays fast.
"""

import argparse
import sys
from importlib import import_module

_SUBCOMMANDS = [
    "hf_ilp.diagnosis.cli",
    "hf_ilp.hub.cli",
    "hf_ilp.world.cli",
    "hf_ilp.fusion.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-ilp",
        description="Diagnose the Incomplete Learning Phenomenon of fine-tuned LLMs, and the tools around it.",
    )
    from hf_ilp import __version__

    parser.add_argument("--version", action="version", version=f"hf_ilp {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _SUBCOMMANDS:
        import_module(module).register(subparsers)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
