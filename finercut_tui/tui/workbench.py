"""What the live and the replay screen share: the layout (status, grid, side panel, log, footer), the
redraw at most ~15 times a second, and the actions of the table in actions.py.

A subclass sets `KIND` (actions.LIVE or actions.REPLAY) and answers `state()`, `elapsed()`,
`ranking_title()`, `receive(item)` for what a worker thread hands over, `why_not_<action>()` for the
actions it offers and `not_here(action)` for those it does not.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

from textual import events
from textual.app import ComposeResult, SystemCommand
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Label, Log

from finercut_tui.curves import Series, session_panels
from finercut_tui.domain.records import HealRecord
from finercut_tui.domain.repairs import RepairRecord
from finercut_tui.domain.text import clock
from finercut_tui.layer_map import Cell, Difference, LayerMap
from finercut_tui.session import Session
from finercut_tui.tui import actions
from finercut_tui.tui.grid import LayerGrid
from finercut_tui.tui.inbox import EventInbox, SearchEvents
from finercut_tui.tui.panels import (
    CellInfo,
    CurvesPlot,
    EvalTable,
    Legend,
    RankingTable,
    ScreenState,
    StatusBar,
    StatusInfo,
)
from finercut_tui.tui.screens import HelpScreen

REDRAW_HZ = 15


class WorkbenchScreen(Screen[None]):
    """The grid of a session's blocks with its ranking, evaluations and log."""

    KIND: ClassVar[str]

    def __init__(
        self,
        session: Session,
        session_path: str | Path | None,
        layer_map: LayerMap,
        *,
        device: str | None = None,
        history: Iterable[str] = (),
        cursor: tuple[int, int] = (0, 0),
    ) -> None:
        """`device`: the header's device text (fixed, for tests); `history`: log lines to start with
        (a replay that continues hands its log to the live screen), `cursor`: (block, kind index)."""
        super().__init__()
        self.session = session
        self.session_path = Path(session_path) if session_path is not None else None
        self.map = layer_map
        self.device = device
        self.error: str | None = None
        self.inbox = EventInbox(lambda: self.post_message(SearchEvents()))
        self._history = list(history)
        self._cursor = cursor
        self._log_lines: list[str] = []
        self._dirty = True
        self._availability: tuple[bool, ...] = ()
        self.curves: str | None = None  # the title of the curve the side panel shows; None: the ranking

    # -- what a subclass answers -----------------------------------------------------------------------
    def state(self) -> ScreenState:
        raise NotImplementedError

    def elapsed(self) -> float | None:
        raise NotImplementedError

    def eta(self) -> float | None:
        return None

    def device_text(self) -> str:
        return self.device or ""

    def ranking_title(self) -> str:
        raise NotImplementedError

    def greeting(self) -> list[str]:
        """The first log lines."""
        return []

    def started(self) -> None:
        """Called once the screen is drawn."""

    def receive(self, item: Any) -> None:
        """One item a worker thread put in the inbox."""
        raise NotImplementedError

    def not_here(self, action: actions.Action) -> str:
        """Why an action of the other screen does nothing here (one line)."""
        raise NotImplementedError

    def differences(self) -> dict[str, Difference]:
        """Where a session laid over this one differs (the replay's overlay); {} when none is."""
        return {}

    def overlay_legend(self) -> list:
        """Legend items for the overlay's marks ([] when there is none)."""
        return []

    def heals_shown(self) -> list[HealRecord]:
        """The session's heals of the models up to the shown number of removals."""
        return [h for h in self.session.heals if h.step <= len(self.map.removals)]

    def repairs_shown(self) -> list[RepairRecord]:
        """The session's repairs of the models up to the shown number of removals."""
        return [r for r in self.session.repairs if r.step <= len(self.map.removals)]

    def curve_mark(self) -> int | None:
        """The removal count the curves mark with a vertical line (the shown step)."""
        return len(self.map.removals)

    def curve_panels(self) -> list[tuple[str, list[Series], bool]]:
        """(title, series, log y) of each curve this session has points for, in the order `g` shows them."""
        return [p for p in session_panels([("", self.session)]) if any(s.points for s in p[1])]

    # -- layout ----------------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield StatusBar(id="status")
        with Horizontal(id="body"):
            grid = LayerGrid(self.map, id="grid")
            grid.cursor_block, grid.cursor_kind = self._cursor
            yield grid
            with Vertical(id="side"):
                yield CellInfo(id="cellinfo")
                yield Label("ranking", id="ranking-title", classes="side-title")
                yield RankingTable(id="ranking", cursor_type="none", show_cursor=False)
                yield CurvesPlot(id="curves")
                yield Label("evaluations", id="evals-title", classes="side-title")
                yield EvalTable(id="evals", cursor_type="none", show_cursor=False)
                yield Legend(id="legend")
        yield Log(id="log", max_lines=5000)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        for table in (self.query_one(RankingTable), self.query_one(EvalTable)):
            table.can_focus = False
        self.query_one(Log).border_title = "log"
        grid = self.query_one(LayerGrid)
        grid.focus()
        self.query_one(Legend).show(grid.style_for)
        if self._history:
            self._log_lines.extend(self._history)
        else:
            for line in self.greeting():
                self.log_line(line)
            if self.app.sub_title:  # e.g. the demo says it runs a demo configuration
                self.log_line(self.app.sub_title)
        self.set_interval(1 / REDRAW_HZ, self.redraw)
        self.set_interval(1.0, self.show_status)
        self.started()
        self.redraw(force=True)
        self.call_after_refresh(self._fit_grid)

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

    # -- drawing ---------------------------------------------------------------------------------------
    def log_line(self, text: str) -> None:
        """Add a line to the log (written at the next frame), stamped with the search clock when live."""
        stamp = clock(self.elapsed()) if self.KIND == actions.LIVE else ""
        self._log_lines.append(f"{stamp} {text}" if stamp else text)

    def log_history(self) -> list[str]:
        """Every log line so far, written or not."""
        return [str(line) for line in self.query_one(Log).lines] + self._log_lines

    def changed(self) -> None:
        """Something shown changed: redraw at the next frame."""
        self._dirty = True

    def redraw(self, force: bool = False) -> None:
        """Redraw what changed since the last frame and write the buffered log lines."""
        if self._log_lines:
            lines, self._log_lines = self._log_lines, []
            self.query_one(Log).write_lines(lines)
        if not (self._dirty or force):
            return
        self._dirty = False
        with self.app.batch_update():
            self.query_one(LayerGrid).set_map(self.map)
            self.query_one(CellInfo).show(self.cursor_cell(), self.map)
            self.query_one(RankingTable).show(self.map)
            self.query_one(EvalTable).show(self.map.evals, self.heals_shown(), self.repairs_shown())
            grid = self.query_one(LayerGrid)
            grid.set_overlay(self.differences())
            self.query_one(Legend).set_overlay(self.overlay_legend())
            self.show_side()
            self.show_status()
        self.refresh_availability()

    def show_side(self) -> None:
        """The side panel: the ranking (with the evaluations), or the curve `g` picked."""
        panel = next((p for p in self.curve_panels() if p[0] == self.curves), None) if self.curves else None
        if self.curves is not None and panel is None:  # the curve has no points here (any more)
            self.curves = None
        showing = panel is not None
        for selector in ("#ranking", "#evals-title", "#evals"):
            self.query_one(selector).display = not showing
        plot = self.query_one(CurvesPlot)
        plot.display = showing
        title = self.query_one("#ranking-title", Label)
        if panel is None:
            title.update(self.ranking_title())
            return
        name, series, log_y = panel
        title.update(f"{name} (g: next)")
        plot.draw(name, series, log_y, self.curve_mark())

    def show_status(self) -> None:
        m = self.map
        name = str(self.session.model.name)
        if self.app.sub_title:  # e.g. the demo says it runs a demo configuration
            name = f"{name} [{self.app.sub_title}]"
        info = StatusInfo(
            model=name,
            method=m.method,
            metric=m.metric,
            target=m.target,
            unit=m.unit_kind,
            mode=self.KIND,
            state=self.state(),
            step=m.step,
            removals=len(m.removals),
            total_steps=len(self.session.steps),
            candidate=m.candidate_index,
            candidates=m.candidate_total if m.finished is None else 0,
            elapsed=self.elapsed(),
            eta=self.eta(),
            device=self.device_text(),
        )
        self.query_one(StatusBar).show(info)

    def cursor_cell(self) -> Cell:
        return self.query_one(LayerGrid).cursor_cell()

    def on_layer_grid_cursor_moved(self, message: LayerGrid.CursorMoved) -> None:
        self.query_one(CellInfo).show(message.grid.cursor_cell(), self.map)
        self.refresh_availability()

    def on_search_events(self, message: SearchEvents) -> None:
        for item in self.inbox.take():
            self.receive(item)

    # -- actions ---------------------------------------------------------------------------------------
    def why_not(self, name: str) -> str | None:
        """None when the action `name` can run now, else one line saying why not."""
        action = actions.BY_NAME[name]
        if self.KIND not in action.screens:
            return self.not_here(action)
        check = getattr(self, f"why_not_{name}", None)
        return check() if check is not None else None

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Footer and palette: an action of the other screen is hidden, one that cannot run now dimmed."""
        entry = actions.BY_NAME.get(action)
        if entry is None:
            return True
        if self.KIND not in entry.screens:
            return False
        return self.why_not(action) is None or None

    def refresh_availability(self) -> None:
        """Update the footer when an action became available or unavailable."""
        now = tuple(self.why_not(a.name) is None for a in actions.offered(self.KIND))
        if now != self._availability:
            self._availability = now
            self.refresh_bindings()

    def on_key(self, event: events.Key) -> None:
        """A key of the table that nothing takes now says why (the bindings run after this handler)."""
        action = actions.BY_KEY.get(event.key)
        if action is None:
            return
        active = self.active_bindings.get(event.key)
        if active is not None and active.enabled:
            return  # a binding (this action's, or the grid's cursor) takes the key
        reason = self.why_not(action.name)
        if reason:
            event.stop()
            event.prevent_default()
            self.notify(reason, title=f"{action.shown_key}: {action.label.lower()}", severity="warning")

    def palette_commands(self) -> Iterable[SystemCommand]:
        """The actions of this screen that can run now, for the command palette."""
        for action in actions.offered(self.KIND):
            if action.title and self.why_not(action.name) is None:
                yield SystemCommand(action.title, action.help, getattr(self, f"action_{action.name}"))

    def why_not_toggle_curves(self) -> str | None:
        if self.curves is None and not self.curve_panels():
            return "no curves yet: this session has no evaluations and no scored steps"
        return None

    def action_toggle_curves(self) -> None:
        """Ranking -> each curve with points -> the ranking again."""
        titles = [p[0] for p in self.curve_panels()]
        if self.curves in titles:
            i = titles.index(self.curves) + 1
            self.curves = titles[i] if i < len(titles) else None
        else:
            self.curves = titles[0] if titles else None
        self.changed()
        self.redraw()

    def action_help(self) -> None:
        if not isinstance(self.app.screen, HelpScreen):
            self.app.push_screen(HelpScreen())
