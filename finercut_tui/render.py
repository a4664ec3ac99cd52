"""The pruned-layer map of a session: as data (what the TUI grid draws) and as text, markdown or SVG.

Core side: no textual here. `LayerMap` is the state of every sublayer at one moment of a search,
built either live from search events (`apply`) or from a saved session at step K (`from_session`);
`show` and the TUI both read it, so the picture in a paper and the one on screen agree.

Step numbering follows the events: step k is the k-th removal. A map "at step K" of a session has
the first K removals applied and shows the scores computed on that model, i.e. the scores step K+1
chose from (exactly what the live grid showed just before removal K+1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from xml.sax.saxutils import escape

from finercut_tui.model.sublayers import KINDS, expand, sort_key, split_id
from finercut_tui.search import events as E
from finercut_tui.search import methods as M
from finercut_tui.session import Session

LEVELS = 8  # score colour steps, 0 = lowest score of the step = most removable
BARS = "▁▂▃▄▅▆▇█"
KIND_LABEL = {"attn": "attn", "mlp": "ffn"}


class CellState(StrEnum):
    KEPT = "kept"  # not a candidate now (other kind, search idle or finished)
    PENDING = "pending"  # a candidate of this step, not scored yet
    RUNNING = "running"  # being evaluated now
    SCORED = "scored"
    REMOVED = "removed"
    PINNED = "pinned"
    HELD = "held"  # front exclusion: not a candidate yet


GLYPHS: dict[CellState, str] = {
    CellState.KEPT: "·",
    CellState.PENDING: "○",
    CellState.RUNNING: "▶",
    CellState.SCORED: "▄",  # drawn as a bar whose height is the score level
    CellState.REMOVED: "×",
    CellState.PINNED: "◆",
    CellState.HELD: "░",
}

LEGEND: tuple[tuple[CellState, str], ...] = (
    (CellState.PENDING, "to score"),
    (CellState.RUNNING, "scoring"),
    (CellState.SCORED, "score low→high"),
    (CellState.REMOVED, "removed at step k"),
    (CellState.PINNED, "pinned"),
    (CellState.HELD, "held back"),
    (CellState.KEPT, "kept"),
)


@dataclass(frozen=True)
class Cell:
    sid: str  # the sublayer: `<b>.attn` / `<b>.mlp`
    unit: str  # what the search removes for it: the sublayer, or `<b>.block` for block methods
    state: CellState
    score: float | None = None
    level: int | None = None
    step: int | None = None  # removal step, when removed
    by: str | None = None

    def text(self, width: int = 4) -> str:
        """The cell as plain text of exactly `width` columns: readable without colour."""
        if self.state is CellState.REMOVED:
            body = f"×{self.step}" if self.step is not None else "×"
            if len(body) > width:
                body = "×" + "+" * (width - 1)
            return body.ljust(width)
        if self.state is CellState.SCORED and self.level is not None:
            return BARS[self.level] * width
        if self.state is CellState.HELD:
            return GLYPHS[CellState.HELD] * width
        glyph = GLYPHS[self.state]
        return (" " + glyph).ljust(width) if width > 2 else glyph.ljust(width)


@dataclass(frozen=True)
class Removal:
    step: int
    unit: str
    by: str = "search"
    score: float | None = None


def score_levels(scores: dict[str, float], levels: int = LEVELS) -> dict[str, int]:
    """Place each score on `levels` steps from the lowest (0) to the highest of this set.

    Divergences span orders of magnitude, so positive scores spread over more than 20x are placed
    on a log scale; otherwise linearly.
    """
    if not scores:
        return {}
    values = [float(v) for v in scores.values() if math.isfinite(v)]
    if not values:
        return dict.fromkeys(scores, levels - 1)
    lo, hi = min(values), max(values)
    use_log = lo > 0 and hi / lo > 20
    if use_log:
        lo, hi = math.log(lo), math.log(hi)
    span = hi - lo
    out: dict[str, int] = {}
    for key, value in scores.items():
        if not math.isfinite(value):
            out[key] = levels - 1
            continue
        v = math.log(value) if use_log else float(value)
        out[key] = 0 if span <= 0 else min(levels - 1, max(0, round((v - lo) / span * (levels - 1))))
    return out


class LayerMap:
    """Every sublayer's state at one moment: removed (and when), pinned, this step's scores."""

    def __init__(
        self,
        num_blocks: int,
        method: str = "finercut",
        iterative: bool = True,
        metric: str | None = None,
        target: int | None = None,
    ) -> None:
        self.num_blocks = num_blocks
        self.method = method
        self.metric = metric
        self.target = target
        self.one_shot = method != "finercut" and not iterative
        self.removals: list[Removal] = []
        self.pinned: set[str] = set()
        self.step = 1  # the removal being searched for (live) or the next one (replay)
        self.candidates: tuple[str, ...] = ()
        self.held_back: tuple[str, ...] = ()
        self.scores: dict[str, float] = {}
        self.scores_step: int | None = None  # the step `scores` were computed for
        self.step_open = False  # a step is being scored (between StepStarted and its removal)
        self.running: str | None = None
        self.candidate_index = 0
        self.candidate_total = 0
        self.paused = False
        self.finished: str | None = None  # SearchFinished.reason
        self.evaluating: str | None = None  # description of the running evaluation
        self.evals: list[dict[str, Any]] = []
        self.next_unit: str | None = None  # replay: what step+1 removed
        self._removed_at: dict[str, Removal] = {}
        self._pinned_parts: set[str] = set()
        self._levels: dict[str, int] | None = None

    # -- derived ---------------------------------------------------------------------------------------
    @property
    def unit_kind(self) -> str:
        return M.unit(self.method) if self.method in M.METHODS else "sublayer"

    def unit_of(self, sid: str) -> str:
        block, _ = split_id(sid)
        return f"{block}.block" if self.unit_kind == "block" else sid

    @property
    def removed_units(self) -> list[str]:
        return [r.unit for r in self.removals]

    @property
    def removed_sublayers(self) -> list[str]:
        return expand(self.removed_units)

    def progress(self) -> int:
        """Removals that count towards the target (units of this method)."""
        if self.method not in M.METHODS:
            return len(self.removals)
        return M.progress(self.method, self.num_blocks, set(self.removed_sublayers))

    def levels(self) -> dict[str, int]:
        if self._levels is None:
            self._levels = score_levels(self.scores)
        return self._levels

    def cell(self, block: int, kind: str) -> Cell:
        sid = f"{block}.{kind}"
        unit = self.unit_of(sid)
        removal = self._removed_at.get(sid)
        if removal is not None:
            return Cell(sid, unit, CellState.REMOVED, removal.score, None, removal.step, removal.by)
        if sid in self._pinned_parts:
            return Cell(sid, unit, CellState.PINNED)
        score = self.scores.get(unit)
        if self.running is not None and unit == self.running:
            return Cell(sid, unit, CellState.RUNNING, score)
        if score is not None:
            return Cell(sid, unit, CellState.SCORED, score, self.levels().get(unit))
        if unit in self.held_back:
            return Cell(sid, unit, CellState.HELD)
        if unit in self.candidates and self.finished is None:
            return Cell(sid, unit, CellState.PENDING)
        return Cell(sid, unit, CellState.KEPT)

    def cells(self) -> list[Cell]:
        return [self.cell(b, k) for b in range(self.num_blocks) for k in KINDS]

    def ranking(self) -> list[tuple[str, float]]:
        """This step's scored units, lowest (most removable) first; removed and pinned ones included."""
        return sorted(self.scores.items(), key=lambda kv: (kv[1], sort_key(kv[0])))

    def is_removed(self, unit: str) -> bool:
        return all(s in self._removed_at for s in expand([unit]))

    def is_pinned(self, unit: str) -> bool:
        return any(s in self._pinned_parts for s in expand([unit]))

    def remaining_evaluations(self) -> int:
        """Candidate evaluations still to run until the target (an estimate for the ETA): the rest of
        this step, then one candidate fewer per greedy step."""
        if self.finished is not None or self.target is None:
            return 0
        in_step = max(0, self.candidate_total - self.candidate_index) if self.step_open else 0
        if self.one_shot or self.method != "finercut":
            return in_step
        per_step = len(self.candidates) or self.candidate_total
        steps_left = max(0, self.target - self.progress() - (1 if self.step_open else 0))
        return in_step + sum(max(0, per_step - i) for i in range(1, steps_left + 1))

    # -- changes ---------------------------------------------------------------------------------------
    def _set_removals(self, removals: list[Removal]) -> None:
        self.removals = list(removals)
        self._removed_at = {}
        for r in self.removals:
            for s in expand([r.unit]):
                self._removed_at[s] = r

    def _set_pinned(self, pinned: set[str]) -> None:
        self.pinned = set(pinned)
        self._pinned_parts = set(expand(self.pinned))

    def _set_scores(self, scores: dict[str, float]) -> None:
        self.scores = dict(scores)
        self._levels = None

    def apply(self, event: Any) -> None:
        """Update the map from one search event."""
        if isinstance(event, E.SearchStarted):
            self.method, self.metric, self.target = event.method, event.metric, event.target
            self.num_blocks = event.num_blocks
            if tuple(self.removed_units) != tuple(event.removed):
                self._set_removals([Removal(i, u) for i, u in enumerate(event.removed, 1)])
            self._set_pinned(set(event.pinned))
            self.step = len(event.removed) + 1
            self.finished = None
        elif isinstance(event, E.StepStarted):
            self.step = event.step
            self.candidates, self.held_back = event.candidates, event.held_back
            if not self.one_shot:
                self._set_scores({})
                self.scores_step = event.step
            self.step_open = True
            self.running, self.candidate_index, self.candidate_total = None, 0, len(event.candidates)
        elif isinstance(event, E.CandidateStarted):
            self.running = event.sublayer
            self.candidate_index, self.candidate_total = event.index - 1, event.total
        elif isinstance(event, E.CandidateScored):
            if self.one_shot and self.scores_step is None:
                self.scores_step = event.step
            self.scores[event.sublayer] = event.score
            self._levels = None
            if self.running == event.sublayer:
                self.running = None
            self.candidate_index, self.candidate_total = event.index, event.total
        elif isinstance(event, E.SublayerRemoved):
            self._set_removals([*self.removals, Removal(event.step, event.sublayer, event.by, event.score)])
            self.running = None
            self.step = event.step + 1
            self.step_open = False
            self.candidate_index = self.candidate_total = 0
            if event.scores and not self.scores:
                self._set_scores(event.scores)
                self.scores_step = event.step
        elif isinstance(event, E.SublayerRestored):
            kept = list(self.removals)
            for i in range(len(kept) - 1, -1, -1):
                if kept[i].unit == event.sublayer:
                    del kept[i]
                    break
            self._set_removals(kept)
            self.step = len(kept) + 1
            self.step_open = False
            self.candidate_index = self.candidate_total = 0
        elif isinstance(event, E.PinChanged):
            pins = set(self.pinned)
            if event.pinned:
                pins.add(event.sublayer)
            else:
                parts = set(expand([event.sublayer]))
                pins = {p for p in pins if not set(expand([p])) & parts}
            self._set_pinned(pins)
        elif isinstance(event, E.Paused):
            self.paused = True
        elif isinstance(event, E.Resumed):
            self.paused = False
        elif isinstance(event, E.EvalStarted):
            self.evaluating = event.description
        elif isinstance(event, E.EvalFinished):
            self.evaluating = None
            self.evals.append(dict(event.record))
        elif isinstance(event, E.SearchFinished):
            self.finished = event.reason
            self.running = None
            self.evaluating = None
            self.paused = False

    # -- from a saved session --------------------------------------------------------------------------
    @classmethod
    def from_session(cls, session: Session, step: int | None = None) -> LayerMap:
        """The map after the first `step` removals (all when None), with the scores seen there."""
        steps = session.steps
        k = len(steps) if step is None else max(0, min(int(step), len(steps)))
        method = session.method.get("name", "finercut")
        m = cls(
            session.num_blocks,
            method=method,
            iterative=bool(session.method.get("iterative", method == "finercut")),
            metric=session.method.get("metric"),
            target=_int_or_none(session.method.get("target")),
        )
        m._set_removals([Removal(i, s.removed, s.by, s.score) for i, s in enumerate(steps[:k], 1)])
        m._set_pinned(set(session.pinned))
        m.step = k + 1
        m.next_unit = steps[k].removed if k < len(steps) else None
        removed = set(m.removed_sublayers)
        if k < len(steps) and steps[k].scores:
            m._set_scores(steps[k].scores)
            m.scores_step = k + 1
        elif m.one_shot:
            first = next(((i, s.scores) for i, s in enumerate(steps, 1) if s.scores), None)
            if first:
                m._set_scores({u: v for u, v in first[1].items() if not M.is_removed(u, removed)})
                m.scores_step = first[0]
        if method in M.METHODS:
            units = [
                u
                for u in M.universe(method, m.num_blocks)
                if not M.is_removed(u, removed) and not M.is_pinned(u, m._pinned_parts)
            ]
            held_blocks: set[int] = set()
            if method == "finercut":
                exclude = float(session.method.get("exclude_front", 0.0) or 0.0)
                held_blocks = M.front_held_blocks(m.num_blocks, exclude, len(removed))
            free = [u for u in units if M.block_of(u) not in held_blocks]
            held = [u for u in units if M.block_of(u) in held_blocks]
            m.candidates, m.held_back = (tuple(free), tuple(held)) if free else (tuple(held), ())
        m.evals = [e for e in session.evals if int(e.get("step", 0)) <= k]
        if k == len(steps) and session.finished:
            m.finished = "target"
        return m


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# -- summaries ---------------------------------------------------------------------------------------


def fmt_score(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def quarters(num_blocks: int) -> list[range]:
    """Blocks split into four depth quarters (the first ones take the remainder)."""
    size, extra = divmod(num_blocks, 4)
    out, start = [], 0
    for i in range(4):
        stop = start + size + (1 if i < extra else 0)
        out.append(range(start, stop))
        start = stop
    return out


def describe_eval(record: dict[str, Any], width: int | None = None) -> str:
    """One eval record in a line: `ppl:wikitext2 12.3 (96.1%), arc_easy 0.61 (98%)`."""
    results = record.get("results") or {}
    retained = record.get("retained") or {}
    parts = []
    for name, value in results.items():
        part = f"{name} {fmt_value(value)}"
        if name in retained and retained[name] is not None:
            part += f" ({float(retained[name]):.1f}%)"
        parts.append(part)
    text = ", ".join(parts) or "-"
    if width is not None and len(text) > width:
        text = text[: max(1, width - 1)] + "…"
    return text


def retained_text(record: dict[str, Any]) -> str:
    avg = record.get("retained_average")
    return "-" if avg is None else f"{float(avg):.1f}%"


@dataclass(frozen=True)
class Summary:
    step: int
    total_steps: int
    removed: list[Removal]
    sublayers: int  # removed sublayers (blocks count twice)
    per_kind: dict[str, int]
    per_quarter: list[tuple[range, dict[str, int]]]
    manual: int
    evals: list[dict[str, Any]]


def summarize(session: Session, step: int | None = None) -> Summary:
    k = len(session.steps) if step is None else max(0, min(int(step), len(session.steps)))
    removals = [Removal(i, s.removed, s.by, s.score) for i, s in enumerate(session.steps[:k], 1)]
    parts = expand([r.unit for r in removals])
    per_kind = {kind: sum(1 for s in parts if split_id(s)[1] == kind) for kind in KINDS}
    per_quarter = []
    for q in quarters(session.num_blocks):
        counts = {
            kind: sum(1 for s in parts if split_id(s)[1] == kind and split_id(s)[0] in q) for kind in KINDS
        }
        per_quarter.append((q, counts))
    return Summary(
        step=k,
        total_steps=len(session.steps),
        removed=removals,
        sublayers=len(parts),
        per_kind=per_kind,
        per_quarter=per_quarter,
        manual=sum(1 for r in removals if r.by == "manual"),
        evals=[e for e in session.evals if int(e.get("step", 0)) <= k],
    )


def _header_lines(session: Session, k: int, source: str | None) -> list[tuple[str, str]]:
    m, model = session.method, session.model
    name = model.get("name_or_path") or model.get("gguf_file") or "?"
    arch = model.get("architecture")
    dtype = model.get("dtype")
    model_bits = ", ".join(str(x) for x in (arch, f"{session.num_blocks} blocks", dtype) if x)
    method_bits = [str(m.get("name", "?"))]
    if m.get("metric"):
        method_bits.append(f"metric {m['metric']}")
    if m.get("target") is not None:
        unit = "blocks" if m.get("name") == "block-drop" else "sublayers"
        spec = m.get("target_spec")
        method_bits.append(
            f"target {m['target']} {unit}" + (f" ({spec})" if spec and str(spec) != str(m["target"]) else "")
        )
    if m.get("exclude_front"):
        method_bits.append(f"exclude-front {m['exclude_front']}")
    if m.get("name") != "finercut" and "iterative" in m:
        method_bits.append("iterative" if m.get("iterative") else "one-shot")
    state = "finished" if session.finished else "unfinished"
    rows = []
    if source:
        rows.append(("session", source))
    rows += [
        ("model", f"{name} ({model_bits})"),
        ("method", " · ".join(method_bits)),
        ("steps", f"{k} of {len(session.steps)} shown ({state})"),
        ("pinned", ", ".join(session.pinned) or "none"),
    ]
    return rows


def _cell_word(cell: Cell) -> str:
    if cell.state is CellState.REMOVED:
        return f"×{cell.step}" + ("m" if cell.by == "manual" else "")
    if cell.state is CellState.PINNED:
        return "◆"
    return "·"


def render_text(session: Session, step: int | None = None, source: str | None = None) -> str:
    """The map (one row per block) and a summary, as plain text."""
    summary = summarize(session, step)
    lm = LayerMap.from_session(session, summary.step)
    out: list[str] = []
    rows = _header_lines(session, summary.step, source)
    out += [f"{key:<9}{value}" for key, value in rows]
    out.append("")
    width = max(5, len(str(session.num_blocks - 1)) + 1)
    out.append(f"{'block':>{width}}  {'attn':<6}ffn")
    for b in range(session.num_blocks):
        words = [_cell_word(lm.cell(b, kind)) for kind in KINDS]
        out.append(f"{b:>{width}}  {words[0]:<6}{words[1]:<6}".rstrip())
    out.append("legend: ×k removed at step k (m: by hand), ◆ pinned, · kept")
    out.append("")
    total = 2 * session.num_blocks
    pct = 100.0 * summary.sublayers / total if total else 0.0
    out.append(
        f"removed  {summary.sublayers} of {total} sublayers ({pct:.1f}%): "
        f"attn {summary.per_kind['attn']}, ffn {summary.per_kind['mlp']}; by hand {summary.manual}"
    )
    out.append("by depth blocks     attn  ffn")
    for q, counts in summary.per_quarter:
        span = f"{q.start}-{q.stop - 1}" if len(q) else "-"
        out.append(f"         {span:<10} {counts['attn']:<5} {counts['mlp']}")
    if summary.removed:
        out.append("order    step  removed      by      score")
        for r in summary.removed:
            out.append(f"         {r.step:<5} {r.unit:<12} {r.by:<7} {fmt_score(r.score)}".rstrip())
    else:
        out.append("order    nothing removed")
    if summary.evals:
        out.append("evals    step  retained  results")
        for e in summary.evals:
            out.append(f"         {e.get('step', '?')!s:<5} {retained_text(e):<9} {describe_eval(e)}")
    else:
        out.append("evals    none")
    return "\n".join(out) + "\n"


def render_markdown(session: Session, step: int | None = None, source: str | None = None) -> str:
    summary = summarize(session, step)
    lm = LayerMap.from_session(session, summary.step)
    out = ["## Pruned-layer map", ""]
    out += [f"- **{key}**: {value}" for key, value in _header_lines(session, summary.step, source)]
    out += ["", "| block | attn | ffn |", "|---:|:---:|:---:|"]
    for b in range(session.num_blocks):
        words = [_cell_word(lm.cell(b, kind)) for kind in KINDS]
        out.append(f"| {b} | {words[0]} | {words[1]} |")
    out += ["", "×k: removed at step k (m: by hand); ◆: pinned; ·: kept.", ""]
    total = 2 * session.num_blocks
    pct = 100.0 * summary.sublayers / total if total else 0.0
    out.append(
        f"Removed **{summary.sublayers} of {total}** sublayers ({pct:.1f}%): attention "
        f"{summary.per_kind['attn']}, FFN {summary.per_kind['mlp']}; by hand {summary.manual}."
    )
    out += ["", "| depth quarter | blocks | attn | ffn |", "|---|---|---:|---:|"]
    for i, (q, counts) in enumerate(summary.per_quarter, 1):
        span = f"{q.start}-{q.stop - 1}" if len(q) else "-"
        out.append(f"| Q{i} | {span} | {counts['attn']} | {counts['mlp']} |")
    if summary.removed:
        out += ["", "| step | removed | by | score |", "|---:|---|---|---:|"]
        out += [f"| {r.step} | `{r.unit}` | {r.by} | {fmt_score(r.score)} |" for r in summary.removed]
    if summary.evals:
        out += ["", "| step | retained | results |", "|---:|---:|---|"]
        out += [f"| {e.get('step', '?')} | {retained_text(e)} | {describe_eval(e)} |" for e in summary.evals]
    return "\n".join(out) + "\n"


SVG_COLOURS = {
    "kept": "#e8eaed",
    "removed": "#b3261e",
    "manual": "#e8710a",
    "pinned": "#1a73e8",
    "text": "#202124",
    "muted": "#5f6368",
}


def render_svg(session: Session, step: int | None = None, title: str | None = None) -> str:
    """The map as a two-row strip (attention over FFN, blocks left to right), standalone SVG."""
    summary = summarize(session, step)
    lm = LayerMap.from_session(session, summary.step)
    n = session.num_blocks
    cell = max(8, min(24, 960 // max(1, n)))
    gap = 2 if cell >= 12 else 1
    left, top = 48, 44
    grid_w = n * (cell + gap) - gap
    legend = (
        (SVG_COLOURS["removed"], "removed (number: step)", False),
        (SVG_COLOURS["manual"], "removed by hand", False),
        (SVG_COLOURS["kept"], "kept", False),
        (SVG_COLOURS["kept"], "pinned", True),
    )
    legend_w = sum(14 + 6 * len(text) + 18 for _, text, _ in legend)
    width = left + max(grid_w, legend_w) + 16
    height = top + 2 * (cell + gap) + 64
    c = SVG_COLOURS
    name = session.model.get("name_or_path") or session.model.get("gguf_file") or "model"
    heading = title or f"{name}: {session.method.get('name', '')}, {summary.step} removals"
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif">',
        f"<title>{escape(heading)}</title>",
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{left}" y="20" font-size="13" fill="{c["text"]}">{escape(heading)}</text>',
    ]
    for row, kind in enumerate(KINDS):
        y = top + row * (cell + gap)
        out.append(
            f'<text x="{left - 6}" y="{y + cell * 0.72:.1f}" font-size="11" text-anchor="end" '
            f'fill="{c["text"]}">{KIND_LABEL[kind]}</text>'
        )
        for b in range(n):
            x = left + b * (cell + gap)
            state = lm.cell(b, kind)
            fill, stroke = c["kept"], "none"
            if state.state is CellState.REMOVED:
                fill = c["manual"] if state.by == "manual" else c["removed"]
            elif state.state is CellState.PINNED:
                stroke = c["pinned"]
            label = f"{state.sid}: " + (
                f"removed at step {state.step} ({state.by})"
                if state.state is CellState.REMOVED
                else "pinned"
                if state.state is CellState.PINNED
                else "kept"
            )
            out.append(
                f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" rx="2" fill="{fill}" '
                f'stroke="{stroke}" stroke-width="2"><title>{escape(label)}</title></rect>'
            )
            if state.state is CellState.REMOVED and cell >= 14 and state.step is not None:
                size = cell * (0.5 if state.step < 100 else 0.4)
                out.append(
                    f'<text x="{x + cell / 2:.1f}" y="{y + cell / 2 + size * 0.36:.1f}" font-size="{size:.1f}" '
                    f'text-anchor="middle" fill="#ffffff">{state.step}</text>'
                )
    tick_every = 1 if n <= 32 else 4 if n <= 64 else 8
    y_ticks = top + 2 * (cell + gap) + 12
    for b in range(0, n, tick_every):
        x = left + b * (cell + gap) + cell / 2
        out.append(
            f'<text x="{x:.1f}" y="{y_ticks}" font-size="9" text-anchor="middle" fill="{c["muted"]}">{b}</text>'
        )
    out.append(
        f'<text x="{left + grid_w / 2:.1f}" y="{y_ticks + 14}" font-size="10" text-anchor="middle" '
        f'fill="{c["muted"]}">block</text>'
    )
    legend_y = y_ticks + 30
    x = left
    for colour, text, outline in legend:
        stroke = f' stroke="{c["pinned"]}" stroke-width="2"' if outline else ""
        out.append(
            f'<rect x="{x}" y="{legend_y - 9}" width="10" height="10" rx="2" fill="{colour}"{stroke}/>'
        )
        out.append(
            f'<text x="{x + 14}" y="{legend_y}" font-size="10" fill="{c["text"]}">{escape(text)}</text>'
        )
        x += 14 + 6 * len(text) + 18
    out.append("</svg>")
    return "\n".join(out) + "\n"
