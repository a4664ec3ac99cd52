"""The layer grid: one row per decoder block, an attention cell and an FFN cell, drawn with the line API.

Blocks run top to bottom and fold into several columns of blocks when the model has more blocks
than the grid has rows, so a 32-block model fits 80x24 and an 80-block one fits 120x40; when even
the folded grid is too big, it scrolls. Every state has its own glyph, so the grid reads without
colour (NO_COLOR, monochrome terminals); colours come from the component classes in grid.tcss.
"""

from __future__ import annotations

import math

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding
from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from finercut_tui.domain.sublayers import KINDS
from finercut_tui.layer_map import LEVELS, Cell, CellState, Difference, LayerMap

CELL_WIDTH = 4
ONLY_HERE = "≠"  # overlay: removed here, kept by the other session (after the "×k")
ONLY_THERE = "⊘"  # overlay: kept here, removed by the other session (before its step)
COLUMN_GAP = "│ "  # each column of blocks ends with a space, where the cursor's "]" can go

STATE_CLASS = {
    CellState.KEPT: "layer-grid--kept",
    CellState.PENDING: "layer-grid--pending",
    CellState.RUNNING: "layer-grid--running",
    CellState.REMOVED: "layer-grid--removed",
    CellState.PINNED: "layer-grid--pinned",
    CellState.HELD: "layer-grid--held",
}


class LayerGrid(ScrollView, can_focus=True):
    """The blocks of the model and the state of each sublayer; a cursor picks a cell."""

    COMPONENT_CLASSES = {
        "layer-grid--header",
        "layer-grid--label",
        "layer-grid--label-cursor",
        "layer-grid--separator",
        "layer-grid--cursor",
        "layer-grid--cursor-bracket",
        "layer-grid--removed-manual",
        "layer-grid--only-here",
        "layer-grid--only-there",
        *STATE_CLASS.values(),
        *(f"layer-grid--score-{i}" for i in range(LEVELS)),
    }

    BINDINGS = [
        Binding("up,k", "cursor_up", "Up", show=False),
        Binding("down,j", "cursor_down", "Down", show=False),
        Binding("left,h", "cursor_left", "Left", show=False),
        Binding("right,l", "cursor_right", "Right", show=False),
        Binding("pageup", "cursor_page(-1)", "Page up", show=False),
        Binding("pagedown", "cursor_page(1)", "Page down", show=False),
        Binding("home", "cursor_edge(0)", "First block", show=False),  # a replay's home / end step
        Binding("end", "cursor_edge(1)", "Last block", show=False),  # instead (priority bindings)
    ]

    class CursorMoved(Message):
        """The cursor is on another cell."""

        def __init__(self, grid: LayerGrid, block: int, kind: str) -> None:
            super().__init__()
            self.grid = grid
            self.block = block
            self.kind = kind

        @property
        def sid(self) -> str:
            return f"{self.block}.{self.kind}"

    def __init__(self, layer_map: LayerMap, *, name: str | None = None, id: str | None = None) -> None:
        super().__init__(name=name, id=id)
        self.layer_map = layer_map
        self.cursor_block = 0
        self.cursor_kind = 0  # index into KINDS
        self.rows = layer_map.num_blocks
        self.columns = 1
        self.overlay: dict[str, Difference] = {}  # replay: where another session differs

    def set_overlay(self, differences: dict[str, Difference]) -> None:
        """Mark the sublayers whose removed/kept state differs in another session ({} clears)."""
        if differences != self.overlay:
            self.overlay = dict(differences)
            self.refresh()

    # -- geometry --------------------------------------------------------------------------------------
    @property
    def label_width(self) -> int:
        return max(2, len(str(self.layer_map.num_blocks - 1)))

    @property
    def column_width(self) -> int:
        """`12 attn ffn ` : label, space, cell, space, cell, space (spaces hold the cursor brackets)."""
        return self.label_width + 1 + CELL_WIDTH + 1 + CELL_WIDTH + 1

    def fold(self, width: int, height: int) -> tuple[int, int]:
        """(columns, rows) for a content area of width x height: fold until it fits, else scroll."""
        n = max(1, self.layer_map.num_blocks)
        rows_fit = max(1, height - 1)  # one line for the column heading
        step = self.column_width + len(COLUMN_GAP)
        max_columns = max(1, (width + len(COLUMN_GAP)) // step)
        columns = max(1, min(max_columns, math.ceil(n / rows_fit)))
        return columns, math.ceil(n / columns)

    def preferred_width(self, available: int, height: int) -> int:
        """The width the folded grid needs when it may use `available` columns and `height` lines."""
        columns, rows = self.fold(available - 1, height)
        step = self.column_width + len(COLUMN_GAP)
        width = columns * step - len(COLUMN_GAP)
        scrollbar = 1 if rows + 1 > height else 0
        return min(available, width + 1 + scrollbar)

    def _relayout(self) -> None:
        width, height = self.size.width or 80, self.size.height or 24  # inside padding, scrollbars included
        step = self.column_width + len(COLUMN_GAP)
        columns, rows = self.fold(width, height)
        if rows + 1 > height:  # it will scroll vertically: leave room for the scrollbar
            columns, rows = self.fold(width - self.styles.scrollbar_size_vertical, height)
        if columns * step - len(COLUMN_GAP) > width:  # and horizontally
            columns, rows = self.fold(width, height - self.styles.scrollbar_size_horizontal)
        self.columns, self.rows = columns, rows
        self.virtual_size = Size(columns * step - len(COLUMN_GAP), rows + 1)

    def on_resize(self, event: events.Resize) -> None:
        self.call_after_refresh(self._relayout_and_refresh)
        self._relayout()

    def _relayout_and_refresh(self) -> None:
        self._relayout()
        self.refresh()

    def cell_origin(self, block: int, kind_index: int) -> tuple[int, int]:
        """(x, y) of a cell in virtual coordinates."""
        column, row = divmod(block, self.rows)
        x = column * (self.column_width + len(COLUMN_GAP)) + self.label_width + 1
        x += kind_index * (CELL_WIDTH + 1)
        return x, row + 1

    def cell_at(self, x: int, y: int) -> tuple[int, int] | None:
        """(block, kind index) under virtual coordinates, if any."""
        if y < 1:
            return None
        step = self.column_width + len(COLUMN_GAP)
        column, offset = divmod(x, step)
        offset -= self.label_width + 1
        if offset < 0 or column >= self.columns:
            return None
        kind, inner = divmod(offset, CELL_WIDTH + 1)
        if kind > 1 or inner >= CELL_WIDTH:
            return None
        block = column * self.rows + (y - 1)
        return (block, kind) if block < self.layer_map.num_blocks else None

    # -- state -----------------------------------------------------------------------------------------
    def set_map(self, layer_map: LayerMap) -> None:
        relayout = layer_map.num_blocks != self.layer_map.num_blocks
        self.layer_map = layer_map
        if relayout:
            self.cursor_block = min(self.cursor_block, layer_map.num_blocks - 1)
            self._relayout()
        self.refresh()

    @property
    def cursor_position(self) -> tuple[int, int]:
        """(block, kind index) of the cursor."""
        return self.cursor_block, self.cursor_kind

    @property
    def cursor_sid(self) -> str:
        return f"{self.cursor_block}.{KINDS[self.cursor_kind]}"

    def cursor_cell(self) -> Cell:
        return self.layer_map.cell(self.cursor_block, KINDS[self.cursor_kind])

    def move_cursor(self, block: int, kind_index: int) -> None:
        n = self.layer_map.num_blocks
        block = max(0, min(n - 1, block))
        kind_index = max(0, min(1, kind_index))
        if (block, kind_index) == (self.cursor_block, self.cursor_kind):
            return
        old = self.cell_origin(self.cursor_block, self.cursor_kind)
        self.cursor_block, self.cursor_kind = block, kind_index
        new = self.cell_origin(block, kind_index)
        self.refresh_lines(old[1])
        self.refresh_lines(new[1])
        self.refresh_lines(0)
        self.scroll_to_region(Region(new[0], new[1], CELL_WIDTH, 1), animate=False, immediate=True)
        self.post_message(self.CursorMoved(self, block, KINDS[kind_index]))

    def action_cursor_up(self) -> None:
        self.move_cursor(self.cursor_block - 1, self.cursor_kind)

    def action_cursor_down(self) -> None:
        self.move_cursor(self.cursor_block + 1, self.cursor_kind)

    def action_cursor_left(self) -> None:
        if self.cursor_kind == 1:
            self.move_cursor(self.cursor_block, 0)
        elif self.cursor_block - self.rows >= 0:
            self.move_cursor(self.cursor_block - self.rows, 1)

    def action_cursor_right(self) -> None:
        if self.cursor_kind == 0:
            self.move_cursor(self.cursor_block, 1)
        elif self.cursor_block + self.rows < self.layer_map.num_blocks:
            self.move_cursor(self.cursor_block + self.rows, 0)

    def action_cursor_page(self, direction: int) -> None:
        self.move_cursor(
            self.cursor_block + direction * max(1, self.scrollable_content_region.height - 1),
            self.cursor_kind,
        )

    def action_cursor_edge(self, last: int) -> None:
        self.move_cursor(self.layer_map.num_blocks - 1 if last else 0, self.cursor_kind)

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None:
            return
        hit = self.cell_at(offset.x + int(self.scroll_x), offset.y + int(self.scroll_y))
        if hit is not None:
            self.move_cursor(*hit)

    # -- drawing ---------------------------------------------------------------------------------------
    def style_for(self, cell: Cell) -> Style:
        if cell.state is CellState.SCORED:
            name = f"layer-grid--score-{cell.level if cell.level is not None else LEVELS - 1}"
        elif cell.state is CellState.REMOVED and cell.by == "manual":
            name = "layer-grid--removed-manual"
        else:
            name = STATE_CLASS[cell.state]
        return self.get_component_rich_style(name)

    def overlay_style(self, here: bool) -> Style:
        return self.get_component_rich_style("layer-grid--only-here" if here else "layer-grid--only-there")

    @staticmethod
    def overlay_text(difference: Difference, width: int = CELL_WIDTH) -> str:
        """`×7≠`: removed here at step 7, kept there; `⊘7`: kept here, removed there at step 7."""
        if difference.here:
            body = f"×{difference.step}"
            if len(body) > width - 1:
                body = "×" + "+" * (width - 2)
            body = body.ljust(width - 1) + ONLY_HERE
        else:
            body = f"{ONLY_THERE}{difference.step}"
            if len(body) > width:
                body = ONLY_THERE + "+" * (width - 1)
        return body.ljust(width)

    def _heading(self) -> list[Segment]:
        style = self.get_component_rich_style("layer-grid--header")
        sep = self.get_component_rich_style("layer-grid--separator")
        text = " " * self.label_width + " " + "attn".ljust(CELL_WIDTH) + " " + "ffn".ljust(CELL_WIDTH) + " "
        segments: list[Segment] = []
        for column in range(self.columns):
            if column:
                segments.append(Segment(COLUMN_GAP, sep))
            segments.append(Segment(text, style))
        return segments

    def _row(self, row: int) -> list[Segment]:
        label = self.get_component_rich_style("layer-grid--label")
        label_cursor = self.get_component_rich_style("layer-grid--label-cursor")
        sep = self.get_component_rich_style("layer-grid--separator")
        cursor = self.get_component_rich_style("layer-grid--cursor")
        bracket = self.get_component_rich_style("layer-grid--cursor-bracket")
        plain = self.rich_style
        segments: list[Segment] = []
        for column in range(self.columns):
            if column:
                segments.append(Segment(COLUMN_GAP, sep))
            block = column * self.rows + row
            if block >= self.layer_map.num_blocks:
                segments.append(Segment(" " * self.column_width, plain))
                continue
            on_row = block == self.cursor_block
            # the three spaces around the two cells: "[" before and "]" after the cursor cell
            gaps = [Segment(" ", plain)] * 3
            if on_row:
                gaps[self.cursor_kind] = Segment("[", bracket)
                gaps[self.cursor_kind + 1] = Segment("]", bracket)
            segments.append(Segment(f"{block:>{self.label_width}}", label_cursor if on_row else label))
            for k, kind in enumerate(KINDS):
                cell = self.layer_map.cell(block, kind)
                difference = self.overlay.get(cell.sid)
                style = self.style_for(cell) if difference is None else self.overlay_style(difference.here)
                text = cell.text(CELL_WIDTH) if difference is None else self.overlay_text(difference)
                if on_row and k == self.cursor_kind:
                    style = style + cursor
                segments.append(gaps[k])
                segments.append(Segment(text, style))
            segments.append(gaps[2])
        return segments

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        line = y + scroll_y
        width = self.size.width  # the compositor clips what a scrollbar covers
        if line == 0:
            segments = self._heading()
        elif 1 <= line <= self.rows:
            segments = self._row(line - 1)
        else:
            return Strip.blank(width, self.rich_style)
        virtual_width = self.virtual_size.width
        strip = Strip(segments).adjust_cell_length(max(virtual_width, width), self.rich_style)
        return strip.crop(scroll_x, scroll_x + width)
