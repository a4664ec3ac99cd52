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
from finercut_tui.search import methods as M
from finercut_tui.search.events import (
    CandidateScored,
    EvalFinished,
    LogMessage,
    SearchFinished,
    SearchStarted,
    StepStarted,
    SublayerRemoved,
)


def add_search_args(parser: argparse.ArgumentParser) -> None:
    """Every option of `run` (also used by `tui`). Defaults of None mean "the session's value" on --resume."""
    add_model_args(parser)
    s = parser.add_argument_group("search")
    s.add_argument("--method", default=None, help=f"{' | '.join(M.METHODS)} (default finercut)")
    s.add_argument(
        "--target",
        default=None,
        help="N removals, a fraction 0<F<1 of the candidates, or 'all' (default 0.25)",
    )
    s.add_argument(
        "--metric", default=None, help=f"FinerCut distance: {', '.join(M.METRIC_NAMES)} (default js)"
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
        help="FinerCut: hold back blocks 0..int(L*X/2) until int(L*X)+1 sublayers are gone",
    )
    s.add_argument(
        "--block-metric", default=None, choices=M.BLOCK_METRICS, help="block-drop score (default cosine)"
    )
    s.add_argument(
        "--pin", action="append", default=[], metavar="ID", help="never remove this sublayer (repeatable)"
    )
    s.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    c = parser.add_argument_group("calibration")
    c.add_argument("--calib", default=None, help="wikitext2 (default) | c4 | PATH to a .txt or .jsonl file")
    c.add_argument("--calib-samples", type=int, default=None, help="number of samples (default 10)")
    c.add_argument("--seq-len", type=int, default=None, help="tokens per sample (default 256)")
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
        choices=("gpu", "cpu", "off"),
        help="keep block inputs per step on the model's device, offload them to CPU, or off",
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


def options_from_args(args):
    from finercut_tui.search.job import SearchOptions
    from finercut_tui.session import Session

    explicit = {
        "method": args.method,
        "target": args.target,
        "metric": args.metric,
        "iterative": args.iterative,
        "exclude_front": args.exclude_front,
        "block_metric": args.block_metric,
        "calib": args.calib,
        "calib_samples": args.calib_samples,
        "seq_len": args.seq_len,
        "seed": args.seed,
    }
    if args.resume:
        opts = SearchOptions.from_session(Session.load(args.session), **explicit)
    else:
        opts = SearchOptions(**{k: v for k, v in explicit.items() if v is not None})
    opts.pins = tuple(args.pin)
    opts.batch_size = args.batch_size if args.batch_size is not None else opts.batch_size
    opts.prefix_cache = args.prefix_cache
    opts.eval_every = args.eval_every
    opts.eval_request = request = eval_request_from_args(args)
    if args.eval_every and request is None:
        from finercut_tui.errors import FinercutError

        raise FinercutError("--eval-every needs something to evaluate: add --ppl SOURCE and/or --tasks NAMES")
    return opts


def job_from_args(args, progress):
    from finercut_tui.search.job import model_spec_from_session, prepare_job
    from finercut_tui.session import Session

    options = options_from_args(args)
    if args.resume and not (args.model or args.gguf_file):
        spec = model_spec_from_session(Session.load(args.session), dtype=args.dtype, device=args.device)
    else:
        spec = model_spec(args)
    return prepare_job(options, spec, args.session, resume=args.resume, progress=progress)


class ProgressBar:
    """step k/n, candidate i/m, ETA on stderr; one line per step when stderr is not a terminal."""

    def __init__(self, stream=None):
        self.stream = stream if stream is not None else sys.stderr  # the stream of now, not of import time
        self.tty = self.stream.isatty()
        self.target = 0
        self.done = 0
        self.started = time.perf_counter()
        self.per_candidate: list[float] = []
        self.candidates = 0

    def eta(self, index: int) -> str:
        if not self.per_candidate:
            return "?"
        avg = sum(self.per_candidate[-50:]) / len(self.per_candidate[-50:])
        left_steps = max(self.target - self.done, 0)
        # FinerCut scores one fewer candidate per step
        remaining = (self.candidates - index) + sum(max(self.candidates - k, 0) for k in range(1, left_steps))
        seconds = avg * remaining
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"

    def __call__(self, event) -> None:
        if isinstance(event, SearchStarted):
            self.target, self.done = event.target, len(event.removed)
        elif isinstance(event, StepStarted):
            self.candidates = len(event.candidates)
        elif isinstance(event, CandidateScored):
            if event.seconds:
                self.per_candidate.append(event.seconds)
            if self.tty:
                self.stream.write(
                    f"\rstep {self.done + 1}/{self.target}  candidate {event.index}/{event.total}  "
                    f"{event.sublayer:>9} {event.score:.5f}  ETA {self.eta(event.index)}   "
                )
                self.stream.flush()
        elif isinstance(event, SublayerRemoved):
            self.done += 1 if event.by == "search" else 0
            score = f" score {event.score:.6g}" if event.score is not None else ""
            line = f"step {event.step}: removed {event.sublayer} ({event.by}){score}"
            self.stream.write(("\r" + line.ljust(79)) if self.tty else line)
            self.stream.write("\n")
        elif isinstance(event, EvalFinished):
            results = ", ".join(f"{k} {v:.4g}" for k, v in (event.record.get("results") or {}).items())
            self.stream.write(f"eval at step {event.step}: {results}\n")
        elif isinstance(event, LogMessage):
            self.stream.write(f"{event.level}: {event.text}\n")
        elif isinstance(event, SearchFinished):
            took = time.perf_counter() - self.started
            self.stream.write(
                f"finished ({event.reason}) after {len(event.removed)} removals in {took:.1f}s\n"
            )
        self.stream.flush()


def run(args) -> int:
    quiet = args.quiet
    job = job_from_args(args, progress=progress_printer(quiet))
    bar = None if quiet else ProgressBar()
    finished = None
    for event in job.events():
        if bar is not None:
            bar(event)
        if isinstance(event, SearchFinished):
            finished = event
    if not quiet:
        print(f"session saved: {job.session_path}", file=sys.stderr)
    print(" ".join(job.session.removed_at()))
    return 0 if finished is not None and finished.reason != "error" else 1
