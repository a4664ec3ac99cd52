"""Option declarations as argparse options, and the declarations several commands share.

    add_options(parser, MODEL_OPTIONS)
    add_options(parser, search_options(), from_session=True)   # left out: None, "the session's"

The declarations themselves live beside what they fill (`domain/spec.py` for the search,
`eval/request.py` for evaluations, `heal/` for healing, `domain/steps.py` for --step / --ratio).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable

from finercut_tui.domain.options import Option
from finercut_tui.domain.steps import StepRule, step_options

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")

MODEL_OPTIONS = [
    Option(
        ("--model", "-m"),
        group="model",
        help="hub id (org/name), local folder, or smollm2-135m (the embedded default model); with "
        "--gguf-file, the folder holding it",
    ),
    Option(
        ("--gguf-file",),
        group="model",
        help="a .gguf file (path, or name inside --model); converted once and cached",
    ),
    Option(("--revision",), group="model", help="hub revision (branch, tag or commit)"),
    Option(
        ("--dtype",),
        default="auto",
        choices=DTYPE_CHOICES,
        group="model",
        help="weights dtype; auto: bf16 on GPUs that support it, fp32 on CPU, and for a session's model "
        "the dtype its removals were chosen in",
    ),
    Option(
        ("--device",),
        default="auto",
        group="model",
        help="auto | cpu | cuda | cuda:N (auto spreads a model too big for one GPU over all GPUs)",
    ),
]
SESSION_FILE = Option(("session",), help="session YAML written by run / tui")
QUIET = Option(("--quiet",), action="store_true", help="no progress bar")


def _groups(parser: argparse.ArgumentParser) -> dict:
    """The parser's argument groups (and mutually exclusive sets) made so far, by title."""
    if not hasattr(parser, "_finercut_groups"):
        parser._finercut_groups = {}  # type: ignore[attr-defined]
    return parser._finercut_groups  # type: ignore[attr-defined]


def _container(parser: argparse.ArgumentParser, opt: Option, required: bool):
    groups = _groups(parser)
    where = parser
    if opt.group:
        if opt.group not in groups:
            groups[opt.group] = parser.add_argument_group(opt.group)
        where = groups[opt.group]
    if opt.exclusive:
        key = ("exclusive", opt.exclusive)
        if key not in groups:
            groups[key] = where.add_mutually_exclusive_group(required=required)
        where = groups[key]
    return where


def add_option(parser: argparse.ArgumentParser, opt: Option, from_session: bool = False) -> argparse.Action:
    """One declaration as one argparse option. With `from_session`, an option that fills a field is
    None when left out (so that a resume takes the session's value); its help still shows the
    declared default."""
    kwargs: dict = {"help": opt.help_text().replace("%", "%%")}
    if opt.action:
        kwargs["action"] = opt.action
    if opt.type is not None:
        kwargs["type"] = opt.type
    if opt.choices is not None:
        kwargs["choices"] = opt.choices
    if opt.metavar is not None:
        kwargs["metavar"] = opt.metavar
    if not opt.positional:
        kwargs["dest"] = opt.dest
        default = opt.default
        if from_session and opt.field:
            default = None
        elif isinstance(default, tuple) and opt.action == "append":
            default = list(default)
        kwargs["default"] = default
        if opt.required and not opt.exclusive:
            kwargs["required"] = True
    action = _container(parser, opt, opt.required).add_argument(*opt.flags, **kwargs)
    action.finercut_option = opt  # type: ignore[attr-defined] - what tests/test_options.py checks
    return action


def add_options(
    parser: argparse.ArgumentParser, options: Iterable[Option], from_session: bool = False
) -> None:
    """Every declaration of `options`, in order, each in its group (made on first use)."""
    for opt in options:
        add_option(parser, opt, from_session)


def add_step_options(parser: argparse.ArgumentParser, rule: StepRule, group: str | None = None) -> None:
    """`--step` (and `--ratio`) as `rule` allows them; resolve with `domain.steps.resolve_step`."""
    add_options(parser, step_options(rule, group))
