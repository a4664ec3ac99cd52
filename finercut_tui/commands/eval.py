"""`finercut-tui eval`: perplexity and lm-eval tasks on a model, optionally pruned to a session step.

With --session, the model gets the session's first K removals (--step K; default all), the results
are printed with the % of the unpruned baseline they retain, and the records are appended to the
session (atomically). The model defaults to the session's. Every input is checked before the model
is loaded or the session written.
"""

from __future__ import annotations

import argparse
import math

from finercut_tui.commands.common import (
    add_eval_args,
    add_model_args,
    eval_request,
    model_spec,
    progress_printer,
)
from finercut_tui.commands.options import add_options, add_step_options
from finercut_tui.domain.evals import EvalRecord
from finercut_tui.domain.options import Option
from finercut_tui.domain.steps import StepRule, resolve_step
from finercut_tui.errors import FinercutError

STEPS = StepRule(first=0, ratio=False, required=False, verb="evaluate the model")
OPTIONS = [
    Option(("--session",), help="session YAML: prune to its removals and append the results"),
    Option(("--seed",), type=int, default=0, help="seed for lm-eval's sampling and few-shot choice"),
]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="perplexity / lm-eval tasks on a model, optionally pruned to a session step",
        description=(
            "Evaluate a model (optionally pruned to step K of a session) by perplexity on held-out text "
            "and lm-eval-harness tasks, and report the %% of the unpruned model's performance retained."
        ),
    )
    add_model_args(p)
    add_options(p, OPTIONS[:1])
    add_step_options(p, STEPS)
    add_eval_args(p)
    add_options(p, OPTIONS[1:])
    p.set_defaults(func=run)


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}f}"


def format_table(record: EvalRecord, baseline: EvalRecord | None = None) -> str:
    """One row per result: value, and for a pruned step the baseline's value and the % retained."""
    compare = baseline is not None and record.step != 0
    header = ("task", "metric", "value") + (("baseline", "retained %") if compare else ())
    rows = [header]
    base_results = baseline.results if baseline is not None else {}
    for name, value in record.results.items():
        row = (name, record.metrics.get(name, ""), _fmt(value))
        if compare:
            row += (_fmt(base_results.get(name)), _fmt(record.retained.get(name), 1))
        rows.append(row)
    if record.average is not None or (compare and record.retained_average is not None):
        row = ("average", "", _fmt(record.average))
        if compare:
            row += (_fmt(baseline.average), _fmt(record.retained_average, 1))
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from finercut_tui.domain.sublayers import expand
    from finercut_tui.eval.request import check_inputs
    from finercut_tui.eval.runner import find_baseline, run_eval
    from finercut_tui.model.loading import load_model
    from finercut_tui.search.job import append_records
    from finercut_tui.session import Session, check_matches

    progress = progress_printer()
    session = Session.load(args.session) if args.session else None
    if session is None and args.step is not None:
        raise FinercutError("--step needs --session (the step is an index into the session's removals)")
    spec = model_spec(args, session)
    step = resolve_step(session, args.step, rule=STEPS) if session is not None else 0
    request = eval_request(args, args.seed, session.calibration if session is not None else None)
    check_inputs(request)  # a missing file, unknown tasks: fail before the (slow) model load

    lm = load_model(spec, progress=progress)
    pm = lm.pm
    if session is not None:
        check_matches(
            session, architecture=lm.architecture, num_blocks=pm.num_blocks, source=str(args.session)
        )
        pm.set_removed(expand(session.removed_at(step)))
    where = (
        f"step {step} ({len(pm.removed)} sublayers removed)" if session is not None else "the model as loaded"
    )
    progress(f"evaluating {where}: {request.describe()}")
    previous = list(session.evals) if session is not None else []
    records = run_eval(pm, request, step, previous, progress=progress)
    record = records[-1]
    print(format_table(record, find_baseline(previous + records, record.what)))
    if session is not None:
        # a search may have written the session while we evaluated; its new steps are kept
        append_records(
            args.session,
            step,
            session.removed_at(step),
            evals=records,
            lost="the results above were not saved; rerun the eval",
        )
        progress(f"appended {len(records)} eval record(s) to {args.session}")
    return 0
