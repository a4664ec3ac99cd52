"""The headless progress: a Rich bar with our ETA on a terminal, plain event lines in a log file."""

from __future__ import annotations

import io

import torch
from builders import make_engine
from tiny_models import tiny_model

from finercut_tui.commands.common import ProgressBar
from finercut_tui.model.surgery import PrunableModel


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def events():
    ids = torch.randint(3, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    return list(make_engine(PrunableModel(tiny_model("llama")), ids, 2, method="finercut").run())


def test_a_log_file_gets_one_plain_line_per_event():
    log = io.StringIO()
    bar = ProgressBar(stream=log)
    for event in events():
        bar(event)
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("search started: finercut/js, target 2 sublayers")
    assert sum(line.startswith("step ") and ": removed " in line for line in lines) == 2
    assert lines[-1].startswith("search finished (target reached) after 2 removals in ")
    assert "\r" not in log.getvalue() and "\x1b[" not in log.getvalue()


def test_a_terminal_gets_a_rich_bar_with_the_search_eta():
    term = Terminal()
    bar = ProgressBar(stream=term)
    assert bar.tty
    seen = []
    for event in events():
        bar(event)
        if bar._bar is not None:
            task = bar._bar.tasks[0]
            seen.append((task.description, task.completed, task.total, task.fields["eta"]))
    assert ("step 1/2", 8, 8) in {s[:3] for s in seen}  # 8 candidates in step 1 of a 4-block model
    assert any(eta != "--:--" for *_, eta in seen)  # the ETA comes from SearchProgress
    assert bar._bar is None  # stopped when the search finished
    assert "step 2: removed" in term.getvalue()
