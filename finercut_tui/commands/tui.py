"""`finercut-tui tui`: start or resume a search inside the workbench app (same options as `run`).

Under torchrun rank 0 draws the app; the other ranks run the same search headless and follow rank
0's keys, which the engine broadcasts at its checkpoints (search/engine.py)."""

from __future__ import annotations

import argparse
import os
import sys

from finercut_tui.commands.options import add_options
from finercut_tui.domain.options import Option


def register(subparsers) -> None:
    from finercut_tui.commands.run import add_search_args

    p = subparsers.add_parser(
        "tui",
        help="run a search in the terminal workbench (watch, pin, remove, undo, evaluate)",
        description=(
            "Start (or --resume) a search inside the app: a grid of every block's attention and FFN "
            "sublayer, this step's ranking, evaluations and a log. Every step is saved to --session; "
            "press ? in the app for the keys."
        ),
    )
    add_search_args(p)
    add_terminal_args(p)
    p.set_defaults(func=run)


TERMINAL_OPTIONS = [
    Option(
        ("--no-color",),
        action="store_true",
        group="terminal",
        help="no colours (also: the NO_COLOR variable)",
    ),
    Option(
        ("--no-mouse",),
        action="store_true",
        group="terminal",
        help="leave the mouse to the terminal (tmux copy mode)",
    ),
]


def add_terminal_args(parser: argparse.ArgumentParser) -> None:
    add_options(parser, TERMINAL_OPTIONS)


def apply_terminal_args(args: argparse.Namespace) -> None:
    """Must run before the App is created: textual reads NO_COLOR then."""
    if getattr(args, "no_color", False):
        os.environ["NO_COLOR"] = "1"


def run(args: argparse.Namespace) -> int:
    from finercut_tui.search import distributed

    apply_terminal_args(args)
    world = distributed.init_world(args.dist_timeout, args.device, args.gpus_per_replica)
    try:
        return _app(args, world) if world.is_main else _follow(args, world)
    finally:
        distributed.close_world()


def _follow(args: argparse.Namespace, world) -> int:
    """A rank other than 0: the same search, no screen; it ends when rank 0's app quits."""
    from finercut_tui.commands.common import progress_printer, silence_loading_bars
    from finercut_tui.commands.run import job_from_args

    silence_loading_bars()
    job = job_from_args(args, progress=progress_printer(quiet=True), world=world)
    for _ in job.events(serve=True):
        pass
    return 0


def _app(args: argparse.Namespace, world) -> int:
    from finercut_tui.commands.common import progress_printer
    from finercut_tui.commands.run import job_from_args

    job = job_from_args(args, progress=progress_printer(), world=world)
    from finercut_tui.tui.app import WorkbenchApp

    app = WorkbenchApp(job.session, job.session_path, job=job)
    code = app.run(mouse=not args.no_mouse)
    print(f"session saved: {job.session_path}", file=sys.stderr)
    if app.search_running:
        # quit with a second q while an evaluation still ran: don't wait for the worker thread (under
        # torchrun the other ranks then end with the lost-rank line)
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(0)
    return int(code or app.return_code or 0)
