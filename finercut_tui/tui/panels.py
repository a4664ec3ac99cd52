"""The widgets around the grid: status header, cell details, this step's ranking, eval history, legend."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from rich.style import Style
from rich.text import Text
from textual.widgets import DataTable, Static
from textual_plotext import PlotextPlot

from finercut_tui.curves import Series, draw_series
from finercut_tui.domain.evals import EvalRecord, describe_eval, fmt_value, retained_text
from finercut_tui.domain.records import HealRecord
from finercut_tui.domain.repairs import RepairRecord
from finercut_tui.domain.text import clock, fmt_score
from finercut_tui.layer_map import BARS, LEGEND, LEVELS, Cell, CellState, LayerMap


@dataclass
class StatusInfo:
    """Everything the header shows, gathered by the app."""

    model: str
    method: str
    metric: str | None
    target: int | None
    unit: str
    mode: str  # "live" | "replay"
    state: ScreenState
    step: int
    removals: int
    total_steps: int | None = None  # replay
    candidate: int = 0
    candidates: int = 0
    elapsed: float | None = None
    eta: float | None = None
    device: str = ""


class ScreenState(StrEnum):
    """What the header says the workbench is doing; each state has its own style."""

    LOADING = "loading model"
    RUNNING = "running"
    PAUSING = "pausing"  # asked to pause; the current candidate finishes first
    PAUSED = "paused"
    RESUMING = "resuming"
    EVALUATING = "evaluating"
    FINISHED = "finished"  # reached its target, or ran out of candidates
    CANCELLED = "cancelled"
    ERROR = "error"
    QUITTING = "quitting"
    REPLAY = "replay"

    @property
    def style(self) -> str:
        return _STATE_STYLE[self]

    @property
    def ended(self) -> bool:
        """The search is over: the header counts removals, not the step in flight."""
        return self in (ScreenState.FINISHED, ScreenState.CANCELLED, ScreenState.ERROR)


_STATE_STYLE = {
    ScreenState.LOADING: "bold blue",
    ScreenState.RUNNING: "bold green",
    ScreenState.PAUSING: "yellow",
    ScreenState.PAUSED: "bold yellow",
    ScreenState.RESUMING: "green",
    ScreenState.EVALUATING: "bold magenta",
    ScreenState.FINISHED: "bold cyan",
    ScreenState.CANCELLED: "bold yellow",
    ScreenState.ERROR: "bold red",
    ScreenState.QUITTING: "bold yellow",
    ScreenState.REPLAY: "bold cyan",
}


class StatusBar(Static):
    """Two lines: what runs (model, method, target, state) and where it is (step, candidate, time, device)."""

    def show(self, info: StatusInfo) -> None:
        line1 = Text(no_wrap=True, overflow="ellipsis")
        line1.append(" finercut ", "reverse bold")
        line1.append(f" {info.state} ", info.state.style)
        line1.append(f" {info.model} ", "bold")
        method = info.method + (f"/{info.metric}" if info.metric else "")
        line1.append(f" {method} ")
        if info.target is not None:
            line1.append(f" target {info.target}" + (" blocks " if info.unit == "block" else " "))
        line2 = Text(no_wrap=True, overflow="ellipsis")
        if info.mode == "replay":
            line2.append(f" step {info.removals}/{info.total_steps}", "bold")
        else:
            shown = info.removals if info.state.ended else info.step
            line2.append(f" step {shown}/{info.target if info.target is not None else '?'}", "bold")
            if info.candidates:
                line2.append(f"  cand {info.candidate}/{info.candidates}")
        line2.append(f"  elapsed {clock(info.elapsed)}")
        if info.mode != "replay":
            line2.append(f"  ETA {clock(info.eta)}")
        if info.device:
            line2.append(f"  {info.device}", "dim")
        text = Text("\n").join([line1, line2])
        text.no_wrap, text.overflow = True, "ellipsis"
        self.update(text)


class CellInfo(Static):
    """What the cursor is on."""

    def show(self, cell: Cell, layer_map: LayerMap) -> None:
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(f"{cell.sid:<8}", "bold")
        if cell.unit != cell.sid:
            text.append(f"({cell.unit}) ")
        if cell.state is CellState.REMOVED:
            text.append(f"removed at step {cell.step} by {cell.by}")
            if cell.score is not None:
                text.append(f", score {fmt_score(cell.score)}")
        elif cell.state is CellState.PINNED:
            text.append("pinned: never removed (p to unpin)")
        elif cell.state is CellState.HELD:
            text.append("held back by front exclusion")
        elif cell.score is not None:
            ranking = [u for u, _ in layer_map.ranking()]
            rank = ranking.index(cell.unit) + 1 if cell.unit in ranking else None
            text.append(f"score {fmt_score(cell.score)}")
            if rank is not None:
                text.append(f", rank {rank}/{len(ranking)}")
            if cell.state is CellState.RUNNING:
                text.append(" (scoring)")
        elif cell.state is CellState.RUNNING:
            text.append("being scored now")
        elif cell.state is CellState.PENDING:
            text.append("not scored yet this step")
        else:
            text.append("kept")
        self.update(text)


class RankingTable(DataTable):
    """This step's scores, lowest (most removable) first."""

    def on_mount(self) -> None:
        self.add_columns("#", "unit", "score", "")

    def show(self, layer_map: LayerMap) -> None:
        rows = []
        for rank, (unit, score) in enumerate(layer_map.ranking(), 1):
            if layer_map.is_removed(unit):
                mark = "×"
            elif layer_map.is_pinned(unit):
                mark = "◆"
            elif unit == layer_map.next_unit:
                mark = "→ next"
            else:
                mark = ""
            rows.append((str(rank), unit, fmt_score(score), mark))
        self.clear()
        self.add_rows(rows)


def before_after_row(
    label: str, before: EvalRecord | None, after: EvalRecord | None, fallback: str
) -> tuple[str, str, str]:
    """`heal@10`, `50.4% -> 79.3%`, `ppl:pydoc 42.97 -> 27.29`: evaluations before and after a change
    of the pruned model (a heal, a repair); `fallback` when neither was evaluated."""

    def kept(record: EvalRecord | None) -> str:
        return "-" if record is None or record.failed else retained_text(record)

    if after is not None and after.failed:
        results = describe_eval(after, width=60)
    else:
        names = list(dict.fromkeys([*(before.results if before else {}), *(after.results if after else {})]))
        parts = []
        for name in names:
            old = before.results.get(name) if before is not None else None
            new = after.results.get(name) if after is not None else None
            parts.append(
                f"{name} {fmt_value(old) if old is not None else '-'} -> {fmt_value(new) if new is not None else '-'}"
            )
        results = ", ".join(parts) or fallback
    return label, f"{kept(before)} -> {kept(after)}", results or "-"


def heal_row(heal: HealRecord) -> tuple[str, str, str]:
    loss = ""
    if heal.first_loss is not None and heal.final_loss is not None:
        loss = f"loss {heal.first_loss:.3f} -> {heal.final_loss:.3f} (not evaluated)"
    return before_after_row(f"heal@{heal.step}", heal.before, heal.after, loss)


def repair_row(repair: RepairRecord) -> tuple[str, str, str]:
    patched = sum(p.sublayer is not None for p in repair.patches)
    return before_after_row(
        f"repair@{repair.step}", repair.before, repair.after, f"{patched} patches (not evaluated)"
    )


class EvalTable(DataTable):
    """Evaluations so far with the score retained against the dense model, and the heals and repairs
    beside them."""

    def on_mount(self) -> None:
        self.add_columns("step", "kept", "results")

    def show(
        self, evals: list[EvalRecord], heals: Sequence[HealRecord] = (), repairs: Sequence[RepairRecord] = ()
    ) -> None:
        rows = [(e.step, 0, (str(e.step), retained_text(e), describe_eval(e, width=60))) for e in evals]
        rows += [(h.step, 1, heal_row(h)) for h in heals]  # a heal after the unhealed eval of its step
        rows += [(r.step, 2, repair_row(r)) for r in repairs]
        self.clear()
        self.add_rows(row for _, _, row in sorted(rows, key=lambda r: (r[0], r[1])))


class CurvesPlot(PlotextPlot):
    """One chart of the session's curves (plotext through textual-plotext), redrawn when its data change."""

    _drawn: tuple | None = None

    def draw(self, title: str, series: list[Series], log_y: bool = False, mark: int | None = None) -> None:
        """`series` against removals; `mark`: a vertical line at this removal count (the shown step)."""
        key = (title, tuple(series), log_y, mark)
        if key == self._drawn:
            return
        self._drawn = key
        plt = self.plt
        plt.clear_figure()
        drawn = [s for s in series if s.points]
        draw_series(plt, drawn, log_y, ticks=4)
        if mark is not None and drawn:
            plt.vline(mark, "gray")
        plt.xlabel("removals")
        self.refresh()


class Legend(Static):
    """What the glyphs and colours of the grid mean (styled like the grid), packed into lines."""

    _style_for: Callable[[Cell], Style] | None = None
    _overlay: tuple[Text, ...] = ()

    def show(self, style_for: Callable[[Cell], Style]) -> None:
        self._style_for = style_for
        self._layout()

    def set_overlay(self, items: list[Text]) -> None:
        """Items that explain an overlay's marks, shown first ([] when there is no overlay)."""
        self._overlay = tuple(items)
        self._layout()

    def on_resize(self) -> None:
        self._layout()

    def _items(self) -> list[Text]:
        assert self._style_for is not None
        items = [item.copy() for item in self._overlay]
        for state, label in LEGEND:
            item = Text()
            if state is CellState.SCORED:
                for level in (0, 2, 5, LEVELS - 1):
                    item.append(BARS[level], self._style_for(Cell("0.attn", "0.attn", state, level=level)))
            elif state is CellState.REMOVED:
                item.append("×k", self._style_for(Cell("0.attn", "0.attn", state, step=1)))
            else:
                glyph = Cell("0.attn", "0.attn", state).text(2).strip() or "·"
                item.append(glyph, self._style_for(Cell("0.attn", "0.attn", state)))
            item.append(f" {label}")
            items.append(item)
        return items

    def _layout(self) -> None:
        if self._style_for is None:
            return
        width = max(20, self.content_region.width or 36)
        lines: list[Text] = [Text()]
        for item in self._items():
            line = lines[-1]
            if line.cell_len and line.cell_len + 2 + item.cell_len > width:
                lines.append(Text())
                line = lines[-1]
            if line.cell_len:
                line.append("  ")
            line.append_text(item)
        self.update(Text("\n").join(lines))
