"""The live screen: a search (a Job iterated in a thread worker), or scripted events in tests and demos.

The worker thread only iterates `job.events()` and drops each event in the inbox; the UI drains it,
updates the `LayerMap` and the `SearchProgress` and redraws at most ~15 times a second. Commands go
the other way through `job.controller`, which the search polls between candidates.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from textual import work
from textual.worker import Worker, WorkerState

from finercut_tui.domain import events as E
from finercut_tui.domain.evals import describe_eval
from finercut_tui.domain.progress import SearchProgress
from finercut_tui.domain.text import FINISH_REASONS, describe_event
from finercut_tui.errors import FinercutError
from finercut_tui.layer_map import CellState, LayerMap
from finercut_tui.session import Session
from finercut_tui.tui import actions, host
from finercut_tui.tui.inbox import WorkerFailed, one_line
from finercut_tui.tui.panels import ScreenState
from finercut_tui.tui.screens import ConfirmScreen, EvalForm, EvalScreen, TargetScreen
from finercut_tui.tui.workbench import WorkbenchScreen

ENDED = (WorkerState.SUCCESS, WorkerState.ERROR, WorkerState.CANCELLED)


class LiveScreen(WorkbenchScreen):
    """Watch and steer a running search."""

    KIND = actions.LIVE
    BINDINGS = actions.bindings(actions.LIVE)

    def __init__(
        self,
        session: Session,
        session_path: str | Path | None,
        *,
        job: Any = None,
        events: Iterable[Any] = (),
        clock: Callable[[], float] = time.monotonic,
        start_search: bool = True,
        **view: Any,
    ) -> None:
        """`job`: run it (unless `start_search` is False). `events`: a scripted view, applied on start,
        no search runs. `view`: see WorkbenchScreen (device, history, cursor)."""
        super().__init__(session, session_path, LayerMap.from_session(session), **view)
        self.job = job
        self.scripted = list(events)
        self.clock = clock
        self.start_search = start_search
        self.progress = SearchProgress()
        self.search_alive = False
        self.quitting = False
        self._started = clock()
        self._elapsed_before = sum(s.seconds or 0.0 for s in session.steps)
        request = job.setup.schedule.request if job is not None else None
        self._eval_form = EvalForm.first_for(request, session.calibration.source)

    # -- the search worker -----------------------------------------------------------------------------
    def started(self) -> None:
        for event in self.scripted:
            self.apply(event)
        if self.job is not None and self.start_search:
            self.start_search_worker()

    def start_search_worker(self) -> None:
        host.leave_a_core_for_the_ui(self.job)
        self.search_alive = True
        self._started = self.clock()
        self._elapsed_before = sum(s.seconds or 0.0 for s in self.session.steps)
        self._run_search()
        self.changed()

    @work(thread=True, exclusive=True, group="search", name="search", exit_on_error=False)
    def _run_search(self) -> None:
        """Iterate the job's events in this thread; every event is already saved in the session."""
        try:
            for event in self.job.events(serve=True):  # after the target the model stays a workbench
                self.inbox.put(event)
        except Exception as exc:  # noqa: BLE001 - shown in the app as one line; the session is intact
            self.inbox.put(WorkerFailed(one_line(exc)))

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.name == "search" and event.state in ENDED:
            self.search_alive = False
            self.changed()
            if self.quitting:
                self._finish_quit()

    def receive(self, item: Any) -> None:
        if isinstance(item, WorkerFailed):
            self.error = item.text
            self.log_line(f"error: {item.text}")
            self.notify(item.text, title="error", severity="error", timeout=15)
            self.changed()
        else:
            self.apply(item)

    def apply(self, event: Any) -> None:
        self.map.apply(event)
        self.progress.apply(event)
        self.changed()
        if isinstance(event, E.CandidateScored | E.CandidateStarted):
            return
        line = describe_event(event)
        if line:
            self.log_line(line)
        if isinstance(event, E.LogMessage) and event.level in ("warning", "error"):
            self.notify(event.text, severity="error" if event.level == "error" else "warning")
        elif isinstance(event, E.SearchFinished) and not self.quitting:
            self.notify(line or "search finished", title="search finished")
        elif isinstance(event, E.EvalFinished):
            self.notify(describe_eval(event.record), title=f"eval at step {event.step}")
        elif isinstance(event, E.EvalFailed):
            self.notify(line, title=f"eval at step {event.step}", severity="error")

    # -- what the screen shows -------------------------------------------------------------------------
    def state(self) -> ScreenState:
        if self.quitting:
            return ScreenState.QUITTING
        if self.error:
            return ScreenState.ERROR
        m = self.map
        if m.finished:
            return ScreenState.FINISHED if m.finished in E.DONE_REASONS else ScreenState(m.finished)
        if m.evaluating:
            return ScreenState.EVALUATING
        controller = getattr(self.job, "controller", None)
        if controller is None:
            return ScreenState.PAUSED if m.paused else ScreenState.RUNNING
        if controller.paused:  # asked to pause: paused once the engine says so
            return ScreenState.PAUSED if m.paused else ScreenState.PAUSING
        return ScreenState.RESUMING if m.paused else ScreenState.RUNNING

    def elapsed(self) -> float:
        return self._elapsed_before + (self.clock() - self._started)

    def eta(self) -> float | None:
        return self.progress.eta_seconds()

    def device_text(self) -> str:
        if self.device is not None:
            return self.device
        return host.device_summary(self.job) if self.job is not None else ""

    def ranking_title(self) -> str:
        step = self.map.scores_step
        if step is None:
            return "ranking (lowest = most removable)"
        if self.map.step_open or step == self.map.step:
            return f"step {step} ranking (lowest = most removable)"
        return f"step {step} ranking (done; step {self.map.step} next)"

    # -- why an action cannot run now ------------------------------------------------------------------
    def no_search(self) -> str | None:
        """Why no command reaches a search now, or None when one runs."""
        if self.job is None:
            return "no search runs here: this view plays scripted events"
        if self.quitting:
            return "quitting: the search stops after the current candidate"
        if self.error:
            return "the search stopped on an error (see the log); the session holds every finished step"
        if not self.search_alive:
            if self.map.finished:
                why = FINISH_REASONS.get(self.map.finished, self.map.finished)
                return f"the search has ended ({why}): `finercut-tui replay` continues from any step"
            return "the search is not running"
        if self.map.evaluating and self.map.finished:
            return "an evaluation is running: wait for its result"
        return None

    def finished(self) -> bool:
        """The search reached its target (or ran out) and the model waits for the user."""
        return self.search_alive and self.map.finished in E.DONE_REASONS

    why_not_toggle_pause = why_not_step_once = why_not_evaluate = no_search

    def why_not_pin(self) -> str | None:
        cell = self.cursor_cell()
        if cell.state is CellState.REMOVED:
            return f"{cell.unit} is removed: undo (u) before pinning it"
        return self.no_search()

    def why_not_force_remove(self) -> str | None:
        cell = self.cursor_cell()
        if cell.state is CellState.REMOVED:
            return f"{cell.unit} is already removed"
        if cell.state is CellState.PINNED:
            return f"{cell.unit} is pinned: unpin it (p) before removing it"
        return self.no_search()

    def why_not_undo(self) -> str | None:
        return self.no_search() or (None if self.map.removals else "nothing to undo: no removal yet")

    def why_not_save(self) -> str | None:
        return "nothing to save: this view plays scripted events" if self.job is None else None

    def not_here(self, action: actions.Action) -> str:
        where = f" {self.session_path}" if self.session_path else ""
        return f"{action.title.lower()} is for replays: `finercut-tui replay{where}` steps through a saved session"

    # -- actions ---------------------------------------------------------------------------------------
    def action_toggle_pause(self) -> None:
        if self.finished():
            question = f"Search on to which target? ({self.map.progress()} {self.map.info.noun} removed now)"
            self.app.push_screen(TargetScreen(question, str(self.map.progress() + 1)), self._search_on)
            return
        paused = self.job.controller.toggle_pause()
        self.log_line("pausing after the current candidate" if paused else "resuming")
        self.changed()

    def _search_on(self, text: str | None) -> None:
        if text is None:
            return
        spec = self.session.spec
        try:
            target = spec.info.resolve_target(text, self.map.num_blocks, self.map.pins)
        except FinercutError as exc:
            self.notify(str(exc), title="cannot search on", severity="error")
            return
        if target <= self.map.progress():
            self.notify(
                f"{target} {spec.info.noun} are removed already: give more than {self.map.progress()}",
                title="cannot search on",
                severity="warning",
            )
            return
        self.job.controller.extend(target)
        self.log_line(f"searching on to {target} {spec.info.noun}")

    def action_step_once(self) -> None:
        if self.finished():
            self._search_on(str(self.map.progress() + 1))
            return
        self.job.controller.step()
        self.log_line("stepping: pause after the next removal")
        self.changed()

    def action_pin(self) -> None:
        unit = self.cursor_cell().unit
        if self.map.is_pinned(unit):
            self.job.controller.unpin(unit)
        else:
            self.job.controller.pin(unit)

    def action_force_remove(self) -> None:
        unit = self.cursor_cell().unit
        self.job.controller.force_remove(unit)
        self.log_line(f"removing {unit} by hand")

    def action_undo(self) -> None:
        self.job.controller.undo()

    def action_evaluate(self) -> None:
        self.app.push_screen(EvalScreen(self._eval_form), self._evaluate_with)

    def _evaluate_with(self, form: EvalForm | None) -> None:
        if form is None or self.job is None:
            return
        self._eval_form = form
        try:
            request = form.request(self.job.setup.schedule.request, self.session)
            ridge = form.repair_ridge()
        except FinercutError as exc:
            self.notify(str(exc), title="cannot evaluate", severity="error")
            return
        engine = getattr(self.job, "engine", None)
        if ridge is not None and engine is not None and engine.what_if is None:
            from finercut_tui.commands.repair import what_if_repair

            engine.what_if = functools.partial(what_if_repair, self.job)
        self.job.controller.evaluate(request, ridge)
        also = f", and repaired (ridge {ridge:g})" if ridge is not None else ""
        self.log_line(f"evaluation queued: {request.describe()}{also}")

    def action_save(self) -> None:
        try:
            self.job.save()
        except Exception as exc:  # noqa: BLE001 - a full disk must not kill the app
            self.notify(f"could not save: {one_line(exc)}", severity="error")
            return
        self.notify(f"saved {self.job.session_path}")

    def action_quit(self) -> None:
        """Stop the search after the current candidate, save, leave. A second q leaves at once."""
        if not self.search_alive or self.quitting:  # nothing runs, or a second q: leave now
            self._finish_quit()
        elif self.map.evaluating:
            question = (
                "An evaluation is running: quitting waits for it to finish, or press q again "
                "to leave at once (its result is lost). Quit?"
            )
            self.app.push_screen(ConfirmScreen(question), lambda yes: self._begin_quit() if yes else None)
        else:
            self._begin_quit()

    def _begin_quit(self) -> None:
        self.quitting = True
        self.log_line("stopping: the search ends after the current candidate")
        self.job.controller.cancel()
        self.changed()
        if not self.search_alive:
            self._finish_quit()

    def on_unmount(self) -> None:
        """However the app ends, the search thread (which serves until cancelled) must end too."""
        if self.job is not None:
            self.job.controller.cancel()

    def _finish_quit(self) -> None:
        if self.job is not None:
            try:
                self.job.save()
            except Exception as exc:  # noqa: BLE001
                self.notify(f"could not save: {one_line(exc)}", severity="error")
                return
        self.app.exit(0)
