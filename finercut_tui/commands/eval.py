"""`finercut-tui eval`: perplexity and lm-eval tasks on a model, optionally pruned to a session step.

With --session, the model gets the session's first K removals (--step K; default all), the results
are printed with the % of the unpruned baseline they retain, and the records are appended to the
session (atomically). Every input is checked before the model is loaded or the session written.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any

from finercut_tui.commands.common import (
    add_eval_args,
    add_model_args,
    eval_request,
    model_spec,
    progress_printer,
)
from finercut_tui.errors import FinercutError


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
    p.add_argument(
        "--session", default=None, help="session YAML: prune to its removals and append the results"
    )
    p.add_argument(
        "--step",
        type=int,
        default=None,
        help="apply the session's first K removals (default: all; 0 = the unpruned baseline)",
    )
    add_eval_args(p)
    p.add_argument("--seed", type=int, default=0, help="seed for lm-eval's sampling and few-shot choice")
    p.set_defaults(func=run)


def _request(args: argparse.Namespace, session=None):
    return eval_request(args, args.seed, session.calibration if session is not None else None)


def resolve_step(session, step: int | None) -> int:
    total = len(session.steps)
    if step is None:
        return total
    if not 0 <= step <= total:
        raise FinercutError(
            f"--step {step} is out of range: this session has {total} steps, so use 0..{total} (0 = unpruned)"
        )
    return step


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}f}"


def format_table(record: dict[str, Any], baseline: dict[str, Any] | None = None) -> str:
    """One row per result: value, and for a pruned step the baseline's value and the % retained."""
    compare = baseline is not None and record.get("step") != 0
    header = ("task", "metric", "value") + (("baseline", "retained %") if compare else ())
    rows = [header]
    base_results = (baseline or {}).get("results", {})
    for name, value in record["results"].items():
        row = (name, record.get("metrics", {}).get(name, ""), _fmt(value))
        if compare:
            row += (_fmt(base_results.get(name)), _fmt(record.get("retained", {}).get(name), 1))
        rows.append(row)
    if record.get("average") is not None or (compare and record.get("retained_average") is not None):
        row = ("average", "", _fmt(record.get("average")))
        if compare:
            row += (_fmt((baseline or {}).get("average")), _fmt(record.get("retained_average"), 1))
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
    from finercut_tui.data.sources import NAMED, load_text
    from finercut_tui.domain.evals import EvalRecord
    from finercut_tui.domain.sublayers import expand
    from finercut_tui.model.loading import load_model
    from finercut_tui.session import Session, check_matches

    progress = progress_printer()
    spec = model_spec(args)
    session = Session.load(args.session) if args.session else None
    if session is None and args.step is not None:
        raise FinercutError("--step needs --session (the step is an index into the session's removals)")
    step = resolve_step(session, args.step) if session is not None else 0
    request = _request(args, session)
    if request.ppl and request.ppl not in NAMED and not os.path.isfile(os.path.expanduser(request.ppl)):
        load_text(request.ppl, purpose="evaluation")  # raises the one-line "text file not found"
    if request.tasks:  # unknown tasks / missing tasks dir: fail before the (slow) model load
        from finercut_tui.eval.harness import resolve_tasks

        resolve_tasks(request.tasks, request.tasks_dir)
    elif request.tasks_dir is not None:
        from finercut_tui.eval.harness import check_tasks_dir

        check_tasks_dir(request.tasks_dir)

    lm = load_model(spec, progress=progress)
    pm = lm.pm
    if session is not None:
        check_matches(
            session, architecture=lm.architecture, num_blocks=pm.num_blocks, source=str(args.session)
        )
        pm.set_removed(expand(session.removed_at(step)))
    from finercut_tui.eval.runner import find_baseline, run_eval

    where = (
        f"step {step} ({len(pm.removed)} sublayers removed)" if session is not None else "the model as loaded"
    )
    progress(f"evaluating {where}: {request.describe()}")
    previous = [e.to_dict() for e in session.evals] if session is not None else []
    records = run_eval(pm, request, step, previous, progress=progress)
    record = records[-1]
    print(format_table(record, find_baseline(previous + records, record["what"])))
    if session is not None:
        # re-read: a search may have written the session while we evaluated; keep its steps
        fresh = Session.load(args.session)
        if fresh.removed_at(step) != session.removed_at(step):
            raise FinercutError(
                f"{args.session} changed while evaluating (its first {step} removals differ now): "
                "the results above were not saved; rerun the eval"
            )
        fresh.evals.extend(EvalRecord.from_dict(r) for r in records)
        fresh.save(args.session)
        progress(f"appended {len(records)} eval record(s) to {args.session}")
    return 0
