"""`finercut-tui repair`: least-squares patches for the model pruned to a session step, folded and exported.

Order: every input is checked before the model load, and everything the model decides (the family's
projections, the calibration size against the hidden size) before anything is written; then the
pruned model is evaluated (with --ppl / --tasks), each run of removed sublayers gets its patch
(`finercut_tui.repair`), the repaired model is evaluated with the same request, written to --out as
`export` writes it (plus a Repair section in PRUNING.md and a `repaired` entry in config.json), and
the session gets a `repairs:` entry (`RepairRecord`).

The calls to the shared command helpers (step resolver, model spec, evaluation, session append) are
kept in the few small functions below, so they can follow the helpers when those move.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shlex
import sys
from pathlib import Path

from finercut_tui.commands.common import add_eval_args, add_model_args, eval_request, progress_printer
from finercut_tui.commands.export import FORCE, FORMAT, OUT, OUTTYPE, export_step
from finercut_tui.domain.options import Option
from finercut_tui.domain.records import DEFAULT_LAYOUT
from finercut_tui.domain.repairs import DEFAULT_RIDGE
from finercut_tui.domain.steps import StepRule
from finercut_tui.errors import FinercutError

STEPS = StepRule(verb="repair the model")


RIDGE = Option(
    ("--ridge",),
    type=float,
    metavar="LAMBDA",
    help=f"ridge toward the identity, relative to the mean eigenvalue of z^T z (default {DEFAULT_RIDGE}; "
    "0 = plain least squares); with fewer calibration tokens than the hidden size it must be given",
)


def register(subparsers) -> None:
    from finercut_tui.commands.options import SESSION_FILE, add_options, add_step_options
    from finercut_tui.domain.options import options_of
    from finercut_tui.domain.spec import CalibrationSpec

    p = subparsers.add_parser(
        "repair",
        help="patch the model pruned to a session step by least squares (no training) and export it",
        description=(
            "Repair the model pruned by the first K removals of SESSION without training: for every run of "
            "consecutive removed sublayers, fit a linear map T on calibration activations so that the kept "
            "sublayer before the run writes what the dense model's stream holds after it, and fold T into "
            "that sublayer's output projection (no new parameters). Writes --out as `export` does; with "
            "--ppl/--tasks the model is evaluated before and after; the session records the repair."
        ),
    )
    add_options(p, [SESSION_FILE])
    add_step_options(p, STEPS)
    add_options(p, [OUT, FORCE, FORMAT, OUTTYPE])  # as `export` declares them
    add_options(p, [RIDGE])
    p.add_argument(
        "--batch-size", type=int, default=None, help="calibration samples per forward (default all)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress messages")
    # --calib, --calib-samples, --seq-len, --calib-layout as `run` declares them; left out: the session's
    add_options(p, options_of(CalibrationSpec), from_session=True)
    add_model_args(p)
    add_eval_args(
        p, batch_flag="--eval-batch-size", group="evaluation before and after the repair (as in `eval`)"
    )
    p.set_defaults(func=run)


# -- the shared helpers, in one place ---------------------------------------------------------------
def _resolve(session, args) -> int:
    from finercut_tui.domain.steps import resolve_step

    return resolve_step(session, args.step, args.ratio, STEPS)


def _model_spec(args, session):
    from finercut_tui.commands.common import model_spec
    from finercut_tui.commands.export import check_out_is_not_the_source

    spec = model_spec(args, session)
    check_out_is_not_the_source(spec, args.out)
    return spec


def _evaluate(pm, request, k: int, previous: list, progress) -> list:
    """run_eval's records as EvalRecords (it returns dicts or EvalRecords); `previous`: EvalRecords."""
    from finercut_tui.domain.evals import EvalRecord
    from finercut_tui.eval.runner import run_eval

    records = run_eval(pm, request, k, list(previous), progress=progress)
    return [r if isinstance(r, EvalRecord) else EvalRecord.from_dict(r) for r in records]


def _append(session_path: str, k: int, removed: list[str], baseline: list, record) -> None:
    """Re-read the session (a search may have written it meanwhile), add the records, save."""
    from finercut_tui.search.job import append_records

    append_records(
        session_path,
        k,
        removed,
        evals=baseline,
        repairs=[record],
        doing="repairing",
        lost=f"the repaired model is in {record.out} but the session was not updated",
    )


def _check_eval_inputs(request) -> None:
    """A missing perplexity file or unknown tasks fail before the model load."""
    from finercut_tui.eval.request import check_inputs

    check_inputs(request)


def _command_line() -> str:
    return shlex.join(["finercut-tui", *sys.argv[1:]])


# -- the command ------------------------------------------------------------------------------------
def _calibration_spec(args, session):
    """The session's calibration with the options given (`run --resume`'s rule)."""
    from finercut_tui.domain.options import given_over
    from finercut_tui.domain.spec import CalibrationSpec

    if args.batch_size is not None and args.batch_size < 1:
        raise FinercutError(f"--batch-size must be >= 1, got {args.batch_size}")
    cal = session.calibration
    recorded = CalibrationSpec(source=cal.source, samples=cal.samples, seq_len=cal.seq_len, layout=cal.layout)
    return given_over(recorded, args).validate()


def run(args: argparse.Namespace) -> int:
    from finercut_tui.domain.repairs import DEFAULT_RIDGE
    from finercut_tui.domain.sublayers import expand
    from finercut_tui.export.formats import check_format_args
    from finercut_tui.model.checkpoint import check_out_dir
    from finercut_tui.repair.projections import check_ridge
    from finercut_tui.session import Session

    session = Session.load(args.session)
    k = _resolve(session, args)
    removed = session.removed_at(k)
    if not expand(removed):
        raise FinercutError(f"step {k} removes nothing: there is no pruning to repair")
    ridge = DEFAULT_RIDGE if args.ridge is None else float(args.ridge)
    check_ridge(ridge)
    calibration = _calibration_spec(args, session)
    out = Path(args.out).expanduser()
    spec = _model_spec(args, session)
    check_format_args(args.format, args.outtype)
    check_out_dir(out, args.force)
    request = eval_request(args, 0, session.calibration) if (args.ppl or args.tasks) else None
    if request is not None:
        _check_eval_inputs(request)
    progress = progress_printer(args.quiet)
    return repair_session(args, session, k, ridge, calibration, request, out, spec, progress)


def prepare_repair(pm, session, k: int, calibration, ridge: float, ridge_given: bool, progress):
    """Every check that needs the model, before anything is written: the family's projections and
    the calibration size against the hidden size. Returns the calibration tokens (`Calibration`).
    `calibration` is a CalibrationSpec (`_calibration_spec`). Also what `heal --repair` calls."""
    from finercut_tui.data.calibration import build_calibration
    from finercut_tui.repair.projections import check_calibration, check_repairable
    from finercut_tui.repair.runs import removal_runs

    check_repairable(pm, removal_runs(session.removed_at(k), pm.num_blocks))
    c = calibration
    cal = build_calibration(pm.tokenizer, c.source, c.samples, c.seq_len, c.layout)
    # the default ridge is no licence to fit d x d maps on fewer than d tokens: it must be asked for
    check_calibration(int(cal.input_ids.numel()), pm.hidden_size, ridge if ridge_given else 0.0)
    same = cal.fingerprint == session.calibration.fingerprint
    progress(
        f"calibration: {cal.source} ({cal.split}), {cal.samples} x {cal.seq_len} = {cal.input_ids.numel():,} "
        f"tokens{' (the tokens the session scored)' if same else ''}"
    )
    return cal


def fit_repair(
    pm, session, k: int, cal, ridge: float, batch_size: int | None, progress, out: str | None = None
):
    """Repair `pm` (the session's model) in place for step k; the `RepairRecord`, without evaluations
    (the caller adds `before` / `after` with dataclasses.replace). Also what `heal --repair` calls."""
    from finercut_tui.domain.repairs import RepairRecord
    from finercut_tui.repair.lstsq import repair_model
    from finercut_tui.repair.runs import removal_runs

    removed = session.removed_at(k)
    runs = removal_runs(removed, pm.num_blocks)
    patched = [r for r in runs if r.patched]
    progress(f"repairing {len(runs)} runs of removed sublayers ({len(patched)} patched), ridge {ridge:g}")
    outcome = repair_model(pm, cal.input_ids, removed, ridge=ridge, batch_size=batch_size, progress=progress)
    return RepairRecord(
        step=k,
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        command=_command_line(),
        objective=outcome.objective,
        ridge=ridge,
        calibration=_calibration_dict(cal),
        patches=tuple(_patch_record(p) for p in outcome.patches),
        seconds=round(outcome.seconds, 3),
        out=out,
    )


def what_if_repair(job, request, step: int, ridge: float, unrepaired):
    """The workbench's what-if: the job's current model repaired on its own calibration tokens and
    evaluated with `request`, next to `unrepaired`; every weight is given back afterwards, so the
    search goes on unrepaired and its order is unchanged. A `RepairRecord` with no `out`."""
    from finercut_tui.domain.repairs import RepairRecord
    from finercut_tui.eval.runner import run_eval
    from finercut_tui.repair.lstsq import repaired

    pm = job.pm
    with repaired(pm, job.calibration.input_ids, pm.removed, ridge=ridge) as outcome:
        after = run_eval(pm, request, step, job.session.evals)[-1]
    return RepairRecord(
        step=step,
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        command="what-if in the workbench (e)",
        objective=outcome.objective,
        ridge=ridge,
        calibration=_calibration_dict(job.calibration),
        patches=tuple(_patch_record(p) for p in outcome.patches),
        seconds=round(outcome.seconds, 3),
        before=unrepaired,
        after=after,
    )


def repair_session(args, session, k, ridge, calibration, request, out, spec, progress) -> int:
    import dataclasses

    from finercut_tui.domain.sublayers import expand
    from finercut_tui.model.loading import load_model
    from finercut_tui.session import check_matches

    lm = load_model(spec, progress=progress)
    pm = lm.pm
    check_matches(session, architecture=lm.architecture, num_blocks=pm.num_blocks, source=args.session)
    removed = session.removed_at(k)
    cal = prepare_repair(pm, session, k, calibration, ridge, args.ridge is not None, progress)
    pm.set_removed(expand(removed))
    baseline, before, after = [], None, None
    previous = list(session.evals)
    if request is not None:
        progress(f"evaluating step {k} before the repair: {request.describe()}")
        records = _evaluate(pm, request, k, previous, progress)
        baseline, before = records[:-1], records[-1]
        previous += baseline
    record = fit_repair(pm, session, k, cal, ridge, args.batch_size, progress, out=str(args.out))
    if request is not None:
        progress(f"evaluating step {k} after the repair")
        after = _evaluate(pm, request, k, previous, progress)[-1]
    record = dataclasses.replace(record, before=before, after=after)
    result = export_step(args, pm, session, k, spec, progress)
    _describe_in_export(out, record)
    _append(args.session, k, removed, baseline, record)
    progress(f"recorded the repair in {args.session}")
    print(_summary(record, result))
    return 0


def _calibration_dict(cal) -> dict:
    out = {
        "source": cal.source,
        "split": cal.split,
        "samples": cal.samples,
        "seq_len": cal.seq_len,
        "tokens": int(cal.input_ids.numel()),
        "fingerprint": cal.fingerprint,
    }
    if cal.layout != DEFAULT_LAYOUT:
        out["layout"] = cal.layout
    return out


def _patch_record(patch):
    from finercut_tui.domain.repairs import PatchRecord

    return PatchRecord(
        run=tuple(patch.run.sublayers),
        sublayer=patch.sublayer,
        error_before=patch.error_before,
        error_after=patch.error_after,
        note=patch.note,
    )


# -- what the export says about the repair ----------------------------------------------------------
def repaired_entry(record) -> dict:
    """config.json's `finercut.repaired` entry (loaders ignore it)."""
    return {
        "objective": record.objective,
        "ridge": record.ridge,
        "patches": {p.sublayer: list(p.run) for p in record.patched},
        "calibration_fingerprint": record.calibration.get("fingerprint"),
    }


def repair_section(record) -> list[str]:
    from finercut_tui.domain.evals import describe_eval, retained_text

    cal = record.calibration
    lines = [
        "## Repair (least squares, no training)",
        "",
        f"Each run of removed sublayers got a linear map T fitted on {cal.get('tokens', '?'):,} calibration "
        f"tokens ({cal.get('source')}, {cal.get('samples')} x {cal.get('seq_len')}; ridge {record.ridge:g} "
        "relative to the mean eigenvalue of z^T z) and folded into the output projection of the kept "
        "sublayer before the run: these weights already hold it, no parameter was added.",
        "",
        "| patched sublayer | run it stands in for | stream error before -> after (of the dense norm) |",
        "|---|---|---|",
    ]
    for p in record.patches:
        run = ", ".join(f"`{s}`" for s in p.run)
        if p.sublayer is None:
            lines.append(f"| - | {run} | {p.note or 'not patched'} |")
        else:
            lines.append(f"| `{p.sublayer}` | {run} | {p.error_before:.4f} -> {p.error_after:.4f} |")
    if record.before is not None and record.after is not None:
        lines += [
            "",
            "| model | evaluation | retained |",
            "|---|---|---|",
            f"| before the repair | {describe_eval(record.before)} | {retained_text(record.before)} |",
            f"| after the repair | {describe_eval(record.after)} | {retained_text(record.after)} |",
        ]
    return lines


def _describe_in_export(out: Path, record) -> None:
    """Add the repair to the export's PRUNING.md (after its header) and config.json's finercut section."""
    from finercut_tui.export.card import CARD_NAME
    from finercut_tui.model.checkpoint import CONFIG_KEY

    config_path = out / "config.json"
    if config_path.is_file():  # a GGUF folder has none
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config.setdefault(CONFIG_KEY, {})["repaired"] = repaired_entry(record)
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    card = out / CARD_NAME
    if not card.is_file():
        return
    text = card.read_text(encoding="utf-8")
    head, sep, rest = text.partition("\n\n## ")
    section = "\n".join(repair_section(record))
    card.write_text(f"{head}\n\n{section}{sep}{rest}" if sep else f"{text}\n{section}\n", encoding="utf-8")


def _summary(record, result) -> str:
    from finercut_tui.domain.evals import describe_eval, retained_text

    patched = record.patched
    left = [p.relative_error for p in patched if p.relative_error is not None]
    mean_left = f", {100 * sum(left) / len(left):.1f}% of the stream error left on average" if left else ""
    lines = [
        f"repaired step {record.step}: {len(patched)} patches{mean_left}, {record.seconds:.1f}s; wrote "
        f"{result.out_dir} ({result.format} format)"
    ]
    if record.before is not None and record.after is not None:
        lines.append(f"before: {describe_eval(record.before)} (retained {retained_text(record.before)})")
        lines.append(f"after:  {describe_eval(record.after)} (retained {retained_text(record.after)})")
    return "\n".join(lines)
