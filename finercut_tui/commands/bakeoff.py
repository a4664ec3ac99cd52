"""`finercut-tui bakeoff`: several methods on one model and one set of calibration tokens, one table.

Every input is checked before the model is loaded: the method names, the targets, the evaluation's
text and tasks. The model is loaded once; each method's session is written to --out after every
step, so a rerun of the same command keeps what is done and ends with the same table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from finercut_tui.commands.common import (
    ProgressBar,
    add_eval_args,
    add_model_args,
    eval_request,
    model_spec,
    progress_printer,
    silence_loading_bars,
    write_output,
)
from finercut_tui.commands.options import QUIET, add_options


def register(subparsers) -> None:
    from finercut_tui import bakeoff
    from finercut_tui.domain.options import options_of
    from finercut_tui.domain.spec import CalibrationSpec, ScoringOptions

    p = subparsers.add_parser(
        "bakeoff",
        help="several pruning methods on one model and one calibration set: which keeps the most",
        description=(
            "Search every method of --methods on the same model and the same calibration tokens, to "
            "every --targets fraction of the sublayers; evaluate each pruned model (--ppl / --tasks) "
            "against one unpruned baseline; print retained % per method and target, the best marked, "
            "and the curves. One session per method in --out; a rerun continues where it stopped."
        ),
    )
    add_options(p, bakeoff.OPTIONS)
    add_model_args(p)
    add_options(p, options_of(CalibrationSpec))
    add_options(p, options_of(ScoringOptions))
    add_eval_args(p, batch_flag="--eval-batch-size", group="evaluation of each pruned model (as in `eval`)")
    add_options(p, [QUIET])
    p.set_defaults(func=run)


def plan_from_args(args: argparse.Namespace):
    """The bake-off the options describe, checked (names, targets, evaluation inputs)."""
    from finercut_tui import bakeoff
    from finercut_tui.domain.options import given_over
    from finercut_tui.domain.spec import CalibrationSpec, ScoringOptions
    from finercut_tui.eval.request import check_inputs

    methods = bakeoff.parse_methods(args.methods)
    targets = bakeoff.parse_targets(args.targets)
    calibration = given_over(CalibrationSpec(), args).validate()
    scoring = given_over(ScoringOptions(), args).validate()
    request = eval_request(args, args.seed) if (args.ppl or args.tasks) else None
    if request is not None:
        check_inputs(request)
    return bakeoff.Plan(methods, targets, calibration, request, Path(args.out), args.seed, scoring)


def run(args: argparse.Namespace) -> int:
    from finercut_tui import bakeoff
    from finercut_tui.model.loading import load_model

    plan = plan_from_args(args)  # before the (slow) model load
    progress = progress_printer(args.quiet)
    spec = model_spec(args)
    silence_loading_bars()
    loaded = load_model(spec, progress=progress)
    bar = None if args.quiet else ProgressBar()
    try:
        result = bakeoff.run_bakeoff(plan, loaded, spec, progress=progress, on_event=bar)
    finally:
        if bar is not None:
            bar.close()
    write_output(bakeoff.render(result, args.format), args.report)
    return 0
