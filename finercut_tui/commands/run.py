"""`finercut-tui run`: the headless search (nohup / batch jobs); writes the same session as the TUI."""

from __future__ import annotations

import argparse
import sys
import time

from finercut_tui.commands.common import (
    add_eval_args,
    add_model_args,
    eval_request,
    model_spec,
    progress_printer,
)
from finercut_tui.domain import methods as M
from finercut_tui.domain.events import CandidateScored, SearchFinished
from finercut_tui.domain.presets import PRESETS
from finercut_tui.domain.progress import SearchProgress
from finercut_tui.domain.records import DEFAULT_LAYOUT, LAYOUTS
from finercut_tui.domain.spec import DEFAULT_TIMEOUT_S as DEFAULT_DIST_TIMEOUT
from finercut_tui.domain.spec import DISTANCE_DTYPES, PREFIX_CACHE_CHOICES, CalibrationSpec, SearchSpec
from finercut_tui.domain.text import clock, describe_event
from finercut_tui.errors import FinercutError

DEFAULT = SearchSpec()
DEFAULT_CALIBRATION = CalibrationSpec()


def add_search_args(parser: argparse.ArgumentParser) -> None:
    """Every option of `run` (also used by `tui`). Defaults of None mean "the session's value" on --resume."""
    add_model_args(parser)
    s = parser.add_argument_group("search")
    s.add_argument("--method", default=None, help=f"{' | '.join(M.METHODS)} (default {DEFAULT.method})")
    s.add_argument(
        "--target",
        default=None,
        help=f"N removals, a fraction 0<F<1 of the candidates, or 'all' (default {DEFAULT.target})",
    )
    s.add_argument(
        "--metric",
        default=None,
        help=f"FinerCut distance: {', '.join(M.METRIC_NAMES)} (default {DEFAULT.metric})",
    )
    s.add_argument(
        "--distance-dtype",
        default=None,
        choices=DISTANCE_DTYPES,
        help="FinerCut: compute the distance in float32 (default) or in the model's dtype (as the "
        "reference code does; for reproducing bf16 runs)",
    )
    s.add_argument(
        "--iterative",
        action="store_true",
        default=None,
        help="similarity drop: re-score after every removal (default: one-shot)",
    )
    s.add_argument(
        "--exclude-front",
        type=float,
        default=None,
        metavar="X",
        help="FinerCut's front exclusion, the reference code's -x X: hold back blocks 0..int(L*X) until "
        "int(2L*X)+1 sublayers are gone (X = 0 holds block 0 for the first removal; default: off)",
    )
    s.add_argument(
        "--block-metric",
        default=None,
        choices=M.BLOCK_METRICS,
        help=f"block-drop score (default {DEFAULT.block_metric})",
    )
    s.add_argument(
        "--pin", action="append", default=[], metavar="ID", help="never remove this sublayer (repeatable)"
    )
    s.add_argument("--seed", type=int, default=None, help=f"random seed (default {DEFAULT.seed})")
    c = parser.add_argument_group("calibration")
    c.add_argument(
        "--calib",
        default=None,
        help=f"wikitext2 | c4 | pydoc | PATH to a .txt or .jsonl file (default {DEFAULT_CALIBRATION.source})",
    )
    c.add_argument(
        "--calib-samples",
        type=int,
        default=None,
        help=f"number of samples (default {DEFAULT_CALIBRATION.samples})",
    )
    c.add_argument(
        "--seq-len",
        type=int,
        default=None,
        help=f"tokens per sample (default {DEFAULT_CALIBRATION.seq_len})",
    )
    c.add_argument(
        "--calib-layout",
        default=None,
        choices=LAYOUTS,
        help=f"how text becomes rows: {DEFAULT_LAYOUT} (default; every row starts with BOS), finercut "
        "(one stream, one BOS) or llm-drop (documents + EOS, no BOS)",
    )
    c.add_argument(
        "--reproduce",
        default=None,
        choices=tuple(PRESETS),
        help="a paper's settings (calibration, layout, metric); options given explicitly still win: "
        + "; ".join(f"{p.name}: {p.summary}" for p in PRESETS.values()),
    )
    p = parser.add_argument_group("speed")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="samples per forward (default all; halves itself on out-of-memory)",
    )
    p.add_argument(
        "--prefix-cache",
        default="gpu",
        choices=PREFIX_CACHE_CHOICES,
        help="keep block inputs per step on the model's device, offload them to CPU, or off",
    )
    d = parser.add_argument_group("many replicas (torchrun / srun)")
    d.add_argument(
        "--dist-timeout",
        type=float,
        default=DEFAULT_DIST_TIMEOUT,
        metavar="S",
        help=f"seconds a rank waits for the others in a collective before giving up (default "
        f"{DEFAULT_DIST_TIMEOUT}: long enough for an lm-eval run on rank 0)",
    )
    d.add_argument(
        "--gpus-per-replica",
        type=int,
        default=1,
        metavar="G",
        help="spread each process's replica over G local GPUs (device_map); local rank r gets GPUs "
        "r*G..r*G+G-1 (default 1)",
    )
    o = parser.add_argument_group("session")
    o.add_argument("--session", required=True, help="session YAML, written after every step")
    o.add_argument("--resume", action="store_true", help="continue the session where it stopped")
    _add_eval_args(parser)


def _add_eval_args(parser: argparse.ArgumentParser) -> None:
    e = parser.add_argument_group("evaluation during the run")
    e.add_argument(
        "--eval-every",
        type=int,
        default=0,
        metavar="K",
        help="evaluate after every K removals and at the end",
    )
    add_eval_args(e, batch_flag="--eval-batch-size")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "run",
        help="run a search headless (for nohup / batch jobs)",
        description="Run FinerCut or similarity drop without the UI; the session is saved after every step.",
    )
    add_search_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def eval_request_from_args(args):
    """The evaluation for --eval-every (its calibration fields are filled in by the job)."""
    return eval_request(args, args.seed or 0) if (args.ppl or args.tasks) else None


def setup_from_args(args, session=None):
    """The search setup the options describe; on --resume, the session's with the options given
    (`session`: the resumed session when the caller has it already)."""
    from finercut_tui.domain.presets import preset_setup
    from finercut_tui.domain.spec import EvalSchedule, ScoringOptions, SearchSetup
    from finercut_tui.errors import FinercutError
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
        setup = SearchSetup()
    spec = setup.spec.replace(
        method=args.method,
        target=args.target,
        metric=args.metric,
        distance_dtype=args.distance_dtype,
        iterative=args.iterative,
        exclude_front=args.exclude_front,
        block_metric=args.block_metric,
        seed=args.seed,
    )
    cal = setup.calibration
    calibration = CalibrationSpec(
        source=args.calib or cal.source,
        samples=args.calib_samples or cal.samples,
        seq_len=args.seq_len or cal.seq_len,
        layout=args.calib_layout or cal.layout,
    )
    batch_size = args.batch_size if args.batch_size is not None else setup.scoring.batch_size
    return SearchSetup(
        spec=spec,
        calibration=calibration,
        scoring=ScoringOptions(batch_size=batch_size, prefix_cache=args.prefix_cache),
        schedule=EvalSchedule(args.eval_every, eval_request_from_args(args)).validate(),
        pins=tuple(args.pin),
    )


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
    from finercut_tui.search.job import model_spec_from_session, prepare_job
    from finercut_tui.session import Session

    setup = setup_from_args(args, existing)
    if args.resume and not (args.model or args.gguf_file):
        session = existing or Session.load(args.session)
        spec = model_spec_from_session(session, dtype=args.dtype, device=args.device)
    else:
        spec = model_spec(args)
    return prepare_job(
        setup,
        spec,
        args.session,
        resume=args.resume,
        progress=progress,
        world=world,
        existing_session=existing,
    )


class ProgressBar:
    """On a terminal, a Rich bar for this step (candidate i/m, the last score, the search's ETA) with
    one line per event printed above it; elsewhere (a log file) the event lines alone."""

    def __init__(self, stream=None):
        from rich.console import Console

        self.stream = stream if stream is not None else sys.stderr  # the stream of now, not of import time
        self.console = Console(file=self.stream, highlight=False)
        self.tty = self.console.is_terminal
        self.progress = SearchProgress()
        self.started = time.perf_counter()
        self._bar = None

    def _live(self):
        if self._bar is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[last]}  ETA {task.fields[eta]}"),
                console=self.console,
                transient=True,
            )
            self._task = self._bar.add_task("step", total=None, last="", eta="--:--")
            self._bar.start()
        return self._bar

    def __call__(self, event) -> None:
        self.progress.apply(event)
        if isinstance(event, CandidateScored):
            if self.tty:
                p = self.progress
                self._live().update(
                    self._task,
                    description=f"step {p.done + 1}/{p.target}",
                    completed=event.index,
                    total=event.total,
                    last=f"{event.sublayer} {event.score:.5f}",
                    eta=clock(p.eta_seconds()),
                )
            return
        line = describe_event(event)
        if isinstance(event, SearchFinished):
            line += f" in {time.perf_counter() - self.started:.1f}s"
        if line and self.tty:
            self.console.print(line, markup=False, soft_wrap=True)
        elif line:
            self.stream.write(line + "\n")
            self.stream.flush()
        if isinstance(event, SearchFinished):
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def run(args) -> int:
    from finercut_tui.search import distributed

    world = distributed.init_world(args.dist_timeout, args.device, args.gpus_per_replica)
    try:
        return _run(args, world)
    finally:
        distributed.close_world()


def silence_loading_bars() -> None:
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except Exception:  # noqa: BLE001 - cosmetic
        pass


def _run(args, world) -> int:
    quiet = args.quiet or not world.is_main  # rank 0 alone prints
    if not world.is_main:
        silence_loading_bars()
    job = job_from_args(args, progress=progress_printer(quiet), world=world)
    bar = None if quiet else ProgressBar()
    finished = None
    try:
        for event in job.events():
            if bar is not None:
                bar(event)
            if isinstance(event, SearchFinished):
                finished = event
    finally:
        if bar is not None:
            bar.close()  # an error must not leave the terminal inside a live display
    if not world.is_main:
        return 0 if finished is not None and finished.reason != "error" else 1
    if not quiet:
        print(f"session saved: {job.session_path}", file=sys.stderr)
    print(" ".join(job.session.removed_at()))
    return 0 if finished is not None and finished.reason != "error" else 1
