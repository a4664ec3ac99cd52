"""Rank 0 of `finercut-tui tui` under torchrun, its terminal replaced by Textual's pilot.

Run as `python tests/dist_tui_driver.py tui ARGS...` (with or without torchrun's variables): the real
CLI path (`cli.main`) starts the app; only `App.run` is swapped for a pilot that presses the keys a
user would, each at a known point (the search starts paused, and every key waits for its effect).
The other ranks run the plain `python -m finercut_tui tui ARGS...` and follow.
"""

from __future__ import annotations

import asyncio
import os
import sys

from test_tui_live import _grid_pos, evaluate_perplexity, wait_for

from finercut_tui.cli import main
from finercut_tui.tui.app import WorkbenchApp


async def press_every_command(app: WorkbenchApp) -> int:
    """Pause, step, pin, remove, undo, evaluate, resume to the target, one more, quit."""
    from finercut_tui.tui.grid import LayerGrid

    job = app.job
    job.controller.pause()  # before the search worker starts: every key below acts at a known point
    # each wait is on what the screen shows (app.map), not on the session: a key acts on the screen's
    # state, which follows the session a little later on a loaded machine
    async with app.run_test(size=(100, 30)) as pilot:
        session, grid = job.session, app.query_one(LayerGrid)
        await wait_for(pilot, lambda: app.workbench.state() == "paused", "the search to pause")

        await pilot.press("n")  # one step, then paused again
        await wait_for(pilot, lambda: len(app.map.removals) == 1 and app.map.paused, "one step")
        first = session.steps[0]
        best_next = min((u for u in first.scores if u != first.removed), key=first.scores.get)
        grid.move_cursor(*_grid_pos(best_next))
        await pilot.press("p")
        await wait_for(pilot, lambda: app.map.is_pinned(best_next), "the pin")

        victim = next(u for u in sorted(first.scores) if u not in (first.removed, best_next))
        grid.move_cursor(*_grid_pos(victim))
        await pilot.press("x")
        await wait_for(pilot, lambda: len(app.map.removals) == 2, "the manual removal")
        await pilot.press("u")
        await wait_for(pilot, lambda: len(app.map.removals) == 1, "the undo")
        await pilot.press("x")
        await wait_for(pilot, lambda: len(app.map.removals) == 2, "the manual removal again")

        await evaluate_perplexity(pilot, app)
        evaluated = lambda: any(e.step == 2 for e in app.map.evals) and not app.map.evaluating  # noqa: E731
        await wait_for(pilot, evaluated, "the evaluation")

        await pilot.press("space")  # resume: search on to the target
        await wait_for(pilot, lambda: app.workbench.state() == "finished", "the search to reach its target")
        done = len(app.map.removals)
        await pilot.press("n")  # after the target: one more removal
        more = lambda: len(app.map.removals) == done + 1 and app.workbench.state() == "finished"  # noqa: E731
        await wait_for(pilot, more, "one more")
        await pilot.press("q")  # the app leaves once the search (on every rank) has stopped
        await wait_for(pilot, lambda: app.return_code is not None, "the app to leave")
    return app.return_code or 0


async def quit_mid_step(app: WorkbenchApp) -> int:
    """Quit while rank 0 scores its second candidate of step 1 (held there until the quit)."""
    import threading

    job, scoring = app.job, threading.Event()
    score, calls = job.engine.scorer.score, []

    def held_score(uid: str) -> float:
        calls.append(uid)
        if len(calls) == 2:
            scoring.set()
            while not job.controller.cancelled:
                job.controller.wait_for_command()
        return score(uid)

    job.engine.scorer.score = held_score
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, scoring.is_set, "the second candidate")
        await pilot.press("q")
        await wait_for(pilot, lambda: app.return_code is not None, "the app to leave")
    return app.return_code or 0


SCENARIOS = {"every-command": press_every_command, "quit-mid-step": quit_mid_step}


def _run_under_pilot(self: WorkbenchApp, **_: object) -> int:
    return asyncio.run(SCENARIOS[os.environ.get("DRIVER_SCENARIO", "every-command")](self))


if __name__ == "__main__":
    WorkbenchApp.run = _run_under_pilot
    sys.exit(main(sys.argv[1:]))
