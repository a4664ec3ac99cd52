"""The workbench: a live search (a Job iterated in a thread worker) or a replay of a saved session.

The TUI is a thin face over the search events. The worker thread only iterates `job.events()` and
drops each event in an inbox; the inbox posts one `SearchEvents` message when it goes from empty to
non-empty, so a burst of thousands of candidate events costs one message. The UI drains the inbox,
updates a `LayerMap` and redraws at most ~15 times a second (log lines batched the same way).
Commands go the other way through `job.controller`, which the search polls between candidates.

Nothing here imports torch at module level: `replay` runs without it until `c` loads a model.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Label, Log
from textual.worker import Worker, WorkerState

from finercut_tui.domain.evals import describe_eval
from finercut_tui.domain.progress import SearchProgress
from finercut_tui.domain.text import clock, describe_event
from finercut_tui.errors import FinercutError
from finercut_tui.layer_map import CellState, LayerMap
from finercut_tui.search import events as E
from finercut_tui.session import Session
from finercut_tui.tui.grid import LayerGrid
from finercut_tui.tui.panels import (
    CellInfo,
    EvalTable,
    Legend,
    RankingTable,
    StatusBar,
    StatusInfo,
)
from finercut_tui.tui.screens import ConfirmScreen, EvalForm, EvalScreen, HelpScreen

LIVE_ACTIONS = frozenset({"toggle_pause", "step_once", "pin", "force_remove", "undo", "evaluate"})
REPLAY_ACTIONS = frozenset({"prev_step", "next_step", "first_step", "last_step", "continue_here"})
REDRAW_HZ = 15


@dataclasses.dataclass(frozen=True)
class WorkerFailed:
    """The search (or the model load) raised: one line for the UI."""

    text: str


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    if "out of memory" in text.lower():
        return (
            "out of GPU memory: try --batch-size 1, fewer --calib-samples, a shorter --seq-len or "
            "--prefix-cache cpu (the session holds every finished step)"
        )
    first = text.splitlines()[0] if text else ""
    if isinstance(exc, FinercutError):
        return first or type(exc).__name__
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class SearchEvents(Message):
    """Events are waiting in the inbox (one message per burst)."""


class EventInbox:
    """Thread-safe hand-over from the worker thread: posts a message only when it was empty."""

    def __init__(self, notify: Callable[[], None]) -> None:
        self._lock = threading.Lock()
        self._items: list[Any] = []
        self._pending = False
        self._notify = notify

    def put(self, item: Any) -> None:
        with self._lock:
            self._items.append(item)
            if self._pending:
                return
            self._pending = True
        self._notify()

    def take(self) -> list[Any]:
        with self._lock:
            items, self._items = self._items, []
            self._pending = False
        return items


class WorkbenchApp(App[int]):
    """finercut-tui: watch and steer a pruning search, or replay a saved one."""

    TITLE = "finercut-tui"
    CSS_PATH = ["app.tcss", "grid.tcss", "screens.tcss"]

    BINDINGS = [
        Binding("space", "toggle_pause", "Pause", key_display="space"),
        Binding("n", "step_once", "Step"),
        Binding("p", "pin", "Pin"),
        Binding("x", "force_remove", "Remove"),
        Binding("u", "undo", "Undo"),
        Binding("e", "evaluate", "Eval"),
        Binding("s", "save", "Save"),
        Binding("left,left_square_bracket", "prev_step", "Prev", key_display="←", priority=True),
        Binding("right,right_square_bracket", "next_step", "Next", key_display="→", priority=True),
        Binding("home", "first_step", "First", show=False, priority=True),
        Binding("end", "last_step", "Last", show=False, priority=True),
        Binding("c", "continue_here", "Continue"),
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Help", key_display="?"),
    ]

    def __init__(
        self,
        session: Session,
        session_path: str | Path | None = None,
        *,
        job: Any = None,
        replay_step: int | None = None,
        events: Iterable[Any] = (),
        clock: Callable[[], float] = time.monotonic,
        device: str | None = None,
        start_search: bool = True,
        model_overrides: dict[str, Any] | None = None,
    ) -> None:
        """`job`: run it live. No job and no `events`: replay `session`. `events`: a scripted live view
        (tests, demos): applied on start, no search runs."""
        super().__init__()
        self.session = session
        self.session_path = Path(session_path) if session_path is not None else None
        self.job = job
        self.scripted = list(events)
        self.mode = "live" if (job is not None or self.scripted) else "replay"
        self.clock = clock
        self.device = device
        self.start_search = start_search
        self.model_overrides = dict(model_overrides or {})
        self.replay_step = (
            len(session.steps) if replay_step is None else max(0, min(replay_step, len(session.steps)))
        )
        self.map = self._initial_map()
        self._inbox = EventInbox(lambda: self.post_message(SearchEvents()))
        self._log_lines: list[str] = []
        self._dirty = True
        self._search_alive = False
        self._loading = False
        self._quitting = False
        self._error: str | None = None
        self._started = clock()
        self._elapsed_before = sum(s.seconds or 0.0 for s in session.steps)
        self.progress = SearchProgress()
        self._eval_form = self._default_eval_form()

    # -- set-up ----------------------------------------------------------------------------------------
    def _initial_map(self) -> LayerMap:
        if self.mode == "replay":
            return LayerMap.from_session(self.session, self.replay_step)
        return LayerMap.from_session(self.session)

    def compose(self) -> ComposeResult:
        yield StatusBar(id="status")
        with Horizontal(id="body"):
            yield LayerGrid(self.map, id="grid")
            with Vertical(id="side"):
                yield CellInfo(id="cellinfo")
                yield Label("ranking", id="ranking-title", classes="side-title")
                yield RankingTable(id="ranking", cursor_type="none", show_cursor=False)
                yield Label("evaluations", id="evals-title", classes="side-title")
                yield EvalTable(id="evals", cursor_type="none", show_cursor=False)
                yield Legend(id="legend")
        yield Log(id="log", max_lines=5000)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        for table in (self.query_one(RankingTable), self.query_one(EvalTable)):
            table.can_focus = False
        self.query_one(Log).border_title = "log"
        self.query_one(LayerGrid).focus()
        self.query_one(Legend).show(self.query_one(LayerGrid).style_for)
        if self.mode == "replay":
            where = f" {self.session_path}" if self.session_path else ""
            self._log_line(
                f"replay of{where}: {len(self.session.steps)} steps, no model loaded (c continues from a step)"
            )
        if self.sub_title:
            self._log_line(self.sub_title)
        for event in self.scripted:
            self._apply(event)
        self.set_interval(1 / REDRAW_HZ, self._redraw)
        self.set_interval(1.0, self._tick)
        self._redraw(force=True)
        self.call_after_refresh(self._fit_grid)
        if self.job is not None and self.start_search:
            self.start_search_worker()

    def on_resize(self) -> None:
        self.call_after_refresh(self._fit_grid)

    def _fit_grid(self) -> None:
        """Give the grid the width its folded columns need; the side panel takes the rest."""
        body = self.query_one("#body")
        grid = self.query_one(LayerGrid)
        side_min = 36
        width = grid.preferred_width(max(20, body.size.width - side_min), body.size.height)
        if grid.styles.width is None or grid.styles.width.value != width:
            grid.styles.width = width

    def _default_eval_form(self) -> EvalForm:
        request = self.job.setup.schedule.request if self.job is not None else None
        if request is not None:
            return EvalForm(
                ppl=request.ppl or "",
                ppl_max_tokens=str(request.ppl_max_tokens or ""),
                tasks=",".join(request.tasks),
                tasks_dir=request.tasks_dir or "",
                limit="" if request.limit is None else str(request.limit),
            )
        return EvalForm(ppl="wikitext2", ppl_max_tokens="")

    # -- the search worker -----------------------------------------------------------------------------
    def start_search_worker(self) -> None:
        _leave_a_core_for_the_ui(self.job)
        self._search_alive = True
        self._started = self.clock()
        self._elapsed_before = sum(s.seconds or 0.0 for s in self.session.steps)
        self._run_search()
        self.refresh_bindings()

    @work(thread=True, exclusive=True, group="search", name="search", exit_on_error=False)
    def _run_search(self) -> None:
        """Iterate the job's events in this thread; every event is already saved in the session."""
        try:
            for event in self.job.events():
                self._inbox.put(event)
        except Exception as exc:  # noqa: BLE001 - shown in the app as one line; the session is intact
            self._inbox.put(WorkerFailed(one_line(exc)))

    @work(thread=True, exclusive=True, group="load", name="load", exit_on_error=False)
    def _load_job(self, session_path: Path) -> None:
        """Load the model for a session and build its job (replay's `c`)."""
        try:
            from finercut_tui.search.job import model_spec_from_session, prepare_job, setup_from_session

            session = Session.load(session_path)
            job = prepare_job(
                setup_from_session(session),
                model_spec_from_session(session, **self.model_overrides),
                session_path,
                resume=True,
                progress=lambda message: self._inbox.put(E.LogMessage(message)),
            )
        except Exception as exc:  # noqa: BLE001 - shown in the app; the replay stays usable
            self._inbox.put(WorkerFailed(one_line(exc)))
            return
        self.call_from_thread(self._job_ready, job)

    def _job_ready(self, job: Any) -> None:
        self._loading = False
        self.job = job
        self.mode = "live"
        self.session = job.session
        self.session_path = Path(job.session_path)
        self.map = LayerMap.from_session(job.session)
        self.query_one(LayerGrid).set_map(self.map)
        self._eval_form = self._default_eval_form()
        self._log_line(f"model loaded: continuing {self.session_path.name}")
        self.start_search_worker()
        self._dirty = True

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.name == "search" and event.state in (
            WorkerState.SUCCESS,
            WorkerState.ERROR,
            WorkerState.CANCELLED,
        ):
            self._search_alive = False
            self.refresh_bindings()
            self._dirty = True
            if self._quitting:
                self._finish_quit()
        elif event.worker.name == "load" and event.state in (WorkerState.ERROR, WorkerState.CANCELLED):
            self._loading = False
            self._dirty = True

    @property
    def search_running(self) -> bool:
        return self._search_alive

    # -- events ----------------------------------------------------------------------------------------
    def on_search_events(self, message: SearchEvents) -> None:
        for item in self._inbox.take():
            if isinstance(item, WorkerFailed):
                self._failed(item.text)
            else:
                self._apply(item)

    def _failed(self, text: str) -> None:
        self._error = text
        self._loading = False
        self._log_line(f"error: {text}")
        self.notify(text, title="error", severity="error", timeout=15)
        self._dirty = True

    def _elapsed(self) -> float:
        if self.mode == "replay":
            return sum(s.seconds or 0.0 for s in self.session.steps[: self.map.step - 1])
        return self._elapsed_before + (self.clock() - self._started)

    def _log_line(self, text: str) -> None:
        stamp = clock(self._elapsed()) if self.mode == "live" else ""
        self._log_lines.append(f"{stamp} {text}" if stamp else text)

    def _apply(self, event: Any) -> None:
        self.map.apply(event)
        self.progress.apply(event)
        self._dirty = True
        if isinstance(event, E.CandidateScored | E.CandidateStarted):
            return
        line = describe_event(event)
        if line:
            self._log_line(line)
        if isinstance(event, E.LogMessage) and event.level in ("warning", "error"):
            self.notify(event.text, severity="error" if event.level == "error" else "warning")
        elif isinstance(event, E.SearchFinished) and not self._quitting:
            self.notify(line or "search finished", title="search finished")
        elif isinstance(event, E.EvalFinished):
            self.notify(describe_eval(event.record), title=f"eval at step {event.step}")

    # -- drawing ---------------------------------------------------------------------------------------
    def _redraw(self, force: bool = False) -> None:
        """Redraw what changed since the last frame and write the buffered log lines."""
        if self._log_lines:
            lines, self._log_lines = self._log_lines, []
            self.query_one(Log).write_lines(lines)
        if not (self._dirty or force):
            return
        self._dirty = False
        with self.batch_update():
            grid = self.query_one(LayerGrid)
            grid.set_map(self.map)
            self._show_side()
            self._show_status()

    def _tick(self) -> None:
        self._show_status()

    def _show_side(self) -> None:
        grid = self.query_one(LayerGrid)
        self.query_one(CellInfo).show(grid.cursor_cell(), self.map)
        self.query_one(RankingTable).show(self.map)
        self.query_one(EvalTable).show(self.map.evals)
        title = self.query_one("#ranking-title", Label)
        if self.mode == "replay":
            k = self.map.step - 1
            if self.map.scores:
                title.update(f"after {k} removals: step {k + 1} ranking (lowest first)")
            elif k < len(self.session.steps):
                title.update(f"after {k} removals: step {k + 1} was chosen by hand")
            else:
                title.update(f"after {k} removals: the end of the session")
        else:
            step = self.map.scores_step
            if step is None:
                title.update("ranking (lowest = most removable)")
            elif self.map.step_open or step == self.map.step:
                title.update(f"step {step} ranking (lowest = most removable)")
            else:
                title.update(f"step {step} ranking (done; step {self.map.step} next)")

    def _state(self) -> str:
        if self._loading:
            return "loading model"
        if self.mode == "replay":
            return "replay"
        if self._quitting:
            return "quitting"
        if self._error:
            return "error"
        m = self.map
        if m.finished:
            return "finished" if m.finished in ("target", "exhausted") else m.finished
        if m.evaluating:
            return "evaluating"
        controller = getattr(self.job, "controller", None)
        if controller is not None:
            if controller.paused and m.paused:
                return "paused"
            if controller.paused:
                return "pausing"
            if m.paused:
                return "resuming"
        elif m.paused:
            return "paused"
        return "running"

    def _eta(self) -> float | None:
        return self.progress.eta_seconds() if self.mode == "live" else None

    def _device_text(self) -> str:
        if self.device is not None:
            return self.device
        if self.job is None:
            return "no model loaded" if self.mode == "replay" else ""
        loaded = getattr(self.job, "loaded", None)
        devices = sorted({str(d) for d in (getattr(loaded, "device_map", None) or {}).values()}) or ["?"]
        where = ",".join(devices) if len(devices) <= 3 else f"{devices[0]}..{devices[-1]}"
        return f"{where} · {_memory_text(devices)}"

    def _show_status(self) -> None:
        m = self.map
        name = self.session.model.name
        if self.sub_title:  # e.g. the demo says it runs a demo configuration
            name = f"{name} [{self.sub_title}]"
        info = StatusInfo(
            model=str(name),
            method=m.method,
            metric=m.metric,
            target=m.target,
            unit=m.unit_kind,
            mode=self.mode,
            state=self._state(),
            step=m.step,
            removals=len(m.removals),
            total_steps=len(self.session.steps),
            candidate=m.candidate_index,
            candidates=m.candidate_total if m.finished is None else 0,
            elapsed=self._elapsed(),
            eta=self._eta(),
            device=self._device_text(),
        )
        self.query_one(StatusBar).show(info)

    def on_layer_grid_cursor_moved(self, message: LayerGrid.CursorMoved) -> None:
        self.query_one(CellInfo).show(message.grid.cursor_cell(), self.map)

    # -- actions ---------------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in LIVE_ACTIONS:
            if self.mode != "live":
                return False
            return True if (self._search_alive and self.job is not None) else None
        if action in REPLAY_ACTIONS:
            if self.mode != "replay":
                return False
            return None if (self._loading and action == "continue_here") else True
        if action == "save":
            return False if self.mode == "replay" else (True if self.job is not None else None)
        return True

    def _controller(self) -> Any:
        return self.job.controller

    def _cursor_unit(self) -> tuple[str, Any]:
        cell = self.query_one(LayerGrid).cursor_cell()
        return cell.unit, cell

    def action_toggle_pause(self) -> None:
        paused = self._controller().toggle_pause()
        self._log_line("pausing after the current candidate" if paused else "resuming")
        self._dirty = True

    def action_step_once(self) -> None:
        self._controller().step()
        self._log_line("stepping: pause after the next removal")
        self._dirty = True

    def action_pin(self) -> None:
        unit, cell = self._cursor_unit()
        if cell.state is CellState.REMOVED:
            self.notify(f"{unit} is removed: undo (u) before pinning it", severity="warning")
            return
        if self.map.is_pinned(unit):
            self._controller().unpin(unit)
        else:
            self._controller().pin(unit)

    def action_force_remove(self) -> None:
        unit, cell = self._cursor_unit()
        if cell.state is CellState.REMOVED:
            self.notify(f"{unit} is already removed", severity="warning")
            return
        if cell.state is CellState.PINNED:
            self.notify(f"{unit} is pinned: unpin it (p) before removing it", severity="warning")
            return
        self._controller().force_remove(unit)
        self._log_line(f"removing {unit} by hand")

    def action_undo(self) -> None:
        if not self.map.removals:
            self.notify("nothing to undo", severity="warning")
            return
        self._controller().undo()

    def action_evaluate(self) -> None:
        self.push_screen(EvalScreen(self._eval_form), self._evaluate_with)

    def _evaluate_with(self, form: EvalForm | None) -> None:
        if form is None or self.job is None:
            return
        self._eval_form = form
        try:
            request = self._eval_request(form)
        except FinercutError as exc:
            self.notify(str(exc), title="cannot evaluate", severity="error")
            return
        self._controller().evaluate(request)
        self._log_line(f"evaluation queued: {request.describe()}")

    def _eval_request(self, form: EvalForm) -> Any:
        from finercut_tui.eval.request import EvalRequest

        def number(text: str, what: str, kind: type = int) -> Any:
            if not text:
                return None
            try:
                return kind(text)
            except ValueError:
                raise FinercutError(f"{what} must be a number, got {text!r}") from None

        fields = dict(
            ppl=form.ppl or None,
            ppl_max_tokens=number(form.ppl_max_tokens, "max tokens"),
            tasks=form.tasks,
            tasks_dir=form.tasks_dir or None,
            limit=number(form.limit, "limit", float),
        )
        base = self.job.setup.schedule.request
        if base is not None:
            return dataclasses.replace(base, **fields)
        calibration = self.session.calibration
        return EvalRequest(
            **fields,
            seed=self.session.spec.seed,
            calibration_source=calibration.source,
            calibration_split=calibration.split,
            calibration_text_sha256=calibration.text_sha256,
        )

    def action_save(self) -> None:
        try:
            self.job.save()
        except Exception as exc:  # noqa: BLE001 - a full disk must not kill the app
            self.notify(f"could not save: {one_line(exc)}", severity="error")
            return
        self.notify(f"saved {self.job.session_path}")

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    async def action_quit(self) -> None:
        if self.mode == "live" and self._search_alive:
            if self._quitting:  # second q: stop waiting for the worker
                self._finish_quit()
                return
            if self.map.evaluating:
                self.push_screen(
                    ConfirmScreen(
                        "An evaluation is running: quitting waits for it to finish, or press q again "
                        "to leave at once (its result is lost). Quit?"
                    ),
                    lambda yes: self._begin_quit() if yes else None,
                )
                return
            self._begin_quit()
            return
        self._finish_quit()

    def _begin_quit(self) -> None:
        self._quitting = True
        self._log_line("stopping: the search ends after the current candidate")
        self._controller().cancel()
        self._dirty = True
        if not self._search_alive:
            self._finish_quit()

    def _finish_quit(self) -> None:
        if self.job is not None:
            try:
                self.job.save()
            except Exception as exc:  # noqa: BLE001
                self.notify(f"could not save: {one_line(exc)}", severity="error")
                return
        self.exit(0)

    # replay
    def _show_step(self, k: int) -> None:
        k = max(0, min(k, len(self.session.steps)))
        self.replay_step = k
        self.map = LayerMap.from_session(self.session, k)
        self._dirty = True
        self._redraw()

    def action_prev_step(self) -> None:
        self._show_step(self.replay_step - 1)

    def action_next_step(self) -> None:
        self._show_step(self.replay_step + 1)

    def action_first_step(self) -> None:
        self._show_step(0)

    def action_last_step(self) -> None:
        self._show_step(len(self.session.steps))

    def continue_path(self, k: int) -> Path:
        path = self.session_path or Path("session.yaml")
        return path.with_name(f"{path.stem}-from-{k}{path.suffix or '.yaml'}")

    def action_continue_here(self) -> None:
        k = self.replay_step
        target = self.continue_path(k)
        if target.exists():
            self.notify(
                f"{target} exists: open it with `finercut-tui tui --resume --session {target}`",
                severity="error",
            )
            return
        self.push_screen(
            ConfirmScreen(
                f"Continue the search from step {k} in a new session {target.name}? This loads the model."
            ),
            lambda yes: self.continue_from(k) if yes else None,
        )

    def continue_from(self, k: int) -> Path:
        """Write the first k steps to `<name>-from-k.yaml` and resume it (loads the model)."""
        target = self.continue_path(k)
        origin = self.session_path.name if self.session_path else "a replay"
        self.session.continued_from(k, origin).save(target)
        self._log_line(f"wrote {target} ({k} steps); loading the model...")
        self._loading = True
        self._error = None
        self._dirty = True
        self.refresh_bindings()
        self._load_job(target)
        return target

    # -- command palette -------------------------------------------------------------------------------
    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        commands = [
            ("Pause / resume", "Pause the search after the current candidate, or resume it", "toggle_pause"),
            ("Step one removal", "Run until the next removal, then pause", "step_once"),
            ("Pin / unpin cell", "Never remove the sublayer under the cursor (or allow it again)", "pin"),
            ("Remove cell now", "Remove the sublayer under the cursor (recorded as manual)", "force_remove"),
            ("Undo last removal", "Restore the last removed sublayer", "undo"),
            ("Evaluate now", "Perplexity and/or lm-eval tasks on the current pruned model", "evaluate"),
            ("Save session", "Write the session file now", "save"),
            ("Previous step", "Replay: one removal back", "prev_step"),
            ("Next step", "Replay: one removal forward", "next_step"),
            ("First step", "Replay: the unpruned model", "first_step"),
            ("Last step", "Replay: all removals", "last_step"),
            (
                "Continue from this step",
                "Replay: continue the search from here in a new session",
                "continue_here",
            ),
            ("Help", "Keys and the meaning of the grid cells", "help"),
        ]
        for title, help_text, action in commands:
            if self.check_action(action, ()):
                yield SystemCommand(title, help_text, getattr(self, f"action_{action}"))


def _leave_a_core_for_the_ui(job: Any) -> None:
    """On CPU, torch's OpenMP threads spin on every core and starve the UI thread (a 2-core box ran
    the search ~20x slower): keep one core free for the interface."""
    torch = sys.modules.get("torch")
    device_map = getattr(getattr(job, "loaded", None), "device_map", None) or {}
    if torch is None or not device_map or any(str(d) not in ("cpu", "disk") for d in device_map.values()):
        return
    cores = os.cpu_count() or 1
    if cores > 1 and torch.get_num_threads() >= cores:
        torch.set_num_threads(cores - 1)


def _memory_text(devices: list[str]) -> str:
    """GPU memory allocated by torch when on CUDA, else this process's resident memory."""
    torch = sys.modules.get("torch")
    if torch is not None and any(d.isdigit() or d.startswith("cuda") for d in devices):
        try:
            if torch.cuda.is_available():
                used = sum(torch.cuda.memory_allocated(i) for i in range(torch.cuda.device_count()))
                total = sum(
                    torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())
                )
                return f"{used / 2**30:.1f}/{total / 2**30:.0f} GiB"
        except Exception:  # noqa: BLE001 - the header must never fail
            pass
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return f"RSS {pages * os.sysconf('SC_PAGE_SIZE') / 2**30:.1f} GiB"
    except (OSError, ValueError, IndexError):
        return ""
