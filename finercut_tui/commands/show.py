"""`finercut-tui show SESSION`: the pruned-layer map and a summary, without the app or a model."""

from __future__ import annotations

import argparse
from pathlib import Path

FORMATS = ("text", "markdown", "svg", "curves-svg")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "show",
        help="print a session's pruned-layer map and summary (text, markdown or SVG)",
        description=(
            "Print which sublayers a session removed (one row per block), how many per kind and per "
            "depth quarter, the removal order with scores, and the evaluations. No model is loaded."
        ),
    )
    p.add_argument("session", help="session YAML")
    p.add_argument("--step", type=int, default=None, metavar="K", help="show the map after K removals")
    p.add_argument(
        "--format",
        default="text",
        choices=FORMATS,
        help="text (default, with curves), markdown, svg (the map), or curves-svg",
    )
    p.add_argument("--out", default=None, metavar="FILE", help="write to FILE instead of standard output")
    p.set_defaults(func=run)


def render(session_path: str | Path, fmt: str = "text", step: int | None = None) -> str:
    from finercut_tui.errors import FinercutError
    from finercut_tui.report import render_curves_svg, render_markdown, render_svg, render_text
    from finercut_tui.session import Session

    session = Session.load(session_path)
    if step is not None and not 0 <= step <= len(session.steps):
        raise FinercutError(f"--step {step} is out of range: this session has steps 0..{len(session.steps)}")
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
