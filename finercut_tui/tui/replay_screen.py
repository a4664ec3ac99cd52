"""The replay screen: step through a saved session with no model loaded (no torch imported).

`c` continues the search from the shown step: the session's first k steps go to a new session file
(`Session.continued_from`), a thread worker loads the model, and the app switches to the live screen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual import work
from textual.worker import Worker, WorkerState

from finercut_tui.domain import events as E
from finercut_tui.domain.text import describe_event
from finercut_tui.layer_map import Difference, LayerMap, overlay_differences
from finercut_tui.session import Session
from finercut_tui.tui import actions
from finercut_tui.tui.grid import LayerGrid
from finercut_tui.tui.inbox import JobReady, WorkerFailed, one_line
from finercut_tui.tui.panels import ScreenState
from finercut_tui.tui.screens import ConfirmScreen, OverlayScreen
from finercut_tui.tui.workbench import WorkbenchScreen


class ReplayScreen(WorkbenchScreen):
    """One step of a saved session: the removed set, and the ranking the next step chose from."""

    KIND = actions.REPLAY
    BINDINGS = actions.bindings(actions.REPLAY)

    def __init__(
        self,
        session: Session,
        session_path: str | Path | None,
        *,
        step: int | None = None,
        model_overrides: dict[str, Any] | None = None,
        **view: Any,
    ) -> None:
        """`step`: shown first (default: the last). `model_overrides`: device / dtype when continuing."""
        last = len(session.steps)
        shown = last if step is None else max(0, min(step, last))
        super().__init__(session, session_path, LayerMap.from_session(session, shown), **view)
        self.step = shown
        self.model_overrides = dict(model_overrides or {})
        self.loading_from: int | None = None  # the step a continued session starts from, while it loads
        self.overlay: Session | None = None  # a second session laid over this one (`o`)
        self.overlay_path: Path | None = None

    @property
    def last_step(self) -> int:
        return len(self.session.steps)

    # -- what the screen shows -------------------------------------------------------------------------
    def greeting(self) -> list[str]:
        where = f" {self.session_path}" if self.session_path else ""
        return [f"replay of{where}: {self.last_step} steps, no model loaded (c continues from a step)"]

    def state(self) -> ScreenState:
        return ScreenState.LOADING if self.loading_from is not None else ScreenState.REPLAY

    def elapsed(self) -> float:
        return sum(s.seconds or 0.0 for s in self.session.steps[: self.map.step - 1])

    def device_text(self) -> str:
        if self.overlay is not None and self.overlay_path is not None:
            return f"overlay {self.overlay_path.name}: {len(self.differences())} differ"
        return self.device if self.device is not None else "no model loaded"

    def differences(self) -> dict[str, Difference]:
        if self.overlay is None:
            return {}
        return overlay_differences(self.session, self.overlay, self.step)

    def overlay_legend(self) -> list[Text]:
        if self.overlay is None or self.overlay_path is None:
            return []
        grid = self.query_one(LayerGrid)
        found = list(self.differences().values())
        here = sum(d.here for d in found)
        items = []
        for mark, is_here, label in (
            ("×k≠", True, f"removed here only ({here})"),
            ("⊘k", False, f"removed in {self.overlay_path.name} only ({len(found) - here})"),
        ):
            item = Text()
            item.append(mark, grid.overlay_style(is_here))
            item.append(f" {label}")
            items.append(item)
        return items

    def ranking_title(self) -> str:
        k = self.map.step - 1
        if self.map.scores:
            return f"after {k} removals: step {k + 1} ranking (lowest first)"
        if k < self.last_step:
            return f"after {k} removals: step {k + 1} was chosen by hand"
        return f"after {k} removals: the end of the session"

    def show_step(self, k: int) -> None:
        self.step = max(0, min(k, self.last_step))
        self.map = LayerMap.from_session(self.session, self.step)
        self.changed()
        self.redraw()

    # -- why an action cannot run now ------------------------------------------------------------------
    def why_not_prev_step(self) -> str | None:
        return "this is step 0, the unpruned model" if self.step == 0 else None

    def why_not_next_step(self) -> str | None:
        if self.step < self.last_step:
            return None
        return f"this is the last step ({self.last_step}): c continues the search from here"

    why_not_first_step = why_not_prev_step
    why_not_last_step = why_not_next_step

    def why_not_continue_here(self) -> str | None:
        if self.loading_from is not None:
            return f"the model is loading to continue from step {self.loading_from}"
        target = self.continue_path(self.step)
        if target.exists():
            return f"{target} exists: open it with `finercut-tui tui --resume --session {target}`"
        return None

    def not_here(self, action: actions.Action) -> str:
        if self.loading_from is not None:
            return f"{action.title.lower()}: the model is loading; the search starts in a moment"
        return (
            f"{action.title.lower()} needs a running search: this is a replay of a saved session; "
            f"c continues the search from step {self.step}"
        )

    # -- actions ---------------------------------------------------------------------------------------
    def action_prev_step(self) -> None:
        self.show_step(self.step - 1)

    def action_next_step(self) -> None:
        self.show_step(self.step + 1)

    def action_first_step(self) -> None:
        self.show_step(0)

    def action_last_step(self) -> None:
        self.show_step(self.last_step)

    def action_quit(self) -> None:
        self.app.exit(0)

    def action_overlay(self) -> None:
        if self.overlay is not None:
            self.log_line(f"overlay of {self.overlay_path} cleared")
            self.overlay = self.overlay_path = None
            self.changed()
            self.redraw()
            return
        question = (
            "Lay which session over this one? It must be a session of the same model; the grid marks "
            "where the two differ at the shown step (o again clears)."
        )
        self.app.push_screen(OverlayScreen(question), self.set_overlay)

    def set_overlay(self, path: str | Path | None) -> bool:
        """Lay the session at `path` over this one; a one-line notification when it cannot be."""
        if path is None:
            return False
        path = Path(path)
        try:
            other = Session.load(path)
        except Exception as exc:  # noqa: BLE001 - any unreadable file: say so, the replay stays as it was
            self.notify(f"cannot overlay {path}: {one_line(exc)}", title="o: overlay", severity="warning")
            return False
        mine = (self.session.num_blocks, self.session.model.architecture)
        theirs = (other.num_blocks, other.model.architecture)
        if theirs != mine:
            self.notify(
                f"{path.name} is a session of another model ({theirs[1]}, {theirs[0]} blocks; this one: "
                f"{mine[1]}, {mine[0]} blocks)",
                title="o: overlay",
                severity="warning",
            )
            return False
        self.overlay, self.overlay_path = other, path
        self.log_line(
            f"overlay {path}: {len(self.differences())} sublayers differ at step {self.step} "
            "(×k≠ removed here only, ⊘k removed there only; o clears)"
        )
        self.changed()
        self.redraw()
        return True

    def continue_path(self, k: int) -> Path:
        path = self.session_path or Path("session.yaml")
        return path.with_name(f"{path.stem}-from-{k}{path.suffix or '.yaml'}")

    def action_continue_here(self) -> None:
        k = self.step
        question = (
            f"Continue the search from step {k} in a new session {self.continue_path(k).name}? "
            "This loads the model."
        )
        self.app.push_screen(ConfirmScreen(question), lambda yes: self.continue_from(k) if yes else None)

    def continue_from(self, k: int) -> Path:
        """Write the first k steps to `<name>-from-k.yaml` and resume it (loads the model)."""
        target = self.continue_path(k)
        origin = self.session_path.name if self.session_path else "a replay"
        self.session.continued_from(k, origin).save(target)
        self.log_line(f"wrote {target} ({k} steps); loading the model...")
        self.loading_from = k
        self.error = None
        self.changed()
        self._load_job(target)
        return target

    @work(thread=True, exclusive=True, group="load", name="load", exit_on_error=False)
    def _load_job(self, session_path: Path) -> None:
        """Load the model for a session and build its job."""
        try:
            from finercut_tui.search.job import model_spec_from_session, prepare_job, setup_from_session

            session = Session.load(session_path)
            job = prepare_job(
                setup_from_session(session),
                model_spec_from_session(session, **self.model_overrides),
                session_path,
                resume=True,
                progress=lambda message: self.inbox.put(E.LogMessage(message)),
            )
        except Exception as exc:  # noqa: BLE001 - shown in the app; the replay stays usable
            self.inbox.put(WorkerFailed(one_line(exc)))
            return
        self.inbox.put(JobReady(job))

    def receive(self, item: Any) -> None:
        if isinstance(item, JobReady):
            self.app.continue_live(item.job, self)
        elif isinstance(item, WorkerFailed):
            self.error = item.text
            self.loading_from = None
            self.log_line(f"error: {item.text}")
            self.notify(item.text, title="error", severity="error", timeout=15)
            self.changed()
        else:
            self.log_line(describe_event(item))

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.name == "load" and event.state in (WorkerState.ERROR, WorkerState.CANCELLED):
            self.loading_from = None
            self.changed()
