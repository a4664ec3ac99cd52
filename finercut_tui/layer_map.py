"""The grid's view model: every sublayer's state at one moment of a search.

Core side: no textual here. `LayerMap` is built either live from search events (`apply`) or from a
saved session at step K (`from_session`); the app's grid and `show`'s reports (report.py) both read
it, so the picture in a paper and the one on screen agree.

Step numbering follows the events: step k is the k-th removal. A map "at step K" of a session has
the first K removals applied and shows the scores computed on that model, i.e. the scores step K+1
chose from (exactly what the live grid showed just before removal K+1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from finercut_tui.domain import events as E
from finercut_tui.domain.evals import EvalRecord
from finercut_tui.domain.methods import Method, get_method, is_removed
from finercut_tui.domain.pins import Pins
from finercut_tui.domain.spec import SearchSpec
from finercut_tui.domain.sublayers import KINDS, expand, sort_key
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
        method: str = SearchSpec.method,
        rescored: bool = True,
        metric: str | None = None,
        target: int | None = None,
    ) -> None:
        self.num_blocks = num_blocks
        self.info: Method = get_method(method)
        self.metric = metric
        self.target = target
        self.one_shot = not rescored
        self.removals: list[Removal] = []
        self.pins = Pins()
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
        self.evals: list[EvalRecord] = []
        self.next_unit: str | None = None  # replay: what step+1 removed
        self._removed_at: dict[str, Removal] = {}
        self._levels: dict[str, int] | None = None

    # -- derived ---------------------------------------------------------------------------------------
    @property
    def method(self) -> str:
        return self.info.name

    @property
    def unit_kind(self) -> str:
        return self.info.unit

    def unit_of(self, sid: str) -> str:
        return self.info.unit_of(sid)

    @property
    def removed_units(self) -> list[str]:
        return [r.unit for r in self.removals]

    @property
    def removed_sublayers(self) -> list[str]:
        return expand(self.removed_units)

    def progress(self) -> int:
        """Removals that count towards the target (units of this method)."""
        return self.info.progress(self.num_blocks, set(self.removed_sublayers))

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
        if sid in self.pins:
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
        return is_removed(unit, self._removed_at.keys())

    def is_pinned(self, unit: str) -> bool:
        return unit in self.pins

    # -- changes ---------------------------------------------------------------------------------------
    def _set_removals(self, removals: list[Removal]) -> None:
        self.removals = list(removals)
        self._removed_at = {}
        for r in self.removals:
            for s in expand([r.unit]):
                self._removed_at[s] = r

    def _set_scores(self, scores: dict[str, float]) -> None:
        self.scores = dict(scores)
        self._levels = None

    def apply(self, event: object) -> None:
        """Update the map from one search event."""
        match event:
            case E.SearchStarted():
                self._started(event)
            case E.StepStarted():
                self._step_started(event)
            case E.CandidateStarted():
                self.running = event.sublayer
                self.candidate_index, self.candidate_total = event.index - 1, event.total
            case E.CandidateScored():
                self._scored(event)
            case E.SublayerRemoved():
                self._set_removals(
                    [*self.removals, Removal(event.step, event.sublayer, event.by, event.score)]
                )
                self._step_closed(event.step + 1)
                if event.scores and not self.scores:
                    self._set_scores(event.scores)
                    self.scores_step = event.step
            case E.SublayerRestored():
                self._restored(event.sublayer)
            case E.PinChanged():
                self.pins = Pins(event.pins)
            case E.TargetChanged():
                self.target, self.finished = event.target, None
            case E.Paused() | E.Resumed():
                self.paused = isinstance(event, E.Paused)
            case E.EvalStarted():
                self.evaluating = event.description
            case E.EvalFinished() | E.EvalFailed():
                self.evaluating = None
                self.evals.append(event.record)
            case E.SearchFinished():
                self.finished = event.reason
                self.running = self.evaluating = None
                self.paused = False

    def _started(self, event: E.SearchStarted) -> None:
        self.info, self.metric, self.target = get_method(event.method), event.metric, event.target
        self.one_shot = not event.rescored
        self.num_blocks = event.num_blocks
        if tuple(self.removed_units) != tuple(event.removed):
            self._set_removals([Removal(i, u) for i, u in enumerate(event.removed, 1)])
        self.pins = Pins(event.pinned)
        self.step = len(event.removed) + 1
        self.finished = None

    def _step_started(self, event: E.StepStarted) -> None:
        self.step = event.step
        self.candidates, self.held_back = event.candidates, event.held_back
        if not self.one_shot:
            self._set_scores({})
            self.scores_step = event.step
        self.step_open = True
        self.running, self.candidate_index, self.candidate_total = None, 0, len(event.candidates)

    def _scored(self, event: E.CandidateScored) -> None:
        if self.one_shot and self.scores_step is None:
            self.scores_step = event.step
        self.scores[event.sublayer] = event.score
        self._levels = None
        if self.running == event.sublayer:
            self.running = None
        self.candidate_index, self.candidate_total = event.index, event.total

    def _restored(self, unit: str) -> None:
        kept = list(self.removals)
        for i in range(len(kept) - 1, -1, -1):
            if kept[i].unit == unit:
                del kept[i]
                break
        self._set_removals(kept)
        self._step_closed(len(kept) + 1)

    def _step_closed(self, next_step: int) -> None:
        """A removal or an undo ended the step in flight."""
        self.step = next_step
        self.step_open = False
        self.candidate_index = self.candidate_total = 0

    # -- from a saved session --------------------------------------------------------------------------
    @classmethod
    def from_session(cls, session: Session, step: int | None = None) -> LayerMap:
        """The map after the first `step` removals (all when None), with the scores seen there."""
        steps = session.steps
        k = len(steps) if step is None else max(0, min(int(step), len(steps)))
        spec = session.spec
        m = cls(
            session.num_blocks,
            method=spec.method,
            rescored=spec.rescored,
            metric=spec.score_label,
            target=session.method.target,
        )
        m._set_removals([Removal(i, s.removed, s.by, s.score) for i, s in enumerate(steps[:k], 1)])
        m.pins = session.pinned
        m.step = k + 1
        m.next_unit = steps[k].removed if k < len(steps) else None
        removed = set(m.removed_sublayers)
        if k < len(steps) and steps[k].scores:
            m._set_scores(steps[k].scores)
            m.scores_step = k + 1
        elif m.one_shot:
            first = next(((i, s.scores) for i, s in enumerate(steps, 1) if s.scores), None)
            if first:
                m._set_scores({u: v for u, v in first[1].items() if not is_removed(u, removed)})
                m.scores_step = first[0]
        m.candidates, m.held_back = (tuple(units) for units in spec.candidates(m.num_blocks, removed, m.pins))
        m.evals = session.evals_until(k)
        if k == len(steps) and session.finished:
            m.finished = "target"
        return m


# -- two sessions laid over each other (replay's overlay) ----------------------------------------------
@dataclass(frozen=True)
class Difference:
    """A sublayer removed by one of two sessions of the same model and kept by the other, at step k."""

    sid: str
    here: bool  # True: removed by this session, kept by the other; False: the other way round
    step: int  # the step of the session that removed it


def overlay_differences(here: Session, there: Session, k: int) -> dict[str, Difference]:
    """Where the removed sets of two sessions differ after k removals each (a session shorter than k
    counts all its removals); whole-block removals count as both sublayers, as in `compare`."""
    from finercut_tui.compare import removed_set

    def removed_step(session: Session, sid: str) -> int:
        return next(i for i, s in enumerate(session.steps, 1) if sid in expand([s.removed]))

    a, b = removed_set(here, k), removed_set(there, k)
    out = {sid: Difference(sid, True, removed_step(here, sid)) for sid in a - b}
    out.update({sid: Difference(sid, False, removed_step(there, sid)) for sid in b - a})
    return dict(sorted(out.items(), key=lambda item: sort_key(item[0])))
