"""The workbench app: a live search (LiveScreen) or a replay of a saved session (ReplayScreen).

The app only picks the first screen, switches from a replay to the live screen when `c` has loaded
the model, and routes the command palette and Textual's own quit to the screen shown. The screens own
their state and their keys; every key, palette command and help line comes from `actions.ACTIONS`.

Nothing here imports torch at module level: `replay` runs without it until `c` loads a model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from textual.app import App, SystemCommand
from textual.screen import Screen

from finercut_tui.layer_map import LayerMap
from finercut_tui.session import Session
from finercut_tui.tui.grid import LayerGrid
from finercut_tui.tui.live_screen import LiveScreen
from finercut_tui.tui.replay_screen import ReplayScreen
from finercut_tui.tui.workbench import WorkbenchScreen


class WorkbenchApp(App[int]):
    """finercut-tui: watch and steer a pruning search, or replay a saved one."""

    TITLE = "finercut-tui"
    CSS_PATH = ["app.tcss", "grid.tcss", "screens.tcss"]
    DEFAULT_MODE = "first"  # the screen the app opens with; a continued replay goes on in mode "live"

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
        """`job`: run it live. No job and no `events`: replay `session` (at `replay_step`, default the
        last). `events`: a scripted live view (tests, demos): applied on start, no search runs."""
        super().__init__()
        self.clock = clock
        self.device = device
        events = list(events)
        first: WorkbenchScreen
        if job is not None or events:
            live = dict(job=job, events=events, clock=clock, start_search=start_search, device=device)
            first = LiveScreen(session, session_path, **live)
        else:
            first = ReplayScreen(
                session, session_path, step=replay_step, model_overrides=model_overrides, device=device
            )
        self.workbench = first  # the screen shown (a modal dialog may lie over it)
        self.add_mode("first", lambda: first)

    def continue_live(self, job: Any, replay: ReplayScreen) -> None:
        """The model of a continued replay is loaded: show the live screen and start its search."""
        live = LiveScreen(
            job.session,
            job.session_path,
            job=job,
            clock=self.clock,
            device=self.device,
            history=[*replay.log_history(), f"model loaded: continuing {Path(job.session_path).name}"],
            cursor=replay.query_one(LayerGrid).cursor_position,
        )
        self.workbench = live
        self.add_mode("live", lambda: live)
        self.switch_mode("live")
        self.remove_mode("first")  # the replay goes, with any dialog open over it

    # -- what the commands and the tests read ----------------------------------------------------------
    @property
    def search_running(self) -> bool:
        return isinstance(self.workbench, LiveScreen) and self.workbench.search_alive

    @property
    def job(self) -> Any:
        return getattr(self.workbench, "job", None)

    @property
    def session(self) -> Session:
        return self.workbench.session

    @property
    def map(self) -> LayerMap:
        return self.workbench.map

    @property
    def replay_step(self) -> int | None:
        return self.workbench.step if isinstance(self.workbench, ReplayScreen) else None

    # -- Textual's own commands ------------------------------------------------------------------------
    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        if isinstance(screen, WorkbenchScreen):
            yield from screen.palette_commands()

    async def action_quit(self) -> None:
        """ctrl+q and the palette's Quit quit like q: a live search is saved first."""
        self.workbench.action_quit()
