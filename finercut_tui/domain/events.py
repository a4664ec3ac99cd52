"""The events a search emits. One stream, many sinks: the headless runner, the TUI, the session
recorder and replay all consume these plain dataclasses.

Steps are numbered from 1: step k is the k-th removal (manual ones included). Scores are "lower =
more removable" for every method.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from finercut_tui.domain.evals import EvalRecord
    from finercut_tui.domain.repairs import RepairRecord


@dataclass(frozen=True)
class SearchStarted:
    method: str
    metric: str | None
    num_blocks: int
    target: int  # total removals (sublayers, or blocks for block methods) the search aims for
    unit: str  # "sublayer" or "block"
    removed: tuple[str, ...]  # already removed (resume), in order
    pinned: tuple[str, ...]  # canonical pins (see domain/pins.py)
    rescored: bool = True  # every remaining candidate is scored again after each removal


@dataclass(frozen=True)
class StepStarted:
    step: int
    candidates: tuple[str, ...]  # what will be scored this step, in order
    held_back: tuple[str, ...] = ()  # front exclusion: not candidates yet


@dataclass(frozen=True)
class CandidateStarted:
    step: int
    sublayer: str
    index: int  # 1-based position among this step's candidates
    total: int


@dataclass(frozen=True)
class CandidateScored:
    step: int
    sublayer: str
    score: float
    index: int
    total: int
    seconds: float = 0.0


@dataclass(frozen=True)
class SublayerRemoved:
    step: int
    sublayer: str  # `<b>.attn`, `<b>.mlp` or `<b>.block`
    by: str  # "search" | "manual"
    score: float | None = None
    scores: dict[str, float] = field(default_factory=dict)
    seconds: float | None = None


@dataclass(frozen=True)
class SublayerRestored:
    """An undo: the last removal was taken back."""

    step: int  # the step index that was undone
    sublayer: str


@dataclass(frozen=True)
class TargetChanged:
    """The search goes on after reaching its target (the user raised it)."""

    target: int


@dataclass(frozen=True)
class PinChanged:
    sublayer: str  # what the user pinned or unpinned
    pinned: bool
    pins: tuple[str, ...] = ()  # every pin after the change, canonical: sinks take this, never re-derive


@dataclass(frozen=True)
class Paused:
    step: int


@dataclass(frozen=True)
class Resumed:
    step: int


@dataclass(frozen=True)
class EvalStarted:
    step: int  # number of removals applied to the evaluated model
    description: str


@dataclass(frozen=True)
class EvalFinished:
    step: int
    record: EvalRecord  # what is appended to the session's `evals:` list


@dataclass(frozen=True)
class EvalFailed:
    """An evaluation raised: the search goes on; `record` (with `error` set) goes to the session."""

    step: int
    record: EvalRecord


@dataclass(frozen=True)
class RepairMeasured:
    """A what-if from the workbench: the model at `step` evaluated repaired, next to the same model
    unrepaired (`record.before`); the search goes on with the unrepaired weights."""

    step: int
    record: RepairRecord


@dataclass(frozen=True)
class LogMessage:
    text: str
    level: str = "info"  # "info" | "warning" | "error"


DONE_REASONS = ("target", "exhausted")  # SearchFinished reasons after which the search is done


@dataclass(frozen=True)
class SearchFinished:
    reason: str  # "target" | "cancelled" | "exhausted" | "error"
    removed: tuple[str, ...]
    message: str = ""


Event = (
    SearchStarted
    | StepStarted
    | CandidateStarted
    | CandidateScored
    | SublayerRemoved
    | SublayerRestored
    | PinChanged
    | TargetChanged
    | Paused
    | Resumed
    | EvalStarted
    | EvalFinished
    | EvalFailed
    | RepairMeasured
    | LogMessage
    | SearchFinished
)
