"""How a step scores its candidates: one strategy per way of scoring (`domain.methods.Scoring`).

The engine (search/engine.py) owns the loop, the commands and the removals; a strategy only turns
this step's candidates into scores (and, for angular-gap, into one contiguous run of removals).
Each `step()` is a generator of events whose return value is the unit removed (None: none left).

- `DistanceGreedy` (FinerCut): every candidate's distance to the original model, one candidate at
  a time between checkpoints, or split over the ranks under torchrun.
- `SimilarityRank` (LLM-Drop): 1 - cos of every module, on the dense model once (one-shot) or on
  the current model at every step (iterative).
- `GapRun` (Gromov et al., ReplaceMe): the contiguous run of n blocks whose input and output are closest.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any, Protocol

import torch

from finercut_tui.domain.events import CandidateScored, CandidateStarted, Event
from finercut_tui.domain.methods import Method, Scoring, block_of, picks_one_run
from finercut_tui.domain.spec import ScoringOptions, SearchSpec
from finercut_tui.domain.sublayers import expand, sort_key
from finercut_tui.errors import FinercutError
from finercut_tui.model.surgery import PrunableModel
from finercut_tui.search.controller import Cancelled
from finercut_tui.search.distributed import World, split_by_cost
from finercut_tui.search.faults import rank_fault
from finercut_tui.search.scoring import Scorer
from finercut_tui.search.similarity import measure_similarities, run_gaps


class Engine(Protocol):
    """What a strategy reads and calls of the engine that runs it (search/engine.py: SearchEngine)."""

    pm: PrunableModel
    input_ids: torch.Tensor
    spec: SearchSpec
    scoring: ScoringOptions
    method: Method
    world: World
    order: list[str]
    target: int
    one_shot_scores: dict[str, float] | None
    log: list[str]

    @property
    def step(self) -> int: ...
    def progress(self) -> int: ...
    def checkpoint(self, scores: dict[str, float] | None = None, pending: list[str] | None = None) -> Any: ...
    def drain_logs(self) -> Iterator[Event]: ...
    def stop_requested(self) -> bool: ...
    def remove(self, uid: str, by: str, score, scores: dict[str, float], seconds) -> Iterator[Event]: ...
    def remove_best(self, scores: dict[str, float], computed: dict[str, float], started: float) -> Any: ...


class Restart(Exception):
    """The model changed (a manual removal, an undo, a smaller batch): score the step again."""


class Strategy(ABC):
    """One step of the engine's search: events out, the unit removed (None: none left) returned."""

    scorer: Scorer | None = None  # the distance scorer, for the strategies that have one

    def __init__(self, engine: Engine):
        self.engine = engine

    @abstractmethod
    def step(self, candidates: list[str], started: float) -> Iterator[Event]: ...


class Ranking(Strategy):
    """Score every candidate, then the engine removes the lowest score."""

    @abstractmethod
    def score(self, candidates: list[str]) -> Iterator[Event]:
        """Returns (scores of this step's candidates, scores to record for this step)."""

    def step(self, candidates: list[str], started: float) -> Iterator[Event]:
        scores, computed = yield from self.score(candidates)
        return (yield from self.engine.remove_best(scores, computed, started))


class DistanceGreedy(Ranking):
    """FinerCut: the distance between the original model and the current one with c also removed."""

    def __init__(self, engine: Engine):
        super().__init__(engine)
        spec, scoring = engine.spec, engine.scoring
        self.scorer = Scorer(
            engine.pm,
            engine.input_ids,
            metric=spec.metric,
            batch_size=scoring.batch_size,
            prefix_cache=scoring.prefix_cache,
            log=engine.log.append,
            distance_dtype=torch.float32 if spec.distance_dtype == "float32" else None,
        )
        self._rounds = 0  # scoring rounds run, to name the shared progress counter

    def score(self, candidates: list[str]) -> Iterator[Event]:
        if self.engine.world.active:
            scores = yield from self._score_world(candidates)
        else:
            scores = yield from self._score_here(candidates)
        return scores, dict(scores)

    def _score_here(self, candidates: list[str]) -> Iterator[Event]:
        e, scorer = self.engine, self.scorer
        scorer.reference()
        scorer.begin_step()
        yield from e.drain_logs()
        pending, scores = list(candidates), {}
        while pending:
            yield from e.checkpoint(scores, pending)
            if not pending:
                break
            uid = pending.pop(0)
            total = len(scores) + len(pending) + 1
            yield CandidateStarted(e.step, uid, len(scores) + 1, total)
            t0 = time.perf_counter()
            batch_size = scorer.batch_size
            scores[uid] = scorer.score(uid)
            if scorer.batch_size != batch_size:  # out of memory: all of this step at one batch size
                yield from e.drain_logs()
                raise Restart()
            yield CandidateScored(e.step, uid, scores[uid], len(scores), total, time.perf_counter() - t0)
            yield from e.drain_logs()
        return scores

    def _score_world(self, candidates: list[str]) -> Iterator[Event]:
        """This rank's share of the candidates (balanced by cost), then every rank gets all scores.

        Commands other than cancel wait for the next step's checkpoint here (every rank must score the
        same step); a cancel on rank 0 reaches the others through the process group's store, so all
        stop after their current candidate. An out-of-memory fallback on any rank restarts the step on
        all ranks at the smallest batch size, as one process does."""
        e, scorer = self.engine, self.scorer
        world = e.world
        mine = split_by_cost(candidates, e.pm.num_blocks, world.size)[world.rank]
        counter = _SharedCounter(f"finercut/{self._rounds}", world)
        self._rounds += 1
        error, scores, shrunk, stopped = None, {}, None, False
        try:
            scorer.reference()
            scorer.begin_step()
            yield from e.drain_logs()
            for uid in mine:
                if e.stop_requested():
                    stopped = True
                    break
                yield CandidateStarted(e.step, uid, counter.peek() + 1, len(candidates))
                t0 = time.perf_counter()
                batch_size = scorer.batch_size
                scores[uid] = scorer.score(uid)
                if scorer.batch_size != batch_size:
                    shrunk = scorer.batch_size
                    break
                rank_fault(e.step, world)
                seconds = (time.perf_counter() - t0) / world.size  # the world's pace, for the ETA
                yield CandidateScored(e.step, uid, scores[uid], counter.add(), len(candidates), seconds)
                yield from e.drain_logs()
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # reported to every rank by the collective below
            error = exc
        world.agree(error)
        results = world.all_gather((tuple(candidates), scores, shrunk, stopped or e.stop_requested()))
        return (yield from self._merge(candidates, results))

    def _merge(self, candidates: list[str], results: list) -> Iterator[Event]:
        if any(stop for *_, stop in results):
            raise Cancelled()
        for r, (theirs, *_) in enumerate(results):
            if list(theirs) != candidates:
                raise FinercutError(
                    f"rank {r} diverged from rank 0 at step {self.engine.step}: other candidates"
                )
        sizes = [b for _, _, b, _ in results if b is not None]
        if sizes:
            self.scorer.batch_size = min(sizes)
            yield from self.engine.drain_logs()
            raise Restart()
        merged: dict[str, float] = {}
        for _, theirs, _, _ in results:
            merged.update(theirs)
        return {u: merged[u] for u in candidates}  # model order, as one process records them


class SimilarityRank(Ranking):
    """LLM-Drop: importance = 1 - cos(module input, module output), one-shot or iterative."""

    def importance(self) -> dict[str, float]:
        e = self.engine
        sims = measure_similarities(e.pm, e.input_ids, e.scoring.batch_size, log=e.log.append, world=e.world)
        out = {f"{b}.attn": 1.0 - s for b, s in sims.attn.items()}
        out.update({f"{b}.mlp": 1.0 - s for b, s in sims.mlp.items()})
        out.update({f"{b}.block": 1.0 - s for b, s in sims.block.items()})
        return out

    def score(self, candidates: list[str]) -> Iterator[Event]:
        e = self.engine
        if e.spec.iterative:
            importance = self.importance()
            computed = {u: importance[u] for u in candidates}
        elif e.one_shot_scores is None:
            removed = list(e.order)
            e.pm.restore_all()  # one-shot scores come from the dense model
            try:
                importance = self.importance()
            finally:
                e.pm.set_removed(expand(removed))
            e.one_shot_scores = {u: importance[u] for u in e.method.universe(e.pm.num_blocks)}
            computed = dict(e.one_shot_scores)
        else:
            computed = {}
        ranking = computed if e.spec.iterative else e.one_shot_scores
        for i, uid in enumerate(sorted(computed, key=sort_key), 1):
            yield CandidateScored(e.step, uid, computed[uid], i, len(computed))
        return {u: ranking[u] for u in candidates}, computed


class GapRun(Strategy):
    """Remove the contiguous run of n blocks whose input and output lie closest (angular-gap: in
    angle, Gromov et al.; cosine-gap: in cosine distance, ReplaceMe), at the last token."""

    def step(self, candidates: list[str], started: float) -> Iterator[Event]:
        e = self.engine
        if e.order and e.one_shot_scores:  # a run cut short by a kill: finish the same run
            start = block_of(e.order[0])
            if e.order == [f"{start + i}.block" for i in range(len(e.order))]:
                score = e.one_shot_scores.get(f"{start}.block")
                for b in range(start + len(e.order), start + e.target):
                    yield from e.remove(f"{b}.block", "search", score, {}, 0.0)
                return e.order[-1]
        n = e.target - e.progress()
        free = {block_of(u) for u in candidates}
        sims = measure_similarities(e.pm, e.input_ids, e.scoring.batch_size, log=e.log.append, world=e.world)
        gaps = {
            b: g
            for b, g in run_gaps(sims.last_token, n, e.spec.block_metric).items()
            if all(b + i in free for i in range(n))
        }
        if not gaps:
            raise FinercutError(f"no run of {n} consecutive removable blocks left for {e.spec.block_metric}")
        scores = {f"{b}.block": g for b, g in gaps.items()}
        for i, uid in enumerate(sorted(scores, key=sort_key), 1):
            yield CandidateScored(e.step, uid, scores[uid], i, len(scores))
        start = min(gaps, key=lambda b: (gaps[b], b))
        for i in range(n):
            first = i == 0
            seconds = time.perf_counter() - started if first else 0.0
            yield from e.remove(f"{start + i}.block", "search", gaps[start], scores if first else {}, seconds)
        return f"{start}.block"


STRATEGIES: dict[Scoring, type[Ranking]] = {
    Scoring.DISTANCE: DistanceGreedy,
    Scoring.SIMILARITY: SimilarityRank,
}


def strategy_for(engine: Engine) -> Strategy:
    """The strategy of the engine's method (and, for block units, its block metric)."""
    spec = engine.spec
    if picks_one_run(spec.info, spec.block_metric):
        return GapRun(engine)
    return STRATEGIES[spec.info.scoring](engine)


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
