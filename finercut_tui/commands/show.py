"""`finercut-tui show SESSION`: the pruned-layer map and a summary, without the app or a model."""

from __future__ import annotations

import argparse
from pathlib import Path

from finercut_tui.commands.options import SESSION_FILE, add_options, add_step_options
from finercut_tui.domain.steps import StepRule

FORMATS = ("text", "markdown", "svg", "curves-svg")
STEPS = StepRule(first=0, ratio=False, required=False, verb="show the map")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "show",
        help="print a session's pruned-layer map and summary (text, markdown or SVG)",
        description=(
            "Print which sublayers a session removed (one row per block), how many per kind and per "
            "depth quarter, the removal order with scores, and the evaluations. No model is loaded."
        ),
    )
    add_options(p, [SESSION_FILE.with_(help="session YAML")])
    add_step_options(p, STEPS)
    p.add_argument(
        "--format",
        default="text",
        choices=FORMATS,
        help="text (default, with curves), markdown, svg (the map), or curves-svg",
    )
    p.add_argument("--out", default=None, metavar="FILE", help="write to FILE instead of standard output")
    p.set_defaults(func=run)


def render(session_path: str | Path, fmt: str = "text", step: int | None = None) -> str:
    from finercut_tui.domain.steps import resolve_step
    from finercut_tui.errors import FinercutError
    from finercut_tui.report import render_curves_svg, render_markdown, render_svg, render_text
    from finercut_tui.session import Session

    session = Session.load(session_path)
    if step is not None:  # None: the whole session
        resolve_step(session, step, rule=STEPS)
    if fmt == "text":
        return render_text(session, step, source=str(session_path))
    if fmt == "markdown":
        return render_markdown(session, step, source=str(session_path))
    if fmt == "svg":
        return render_svg(session, step)
    if fmt == "curves-svg":
        return render_curves_svg(session, step)
    raise FinercutError(f"unknown --format {fmt!r}: choose one of {', '.join(FORMATS)}")


def run(args: argparse.Namespace) -> int:
    from finercut_tui.commands.common import write_output

    write_output(render(args.session, args.format, args.step), args.out)
    return 0
