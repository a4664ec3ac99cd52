"""The search as a generator of events, for every method.

FinerCut (greedy): at each step score every remaining candidate c as the distance between the
original model and the current pruned model with c also removed; remove the lowest; repeat.
Similarity drop (LLM-Drop): importance = 1 - cos(input, output) of each module; one-shot
ranks once on the dense model, iterative re-measures after every removal.

Between candidate evaluations the engine polls the controller: pause/step/cancel, pin/unpin,
force-remove, undo and evaluate-now. A manual removal or an undo changes the model, so the
current step starts over; an evaluation leaves everything as it was.

Under torchrun every checkpoint is a broadcast of rank 0's directive: the other ranks apply rank 0's
commands (its app's keys) at the same point, so all replicas keep the same model. With more than one
rank the checkpoints lie between steps (every rank scores its share of a step), except cancel, which
all ranks see after their current candidate; evaluations run on rank 0 while the others wait in the
next collective (bounded by --dist-timeout).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from finercut_tui.domain.evals import EvalRecord
from finercut_tui.domain.events import (
    EvalFailed,
    EvalFinished,
    EvalStarted,
    Event,
    LogMessage,
    Paused,
    PinChanged,
    RepairMeasured,
    Resumed,
    SearchFinished,
    SearchStarted,
    StepStarted,
    SublayerRemoved,
    SublayerRestored,
    TargetChanged,
)
from finercut_tui.domain.methods import is_removed
from finercut_tui.domain.pins import Pins
from finercut_tui.domain.spec import EvalSchedule, ScoringOptions, SearchSpec
from finercut_tui.domain.sublayers import expand, parse_id, sort_key
from finercut_tui.errors import FinercutError, error_line
from finercut_tui.model.surgery import PrunableModel
from finercut_tui.search.controller import (
    Cancelled,
    Command,
    Controller,
    Directive,
    Evaluate,
    Extend,
    ForceRemove,
    Pin,
    Undo,
    Unpin,
)
from finercut_tui.search.distributed import SINGLE, World
from finercut_tui.search.strategies import Restart, strategy_for

Evaluator = Callable[[Any, int], list[EvalRecord]]  # (request, step) -> eval records


class SearchEngine:
    def __init__(
        self,
        pm: PrunableModel,
        input_ids: torch.Tensor,
        spec: SearchSpec,
        target: int,
        *,
        scoring: ScoringOptions = ScoringOptions(),
        schedule: EvalSchedule = EvalSchedule(),
        controller: Controller | None = None,
        order: list[str] | None = None,
        pins: Pins = Pins(),
        one_shot_scores: dict[str, float] | None = None,
        evaluator: Evaluator | None = None,
        evaluated_steps: set[int] | None = None,
        world: World = SINGLE,
    ):
        self.spec = spec.validate()
        self.method = spec.info
        self.target = int(target)
        self.scoring = scoring.validate()
        self.schedule = schedule.validate()
        self.pm = pm
        self.input_ids = input_ids
        self.controller = controller or Controller()
        self.order: list[str] = list(order or [])  # removal units, as recorded in the session
        self.pins = Pins(pins)
        self.one_shot_scores = one_shot_scores
        self.evaluator = evaluator
        # (request, step, ridge, unrepaired record) -> RepairRecord: the workbench's repair what-if,
        # given by the face that has one (commands/tui.py); None: not offered
        self.what_if: Callable[[Any, int, float, EvalRecord], Any] | None = None
        self.evaluated_steps = set(evaluated_steps or ())
        self.world = world  # one replica of many (search/distributed.py); SINGLE: one process
        self.log: list[str] = []  # warnings from the scorers, drained into the event stream
        self.strategy = strategy_for(self)
        self.scorer = self.strategy.scorer
        pm.set_removed(expand(self.order))

    # -- state ---------------------------------------------------------------------------------------
    @property
    def step(self) -> int:
        """The index the next removal will get."""
        return len(self.order) + 1

    def progress(self) -> int:
        return self.method.progress(self.pm.num_blocks, self.pm.removed)

    def _candidates(self) -> tuple[list[str], list[str]]:
        return self.spec.candidates(self.pm.num_blocks, self.pm.removed, self.pins)

    def drain_logs(self) -> Iterator[Event]:
        while self.log:
            yield LogMessage(self.log.pop(0), "warning")

    # -- the run ---------------------------------------------------------------------------------------
    def run(self) -> Iterator[Event]:
        every, request = self.schedule.every, self.schedule.request
        yield SearchStarted(
            method=self.method.name,
            metric=self.spec.score_label,
            num_blocks=self.pm.num_blocks,
            target=self.target,
            unit=self.method.unit,
            removed=tuple(self.order),
            pinned=tuple(self.pins.canonical()),
            rescored=self.spec.rescored,
        )
        reason = "target"
        try:
            if every and 0 not in self.evaluated_steps and not self.order:
                yield from self._evaluate(request)
            while self.progress() < self.target:
                try:
                    yield from self.checkpoint()
                    chosen = yield from self._one_step()
                except Restart:
                    continue
                if chosen is None:
                    reason = "exhausted"
                    break
                if every and len(self.order) % every == 0:
                    yield from self._evaluate(request)
            if every and len(self.order) not in self.evaluated_steps:
                yield from self._evaluate(request)
        except Cancelled:
            reason = "cancelled"
        yield from self.drain_logs()
        yield SearchFinished(reason=reason, removed=tuple(self.order))

    def serve(self) -> Iterator[Event]:
        """After `run`: keep the model a workbench until cancelled. Evaluate, undo, pin and remove by
        hand as during the search; `extend` raises the target and searches on."""
        while True:
            if self.world.is_main:
                self.controller.wait_for_command()
            directive = self._directive()
            if directive.cancelled:
                return
            try:
                for command in directive.commands:
                    if isinstance(command, Extend):
                        yield from self._extend(command.target)  # applied once the target changed
                    else:
                        yield from self._handle(command, None, None)
                        self._applied()
            except Cancelled:
                return

    def _applied(self) -> None:
        if self.world.is_main:
            self.controller.applied()

    def _directive(self) -> Directive:
        """This checkpoint's commands and state: the controller's, or under torchrun rank 0's on every
        rank (one broadcast per checkpoint)."""
        mine = self.controller.directive() if self.world.is_main else None
        return self.world.broadcast(mine)

    def _extend(self, target: int) -> Iterator[Event]:
        """Search on to `target` removals (the command counts as applied once the target changed)."""
        free, held = self._candidates()
        if target <= self.progress():
            why = f"the target {target} is reached already: give more than {self.progress()}"
        elif not free and not held:
            why = "nothing left to remove: every candidate is removed or pinned"
        else:
            self.target = target
            yield TargetChanged(target)
            self._applied()
            yield from self.run()
            return
        yield LogMessage(why, "warning")
        self._applied()

    def _one_step(self) -> Iterator[Event]:
        candidates, held = self._candidates()
        if not candidates:
            return None
        yield StepStarted(self.step, tuple(candidates), tuple(held))
        return (yield from self.strategy.step(candidates, time.perf_counter()))

    def remove_best(
        self, scores: dict[str, float], computed: dict[str, float], started: float
    ) -> Iterator[Event]:
        """Remove the lowest of `scores` (ties: model order); `computed` is what this step recorded."""
        yield from self.checkpoint(scores)  # a pin that came in during the last candidate
        scores = {u: s for u, s in scores.items() if u not in self.pins}
        if not scores:
            raise Restart()
        bad = sorted((u for u, s in scores.items() if not math.isfinite(s)), key=sort_key)
        if bad:
            yield LogMessage(
                f"non-finite scores for {', '.join(bad)} (overflow?): they are ranked last", "warning"
            )
        best = min(scores, key=lambda u: (scores[u] if math.isfinite(scores[u]) else math.inf, sort_key(u)))
        yield from self.remove(best, "search", scores[best], computed, time.perf_counter() - started)
        return best

    def stop_requested(self) -> bool:
        """Mid-step under torchrun: rank 0's controller was cancelled (it tells the others)."""
        if self.controller.cancelled:
            self.world.signal_stop()
            return True
        return self.world.stop_signalled()

    # -- changes ------------------------------------------------------------------------------------------
    def remove(
        self, uid: str, by: str, score: float | None, scores: dict[str, float], seconds: float | None
    ) -> Iterator[Event]:
        step = self.step
        self.order.append(uid)
        self.pm.set_removed(expand(self.order))
        yield SublayerRemoved(
            step=step, sublayer=uid, by=by, score=score, scores=dict(scores), seconds=seconds
        )
        if by == "search":
            self.controller.removal_done()

    def _evaluate(self, request: Any, repair_ridge: float | None = None) -> Iterator[Event]:
        step = len(self.order)
        if self.evaluator is None or request is None:
            yield LogMessage(
                "evaluation asked for but no evaluation is configured (--ppl / --tasks)", "warning"
            )
            return
        describe = getattr(request, "describe", None)
        yield EvalStarted(step, describe() if callable(describe) else str(request))
        try:
            records = self.evaluator(request, step)
        except Exception as exc:  # an evaluation must not end hours of search (e.g. OOM inside lm-eval)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            why = error_line(exc, 200)
            self.evaluated_steps.add(step)  # not again in this run; a resume may try again
            yield EvalFailed(step, EvalRecord(step, error=why))
            return
        self.evaluated_steps.add(step)
        for record in records:
            self.evaluated_steps.add(record.step)
            yield EvalFinished(record.step, record)
        if repair_ridge is not None and records and self.world.is_main:
            yield from self._what_if(request, step, repair_ridge, records[-1])

    def _what_if(self, request: Any, step: int, ridge: float, unrepaired: EvalRecord) -> Iterator[Event]:
        """The model repaired, evaluated next to `unrepaired`; its weights are given back afterwards."""
        if self.what_if is None:
            yield LogMessage("the repair what-if is not offered here: run `finercut-tui repair`", "warning")
            return
        try:
            record = self.what_if(request, step, ridge, unrepaired)
        except Exception as exc:  # the search goes on, as after a failed evaluation
            yield LogMessage(f"the repair what-if failed: {error_line(exc, 200)}", "error")
            return
        yield RepairMeasured(step, record)

    def checkpoint(
        self, scores: dict[str, float] | None = None, pending: list[str] | None = None
    ) -> Iterator[Event]:
        """Handle queued commands; block while paused. Raises Restart when the model changed."""
        restart = False
        announced_pause = False
        while True:
            directive = self._directive()
            if directive.cancelled:
                raise Cancelled()
            for command in directive.commands:
                restart |= yield from self._handle(command, scores, pending)
                self._applied()
            if not directive.paused:
                break
            if not announced_pause:
                announced_pause = True
                yield Paused(self.step)
            if self.world.is_main:  # the other ranks wait in the next broadcast
                self.controller.wait_while_paused()
        if announced_pause:
            yield Resumed(self.step)
        if restart:
            raise Restart()

    def _handle(self, command: Command, scores, pending) -> Iterator[Event]:
        """Apply one command; returns True when the model changed (the step starts over)."""
        match command:
            case Evaluate(request, ridge):
                yield from self._evaluate(request, ridge)
                return False
            case Undo():
                return (yield from self._undo())
            case Pin(text) | Unpin(text):
                sid = yield from self._parse(text)
                if sid is not None:
                    yield from self._set_pin(sid, isinstance(command, Pin), scores, pending)
                return False
            case ForceRemove(text):
                sid = yield from self._parse(text)
                return sid is not None and (yield from self._force_remove(sid))
            case Extend():
                yield LogMessage("the search has not reached its target yet: it goes on by itself", "warning")
                return False

    def _parse(self, text: str) -> Iterator[Event]:
        try:
            return parse_id(text, self.pm.num_blocks, allow_block=True)
        except FinercutError as exc:
            yield LogMessage(str(exc), "error")
            return None

    def _undo(self) -> Iterator[Event]:
        if not self.order:
            yield LogMessage("nothing to undo", "warning")
            return False
        uid = self.order.pop()
        self.pm.set_removed(expand(self.order))
        yield SublayerRestored(step=len(self.order) + 1, sublayer=uid)
        return True

    def _set_pin(self, sid: str, pin: bool, scores, pending) -> Iterator[Event]:
        self.pins = self.pins.pin(sid) if pin else self.pins.unpin(sid)
        yield PinChanged(sid, pin, tuple(self.pins.canonical()))
        if scores is not None:
            for uid in list(scores):
                if uid in self.pins:
                    del scores[uid]
        if pending is not None:
            pending[:] = [u for u in pending if u not in self.pins]
            if not pin:
                free, _ = self._candidates()
                pending.extend(u for u in free if u not in scores and u not in pending)

    def _force_remove(self, sid: str) -> Iterator[Event]:
        uid = self.method.unit_of(sid)
        if is_removed(uid, self.pm.removed):
            yield LogMessage(f"{uid} is already removed", "warning")
            return False
        if uid in self.pins:
            yield LogMessage(f"{uid} is pinned: unpin it (p) before removing it", "warning")
            return False
        yield from self.remove(uid, "manual", None, {}, None)
        return True
