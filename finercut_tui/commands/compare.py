"""`finercut-tui compare A.yaml B.yaml [...]`: sessions of one model side by side (no model loaded)."""

from __future__ import annotations

import argparse

FORMATS = ("text", "markdown", "svg")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compare",
        help="compare sessions of one model: shared removals, where orders part, evals side by side",
        description=(
            "For each number of removals k: the sublayers each session shares with the first (count "
            "and Jaccard index), the first step where their orders part, what one removed and the other "
            "kept, their evaluations at equal removal counts, and the curves. No model is loaded."
        ),
    )
    p.add_argument(
        "sessions", nargs="+", metavar="SESSION", help="two or more session YAMLs (the first is A)"
    )
    p.add_argument("--format", default="text", choices=FORMATS, help="text (default), markdown, or svg")
    p.add_argument("--out", default=None, metavar="FILE", help="write to FILE instead of standard output")
    p.set_defaults(func=run)


def render(paths: list[str], fmt: str = "text") -> str:
    from finercut_tui import compare
    from finercut_tui.session import Session

    comparison = compare.compare([Session.load(p) for p in paths], [str(p) for p in paths])
    return {"text": compare.render_text, "markdown": compare.render_markdown, "svg": compare.render_svg}[fmt](
        comparison
    )


def run(args: argparse.Namespace) -> int:
    from finercut_tui.commands.common import write_output

    write_output(render(args.sessions, args.format), args.out)
    return 0
