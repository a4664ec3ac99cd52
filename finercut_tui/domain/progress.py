"""How far a running search is and how long it has left: fed every event, read by the progress bar
and the app's header alike."""

from __future__ import annotations

from collections import deque

from finercut_tui.domain import events as E
from finercut_tui.domain.methods import get_method
from finercut_tui.domain.sublayers import expand


class SearchProgress:
    """Removals towards the target, the candidate being scored, and the ETA."""

    def __init__(self, window: int = 64) -> None:
        self.method: str | None = None
        self.num_blocks = 0
        self.target = 0
        self.rescored = True
        self.removed: list[str] = []
        self.step = 1
        self.candidates = 0  # this step's
        self.index = 0  # candidates scored so far this step
        self.step_open = False
        self.finished = False
        self._seconds: deque[float] = deque(maxlen=window)

    @property
    def done(self) -> int:
        """Removals that count towards the target (the method's units; manual ones included)."""
        if self.method is None:
            return len(self.removed)
        return get_method(self.method).progress(self.num_blocks, set(expand(self.removed)))

    def apply(self, event: object) -> None:
        if isinstance(event, E.SearchStarted):
            self.method, self.num_blocks, self.target = event.method, event.num_blocks, event.target
            self.rescored = event.rescored
            self.removed = list(event.removed)
            self.step, self.finished = len(self.removed) + 1, False
        elif isinstance(event, E.StepStarted):
            self.step, self.candidates, self.index, self.step_open = (
                event.step,
                len(event.candidates),
                0,
                True,
            )
        elif isinstance(event, E.CandidateScored):
            self.index, self.candidates = event.index, event.total
            if event.seconds:
                self._seconds.append(event.seconds)
        elif isinstance(event, E.SublayerRemoved):
            self.removed.append(event.sublayer)
            self.step, self.step_open, self.index = event.step + 1, False, 0
        elif isinstance(event, E.SublayerRestored):
            if event.sublayer in self.removed:
                del self.removed[len(self.removed) - 1 - self.removed[::-1].index(event.sublayer)]
            self.step, self.step_open, self.index = len(self.removed) + 1, False, 0
        elif isinstance(event, E.TargetChanged):
            self.target, self.finished = event.target, False
        elif isinstance(event, E.SearchFinished):
            self.finished, self.step_open = True, False

    def remaining_evaluations(self) -> int:
        """Candidate evaluations left until the target: the rest of this step, then (greedy methods)
        one candidate fewer per step."""
        if self.finished:
            return 0
        in_step = max(0, self.candidates - self.index) if self.step_open else 0
        if not self.rescored:
            return in_step
        steps_left = max(0, self.target - self.done - (1 if self.step_open else 0))
        return in_step + sum(max(0, self.candidates - i) for i in range(1, steps_left + 1))

    def eta_seconds(self) -> float | None:
        """Mean seconds per candidate over the last ones, times what is left; None before any."""
        if self.finished or not self._seconds:
            return None
        return sum(self._seconds) / len(self._seconds) * self.remaining_evaluations()
