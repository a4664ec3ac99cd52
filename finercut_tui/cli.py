"""`finercut-tui` command line: one module per subcommand under finercut_tui/commands/."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from finercut_tui import __version__
from finercut_tui.errors import FinercutError, first_line, is_out_of_memory

# each is a module under finercut_tui.commands with `register(subparsers)` and `run(args) -> int`
COMMANDS = (
    "run",
    "tui",
    "replay",
    "show",
    "compare",
    "eval",
    "export",
    "heal",
    "repair",
    "bakeoff",
    "speed",
    "info",
    "demo",
)

DESCRIPTION = """\
A terminal workbench for fine-grained layer pruning of LLMs: FinerCut (greedy removal of single
attention / FFN sublayers by output divergence) and similarity drop (LLM-Drop).
Sublayers are written <block>.attn or <block>.mlp (e.g. 12.attn); whole blocks <block>.block."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finercut-tui", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"finercut-tui {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        try:
            mod = importlib.import_module(f"finercut_tui.commands.{module}")
        except ModuleNotFoundError as exc:
            if exc.name == f"finercut_tui.commands.{module}":
                continue  # command not built in this version
            raise
        mod.register(subparsers)
    return parser


def _reports(exc: BaseException) -> bool:
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return True  # one process: no torch import just to print an error (replay, show)
    from finercut_tui.search.distributed import reports

    return reports(exc)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    debug = args.debug or bool(os.environ.get("FINERCUT_DEBUG"))
    try:
        return int(args.func(args) or 0)
    except FinercutError as exc:
        if debug:
            raise
        if not _reports(exc):  # torchrun: the same line from every rank is printed by rank 0 only
            return 2
        print(f"finercut-tui: error: {first_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("finercut-tui: interrupted (the session holds every finished step)", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        if is_out_of_memory(exc):
            print(
                "finercut-tui: error: out of GPU memory: try --dtype bfloat16, --batch-size 1, fewer "
                "--calib-samples or a shorter --seq-len, --prefix-cache cpu, or --device auto to use all GPUs",
                file=sys.stderr,
            )
            return 3
        print(
            f"finercut-tui: error: {type(exc).__name__}: {first_line(exc)} (rerun with --debug for details)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
