"""What several subcommands share: the model a command loads, the evaluation it asks for, progress
on stderr, the headless search loop, and writing a report.

The options themselves are declared once (see `commands/options.py`); these read them back.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from finercut_tui.commands.options import MODEL_OPTIONS, add_options
from finercut_tui.domain.events import CandidateScored, SearchFinished
from finercut_tui.domain.progress import SearchProgress
from finercut_tui.domain.text import clock, describe_event
from finercut_tui.errors import FinercutError


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """--model, --gguf-file, --revision, --dtype, --device."""
    add_options(parser, MODEL_OPTIONS)


def add_eval_args(parser: argparse.ArgumentParser, batch_flag: str = "--batch-size", group=None) -> None:
    """What to evaluate (`eval_options`): --ppl, --tasks, ... and the evaluation's batch size."""
    from finercut_tui.domain.eval_request import eval_options

    add_options(parser, eval_options(group, batch_flag))


def model_spec(args: argparse.Namespace, session: Any = None):
    """The model a command loads: the options of MODEL_OPTIONS, and for a session's model the rule
    of `search.job.model_spec_from_session` (what is left out comes from the session)."""
    from finercut_tui.model.loading import ModelSpec
    from finercut_tui.search.job import model_spec_from_session

    given = {k: getattr(args, k, None) for k in ("model", "gguf_file", "revision", "dtype", "device")}
    if session is not None:
        return model_spec_from_session(session, **given)
    if not given["model"] and not given["gguf_file"]:
        raise FinercutError("no model given: pass --model ORG/NAME or a local folder (or --gguf-file FILE)")
    return ModelSpec(
        name_or_path=given["model"] or "",
        gguf_file=given["gguf_file"],
        dtype=given["dtype"] or "auto",
        device=given["device"] or "auto",
        revision=given["revision"],
    )


def eval_request(args: argparse.Namespace, seed: int, calibration=None):
    """The EvalRequest of the evaluation options in `args` (see `eval.request.request_from_args`)."""
    from finercut_tui.domain.eval_request import request_from_args

    return request_from_args(args, seed, calibration)


def write_output(text: str, out: str | None) -> None:
    """A report to the file `out` (folders made as needed), or to standard output."""
    from pathlib import Path

    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {out}", file=sys.stderr)
    else:
        sys.stdout.write(text)


def progress_printer(quiet: bool = False):
    def emit(message: str) -> None:
        if not quiet:
            print(message, file=sys.stderr, flush=True)

    return emit


def silence_loading_bars() -> None:
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except Exception:  # noqa: BLE001 - cosmetic
        pass


def run_headless(job, quiet: bool = False) -> SearchFinished | None:
    """Run a job's search to its end with a progress bar on stderr (none when `quiet`); the last
    SearchFinished event, or None when the search ended without one."""
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
    return finished


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
