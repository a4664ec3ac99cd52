"""`finercut-tui run`: the headless search (nohup / batch jobs); writes the same session as the TUI."""

from __future__ import annotations

import argparse
import sys

from finercut_tui.commands.common import (  # noqa: F401 - ProgressBar: its old home, still imported
    ProgressBar,
    eval_request,
    model_spec,
    progress_printer,
    run_headless,
    silence_loading_bars,
)
from finercut_tui.commands.options import MODEL_OPTIONS, add_options
from finercut_tui.domain.options import Option, options_of
from finercut_tui.domain.presets import PRESETS
from finercut_tui.domain.spec import DEFAULT_TIMEOUT_S, EVAL_DURING_RUN, EvalSchedule, setup_options
from finercut_tui.errors import FinercutError

REPRODUCE = Option(
    ("--reproduce",),
    choices=tuple(PRESETS),
    group="calibration",
    help="a paper's settings (calibration, layout, metric); options given explicitly still win: "
    + "; ".join(f"{p.name}: {p.summary}" for p in PRESETS.values()),
)
REPLICAS = "many replicas (torchrun / srun)"
RUN_OPTIONS = [
    Option(
        ("--dist-timeout",),
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        group=REPLICAS,
        help="seconds a rank waits for the others in a collective before giving up (default {default}: "
        "long enough for an lm-eval run on rank 0)",
    ),
    Option(
        ("--gpus-per-replica",),
        type=int,
        default=1,
        metavar="G",
        group=REPLICAS,
        help="spread each process's replica over G local GPUs (device_map); local rank r gets GPUs "
        "r*G..r*G+G-1",
    ),
    Option(("--session",), required=True, group="session", help="session YAML, written after every step"),
    Option(("--resume",), action="store_true", group="session", help="continue the session where it stopped"),
]


def add_search_args(parser: argparse.ArgumentParser) -> None:
    """Every option of `run` (also `tui`'s). The search's are None when left out: on --resume the
    session's value, else the declared default (domain/spec.py)."""
    from finercut_tui.domain.eval_request import eval_options

    add_options(parser, MODEL_OPTIONS)
    add_options(parser, setup_options(), from_session=True)
    add_options(parser, [REPRODUCE, *RUN_OPTIONS, *options_of(EvalSchedule)])
    add_options(parser, eval_options(EVAL_DURING_RUN, batch_flag="--eval-batch-size"))


def register(subparsers) -> None:
    from finercut_tui.commands.options import QUIET

    p = subparsers.add_parser(
        "run",
        help="run a search headless (for nohup / batch jobs)",
        description="Run FinerCut or similarity drop without the UI; the session is saved after every step.",
    )
    add_search_args(p)
    add_options(p, [QUIET])
    p.set_defaults(func=run)


def eval_request_from_args(args):
    """The evaluation for --eval-every (its calibration fields are filled in by the job)."""
    return eval_request(args, args.seed or 0) if (args.ppl or args.tasks) else None


def setup_from_args(args, session=None):
    """The search setup the options describe; on --resume, the session's with the options given
    (`session`: the resumed session when the caller has it already)."""
    from finercut_tui.domain.presets import preset_setup
    from finercut_tui.domain.spec import SearchSetup
    from finercut_tui.search.job import setup_from_session
    from finercut_tui.session import Session

    if args.resume and args.reproduce:
        raise FinercutError(
            "--reproduce starts a new search: drop it with --resume (the session keeps its settings)"
        )
    if args.resume:
        setup = setup_from_session(session or Session.load(args.session))
    elif args.reproduce:
        setup = preset_setup(args.reproduce, args.method, args.iterative)
    else:
        setup = SearchSetup.for_method(args.method)
    schedule = EvalSchedule(getattr(args, "eval_every", 0) or 0, eval_request_from_args(args))
    return setup.given(args).replace(schedule=schedule.validate())


def job_from_args(args, progress, world=None):
    """The job the options describe. Under torchrun (`world` active) rank 0 reads a resumed session
    and sends it to the others; every rank prepares its own replica, all agree that none failed and
    that all hold the same calibration, model and search, and only then rank 0 writes the session."""
    from finercut_tui.search.distributed import SINGLE
    from finercut_tui.session import Session

    world = world or SINGLE
    if not world.active:
        return _prepare(args, progress, world, None)
    existing = None
    if args.resume:
        payload = None
        if world.is_main:
            try:
                payload = ("ok", Session.load(args.session).to_yaml_dict())
            except FinercutError as exc:
                payload = ("error", str(exc))
        kind, data = world.broadcast(payload)
        if kind == "error":
            raise FinercutError(data)
        existing = Session.from_yaml_dict(data, source=args.session)
    job, error = None, None
    try:
        job = _prepare(args, progress, world, existing)
    except Exception as exc:  # every rank reaches `agree`: all end with the failing rank's line
        error = exc
    world.agree(error)
    world.check_same(job.identity())
    job.save()
    return job


def _prepare(args, progress, world, existing):
    from finercut_tui.search.job import prepare_job
    from finercut_tui.session import Session

    session = existing
    if session is None and args.resume and not args.reproduce:  # read once, used three times
        session = Session.load(args.session)
    setup = setup_from_args(args, session)
    return prepare_job(
        setup,
        model_spec(args, session),
        args.session,
        resume=args.resume,
        progress=progress,
        world=world,
        existing_session=session,
    )


def run(args) -> int:
    from finercut_tui.search import distributed

    world = distributed.init_world(args.dist_timeout, args.device, args.gpus_per_replica)
    try:
        return _run(args, world)
    finally:
        distributed.close_world()


def _run(args, world) -> int:
    quiet = args.quiet or not world.is_main  # rank 0 alone prints
    if not world.is_main:
        silence_loading_bars()
    job = job_from_args(args, progress=progress_printer(quiet), world=world)
    finished = run_headless(job, quiet)
    if world.is_main:
        if not quiet:
            print(f"session saved: {job.session_path}", file=sys.stderr)
        print(" ".join(job.session.removed_at()))
    return 0 if finished is not None and finished.reason != "error" else 1
