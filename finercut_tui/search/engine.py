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
    CandidateScored,
    CandidateStarted,
    EvalFailed,
    EvalFinished,
    EvalStarted,
    Event,
    LogMessage,
    Paused,
    PinChanged,
    Resumed,
    SearchFinished,
    SearchStarted,
    StepStarted,
    SublayerRemoved,
    SublayerRestored,
    TargetChanged,
)
from finercut_tui.domain.methods import block_of, is_removed
from finercut_tui.domain.pins import Pins
from finercut_tui.domain.spec import EvalSchedule, ScoringOptions, SearchSpec
from finercut_tui.domain.sublayers import expand, parse_id, sort_key
from finercut_tui.errors import FinercutError, error_line
from finercut_tui.model.surgery import PrunableModel
from finercut_tui.search.controller import Cancelled, Command, Controller, Directive
from finercut_tui.search.distributed import SINGLE, World, split_by_cost
from finercut_tui.search.faults import rank_fault
from finercut_tui.search.scoring import Scorer
from finercut_tui.search.similarity import angular_gap, measure_similarities

Evaluator = Callable[[Any, int], list[EvalRecord]]  # (request, step) -> eval records


class _Restart(Exception):
    """The model changed by hand mid-step: score the step again."""


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
        self.evaluated_steps = set(evaluated_steps or ())
        self.world = world  # one replica of many (search/distributed.py); SINGLE: one process
        self._rounds = 0  # scoring rounds run, to name the shared progress counter
        self._log: list[str] = []
        self.scorer: Scorer | None = None
        if self.method.scoring == "distance":
            self.scorer = Scorer(
                pm,
                input_ids,
                metric=spec.metric,
                batch_size=scoring.batch_size,
                prefix_cache=scoring.prefix_cache,
                log=self._log.append,
                distance_dtype=torch.float32 if spec.distance_dtype == "float32" else None,
            )
        pm.set_removed(expand(self.order))

    # -- state ---------------------------------------------------------------------------------------
    @property
    def step(self) -> int:
        """The index the next removal will get."""
        return len(self.order) + 1

    def _progress(self) -> int:
        return self.method.progress(self.pm.num_blocks, self.pm.removed)

    def _candidates(self) -> tuple[list[str], list[str]]:
        return self.spec.candidates(self.pm.num_blocks, self.pm.removed, self.pins)

    def _drain_logs(self) -> Iterator[Event]:
        while self._log:
            yield LogMessage(self._log.pop(0), "warning")

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
            while self._progress() < self.target:
                try:
                    yield from self._checkpoint()
                    chosen = yield from self._one_step()
                except _Restart:
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
        yield from self._drain_logs()
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
                    if command.name == "extend":
                        yield from self._extend(int(command.arg))
                    else:
                        yield from self._handle(command, None, None)
            except Cancelled:
                return

    def _directive(self) -> Directive:
        """This checkpoint's commands and state: the controller's, or under torchrun rank 0's on every
        rank (one broadcast per checkpoint)."""
        mine = self.controller.directive() if self.world.is_main else None
        return self.world.broadcast(mine)

    def _extend(self, target: int) -> Iterator[Event]:
        if target <= self._progress():
            yield LogMessage(
                f"the target {target} is reached already: give more than {self._progress()}", "warning"
            )
            return
        free, held = self._candidates()
        if not free and not held:
            yield LogMessage("nothing left to remove: every candidate is removed or pinned", "warning")
            return
        self.target = target
        yield TargetChanged(target)
        yield from self.run()

    def _one_step(self) -> Iterator[Event]:
        candidates, held = self._candidates()
        if not candidates:
            return None
        yield StepStarted(self.step, tuple(candidates), tuple(held))
        started = time.perf_counter()
        if self.method.scoring == "distance":
            scores = yield from self._score_finercut(candidates)
            computed = dict(scores)
        elif self.method.unit == "block" and self.spec.block_metric == "angular-gap":
            return (yield from self._angular_gap_run(candidates, started))
        else:
            scores, computed = yield from self._score_similarity(candidates)
        yield from self._checkpoint(scores)  # a pin that came in during the last candidate
        scores = {u: s for u, s in scores.items() if u not in self.pins}
        if not scores:
            raise _Restart()
        bad = sorted((u for u, s in scores.items() if not math.isfinite(s)), key=sort_key)
        if bad:
            yield LogMessage(
                f"non-finite scores for {', '.join(bad)} (overflow?): they are ranked last", "warning"
            )
        best = min(scores, key=lambda u: (scores[u] if math.isfinite(scores[u]) else math.inf, sort_key(u)))
        yield from self._remove(best, "search", scores[best], computed, time.perf_counter() - started)
        return best

    # -- FinerCut ----------------------------------------------------------------------------------------
    def _score_finercut(self, candidates: list[str]) -> Iterator[Event]:
        if self.world.active:
            return (yield from self._score_finercut_world(candidates))
        scorer = self.scorer
        scorer.reference()
        scorer.begin_step()
        yield from self._drain_logs()
        pending, scores = list(candidates), {}
        while pending:
            yield from self._checkpoint(scores, pending)
            if not pending:
                break
            uid = pending.pop(0)
            total = len(scores) + len(pending) + 1
            yield CandidateStarted(self.step, uid, len(scores) + 1, total)
            t0 = time.perf_counter()
            batch_size = scorer.batch_size
            scores[uid] = scorer.score(uid)
            if scorer.batch_size != batch_size:  # out of memory: all of this step at one batch size
                yield from self._drain_logs()
                raise _Restart()
            yield CandidateScored(self.step, uid, scores[uid], len(scores), total, time.perf_counter() - t0)
            yield from self._drain_logs()
        return scores

    def _score_finercut_world(self, candidates: list[str]) -> Iterator[Event]:
        """This rank's share of the candidates (balanced by cost), then every rank gets all scores.

        Commands other than cancel wait for the next step's checkpoint here (every rank must score the
        same step); a cancel on rank 0 reaches the others through the process group's store, so all
        stop after their current candidate. An out-of-memory fallback on any rank restarts the step on
        all ranks at the smallest batch size, as one process does."""
        world, scorer = self.world, self.scorer
        mine = split_by_cost(candidates, self.pm.num_blocks, world.size)[world.rank]
        counter = _SharedCounter(f"finercut/{self._rounds}", world)
        self._rounds += 1
        error, scores, shrunk, stopped = None, {}, None, False
        try:
            scorer.reference()
            scorer.begin_step()
            yield from self._drain_logs()
            for uid in mine:
                if self._stop_requested():
                    stopped = True
                    break
                yield CandidateStarted(self.step, uid, counter.peek() + 1, len(candidates))
                t0 = time.perf_counter()
                batch_size = scorer.batch_size
                scores[uid] = scorer.score(uid)
                if scorer.batch_size != batch_size:
                    shrunk = scorer.batch_size
                    break
                rank_fault(self.step, world)
                seconds = (time.perf_counter() - t0) / world.size  # the world's pace, for the ETA
                yield CandidateScored(self.step, uid, scores[uid], counter.add(), len(candidates), seconds)
                yield from self._drain_logs()
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # reported to every rank by the collective below
            error = exc
        world.agree(error)
        results = world.all_gather((tuple(candidates), scores, shrunk, stopped or self._stop_requested()))
        if any(stop for *_, stop in results):
            raise Cancelled()
        for r, (theirs, *_) in enumerate(results):
            if list(theirs) != candidates:
                raise FinercutError(f"rank {r} diverged from rank 0 at step {self.step}: other candidates")
        sizes = [b for _, _, b, _ in results if b is not None]
        if sizes:
            scorer.batch_size = min(sizes)
            yield from self._drain_logs()
            raise _Restart()
        merged: dict[str, float] = {}
        for _, theirs, _, _ in results:
            merged.update(theirs)
        return {u: merged[u] for u in candidates}  # model order, as one process records them

    def _stop_requested(self) -> bool:
        """Mid-step under torchrun: rank 0's controller was cancelled (it tells the others)."""
        if self.controller.cancelled:
            self.world.signal_stop()
            return True
        return self.world.stop_signalled()

    # -- similarity drop ---------------------------------------------------------------------------------
    def _importance(self) -> dict[str, float]:
        sims = measure_similarities(
            self.pm, self.input_ids, self.scoring.batch_size, log=self._log.append, world=self.world
        )
        out = {f"{b}.attn": 1.0 - s for b, s in sims.attn.items()}
        out.update({f"{b}.mlp": 1.0 - s for b, s in sims.mlp.items()})
        out.update({f"{b}.block": 1.0 - s for b, s in sims.block.items()})
        return out

    def _score_similarity(self, candidates: list[str]) -> Iterator[Event]:
        """Returns (scores of this step's candidates, scores to record for this step)."""
        if self.spec.iterative:
            importance = self._importance()
            computed = {u: importance[u] for u in candidates}
        elif self.one_shot_scores is None:
            removed = list(self.order)
            self.pm.restore_all()  # one-shot scores come from the dense model
            try:
                importance = self._importance()
            finally:
                self.pm.set_removed(expand(removed))
            self.one_shot_scores = {u: importance[u] for u in self.method.universe(self.pm.num_blocks)}
            computed = dict(self.one_shot_scores)
        else:
            computed = {}
        ranking = computed if self.spec.iterative else self.one_shot_scores
        for i, uid in enumerate(sorted(computed, key=sort_key), 1):
            yield CandidateScored(self.step, uid, computed[uid], i, len(computed))
        return {u: ranking[u] for u in candidates}, computed

    def _angular_gap_run(self, candidates: list[str], started: float) -> Iterator[Event]:
        """Remove the contiguous run of n blocks whose input and output are closest in angle."""
        if self.order and self.one_shot_scores:  # a run cut short by a kill: finish the same run
            start = block_of(self.order[0])
            if self.order == [f"{start + i}.block" for i in range(len(self.order))]:
                score = self.one_shot_scores.get(f"{start}.block")
                for b in range(start + len(self.order), start + self.target):
                    yield from self._remove(f"{b}.block", "search", score, {}, 0.0)
                return self.order[-1]
        n = self.target - self._progress()
        free = {block_of(u) for u in candidates}
        sims = measure_similarities(
            self.pm, self.input_ids, self.scoring.batch_size, log=self._log.append, world=self.world
        )
        gaps = {
            b: g for b, g in angular_gap(sims.last_token, n).items() if all(b + i in free for i in range(n))
        }
        if not gaps:
            raise FinercutError(f"no run of {n} consecutive removable blocks left for angular-gap")
        scores = {f"{b}.block": g for b, g in gaps.items()}
        for i, uid in enumerate(sorted(scores, key=sort_key), 1):
            yield CandidateScored(self.step, uid, scores[uid], i, len(scores))
        start = min(gaps, key=lambda b: (gaps[b], b))
        for i in range(n):
            yield from self._remove(
                f"{start + i}.block",
                "search",
                gaps[start],
                scores if i == 0 else {},
                time.perf_counter() - started if i == 0 else 0.0,
            )
        return f"{start}.block"

    # -- changes ------------------------------------------------------------------------------------------
    def _remove(
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

    def _evaluate(self, request: Any) -> Iterator[Event]:
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

    def _checkpoint(
        self, scores: dict[str, float] | None = None, pending: list[str] | None = None
    ) -> Iterator[Event]:
        """Handle queued commands; block while paused. Raises _Restart when the model changed."""
        restart = False
        announced_pause = False
        while True:
            directive = self._directive()
            if directive.cancelled:
                raise Cancelled()
            for command in directive.commands:
                restart |= yield from self._handle(command, scores, pending)
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
            raise _Restart()

    def _handle(self, command: Command, scores, pending) -> Iterator[Event]:
        name = command.name
        if name == "evaluate":
            yield from self._evaluate(command.arg)
            return False
        if name == "undo":
            if not self.order:
                yield LogMessage("nothing to undo", "warning")
                return False
            uid = self.order.pop()
            self.pm.set_removed(expand(self.order))
            yield SublayerRestored(step=len(self.order) + 1, sublayer=uid)
            return True
        try:
            sid = parse_id(command.arg, self.pm.num_blocks, allow_block=True)
        except FinercutError as exc:
            yield LogMessage(str(exc), "error")
            return False
        if name in ("pin", "unpin"):
            self.pins = self.pins.pin(sid) if name == "pin" else self.pins.unpin(sid)
            yield PinChanged(sid, name == "pin", tuple(self.pins.canonical()))
            if scores is not None:
                for uid in list(scores):
                    if uid in self.pins:
                        del scores[uid]
            if pending is not None:
                pending[:] = [u for u in pending if u not in self.pins]
                if name == "unpin":
                    free, _ = self._candidates()
                    pending.extend(u for u in free if u not in scores and u not in pending)
            return False
        if name == "force_remove":
            uid = self.method.unit_of(sid)
            if is_removed(uid, self.pm.removed):
                yield LogMessage(f"{uid} is already removed", "warning")
                return False
            if uid in self.pins:
                yield LogMessage(f"{uid} is pinned: unpin it (p) before removing it", "warning")
                return False
            yield from self._remove(uid, "manual", None, {}, None)
            return True
        yield LogMessage(f"unknown command {name!r}", "error")
        return False


class _SharedCounter:
    """Candidates scored by all ranks in one scoring round, in the process group's own store (a
    plain count in one process): rank 0's progress counts the whole world's candidates."""

    def __init__(self, key: str, world: World):
        self.key, self.local, self.store = key, 0, world.store()

    def _add(self, n: int) -> int:
        if self.store is not None:
            try:
                return int(self.store.add(self.key, n))
            except Exception:  # noqa: BLE001
                self.store = None
        self.local += n
        return self.local

    def add(self) -> int:
        return self._add(1)

    def peek(self) -> int:
        return self._add(0)
