"""`finercut-tui replay SESSION`: step through a saved session in the app; no model, no torch."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from finercut_tui.commands.options import DTYPE_CHOICES, SESSION_FILE, add_options, add_step_options
from finercut_tui.domain.steps import StepRule

STEPS = StepRule(first=0, ratio=False, required=False, verb="open the replay")


def register(subparsers) -> None:
    from finercut_tui.commands.tui import add_terminal_args

    p = subparsers.add_parser(
        "replay",
        help="step through a saved session in the app (no model or GPU needed)",
        description=(
            "Open a session file in the workbench without loading the model: left/right step through "
            "the removals, the grid and ranking show the state and the scores at that step; c continues "
            "the search from the shown step in a new session <name>-from-K.yaml (this loads the model)."
        ),
    )
    add_options(p, [SESSION_FILE.with_(help="session YAML")])
    add_step_options(p, STEPS)
    c = p.add_argument_group("when continuing (c)")
    c.add_argument("--device", default=None, help="device for the model (default: auto)")
    c.add_argument(
        "--dtype",
        default=None,
        choices=DTYPE_CHOICES,
        help="weights dtype (default: the one the session's removals were chosen in)",
    )
    add_terminal_args(p)
    p.set_defaults(func=run)


def build_app(session_path: str | Path, step: int | None = None, **model_overrides: Any):
    """The replay app for a session file (imports no torch / transformers)."""
    from finercut_tui.domain.steps import resolve_step
    from finercut_tui.session import Session
    from finercut_tui.tui.app import WorkbenchApp

    session = Session.load(session_path)
    if step is not None:  # None: the last step
        resolve_step(session, step, rule=STEPS)
    overrides = {k: v for k, v in model_overrides.items() if v is not None}
    return WorkbenchApp(session, session_path, replay_step=step, model_overrides=overrides)


def run(args: argparse.Namespace) -> int:
    import os
    import sys

    from finercut_tui.commands.tui import apply_terminal_args

    apply_terminal_args(args)
    app = build_app(args.session, args.step, device=args.device, dtype=args.dtype)
    code = app.run(mouse=not args.no_mouse)
    if app.job is not None:
        print(f"session saved: {app.job.session_path}", file=sys.stderr)
        if app.search_running:
            sys.stderr.flush()
            os._exit(0)
    return int(code or app.return_code or 0)
