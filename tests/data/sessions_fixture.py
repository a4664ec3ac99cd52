"""Deterministic sessions and event scripts for the TUI / show / replay tests (no model, no torch).

A synthetic greedy search: each sublayer has a fixed importance (FFNs and the first / last blocks
matter more, as in the papers) plus a little per-step noise; every step scores all remaining
candidates and removes the lowest, so the sessions look like real FinerCut sessions.
"""

from __future__ import annotations

import random
from pathlib import Path

from finercut_tui.domain import events as E
from finercut_tui.session import Session, Step

HERE = Path(__file__).parent


def _importance(num_blocks: int, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    out = {}
    for b in range(num_blocks):
        depth = b / max(1, num_blocks - 1)
        edge = 1.0 + 4.0 * (1 - depth) ** 6 + 2.0 * depth**8
        out[f"{b}.attn"] = 0.002 * edge * rng.uniform(0.3, 1.6)
        out[f"{b}.mlp"] = 0.006 * edge * rng.uniform(0.5, 2.0)
    return out


def greedy_steps(
    num_blocks: int,
    count: int,
    seed: int = 0,
    pinned: tuple[str, ...] = (),
    manual: dict[int, str] | None = None,
) -> list[Step]:
    """`count` removals; `manual` maps a step number to a sublayer removed by hand at that step."""
    rng = random.Random(seed + 1)
    base = _importance(num_blocks, seed)
    removed: list[str] = []
    steps: list[Step] = []
    manual = manual or {}
    for k in range(1, count + 1):
        if k in manual:
            removed.append(manual[k])
            steps.append(Step(removed=manual[k], by="manual"))
            continue
        candidates = [s for s in base if s not in removed and s not in pinned]
        growth = 1.0 + 0.15 * len(removed)
        scores = {s: round(base[s] * growth * rng.uniform(0.85, 1.15), 6) for s in candidates}
        best = min(candidates, key=lambda s: (scores[s], s))
        removed.append(best)
        steps.append(
            Step(
                removed=best,
                by="search",
                score=scores[best],
                scores=scores,
                seconds=round(2.0 + 0.05 * len(candidates), 2),
            )
        )
    return steps


def make_session(
    num_blocks: int,
    count: int,
    seed: int = 0,
    pinned: tuple[str, ...] = (),
    manual: dict[int, str] | None = None,
    finished: bool = False,
    name: str = "synthetic/llama-like",
    target: int | None = None,
    exclude_front: float = 0.0,
    evals: list[dict] | None = None,
) -> Session:
    target = count if target is None else target
    steps = greedy_steps(num_blocks, count, seed, pinned, manual)
    record = dict(
        schema_version=1,
        model={
            "name_or_path": name,
            "gguf_file": None,
            "revision": None,
            "dtype": "bfloat16",
            "dtype_asked": "auto",
            "architecture": "LlamaForCausalLM",
            "num_blocks": num_blocks,
        },
        calibration={
            "source": "wikitext2",
            "split": "train",
            "samples": 10,
            "seq_len": 256,
            "bos": True,
            "fingerprint": "sha256:" + "0" * 64,
        },
        method={
            "name": "finercut",
            "target": target,
            "target_spec": str(target),
            "metric": "js",
            "exclude_front": exclude_front,
            "iterative": True,
            "seed": 0,
        },
        pinned=list(pinned),
        steps=[s.to_dict() for s in steps],
        evals=list(evals or []),
        command=f"finercut-tui run --model synthetic/llama-like --target {target} --session s.yaml",
        created="2025-01-01T00:00:00+00:00",
        finished=finished,
    )
    return Session.from_yaml_dict(record)


def small_session() -> Session:
    """6 blocks, 4 removals (one by hand), a pin and two evals: the `show` golden file."""
    return make_session(
        6,
        4,
        seed=3,
        pinned=("5.attn",),
        manual={3: "0.mlp"},
        finished=True,
        name="tiny/llama-6",
        evals=[
            {
                "step": 0,
                "results": {"ppl:wikitext2": 10.5},
                "retained": {"ppl:wikitext2": 100.0},
                "retained_average": 100.0,
            },
            {
                "step": 4,
                "results": {"ppl:wikitext2": 12.25},
                "retained": {"ppl:wikitext2": 85.7},
                "retained_average": 85.7,
            },
        ],
    )


def session_30() -> Session:
    """A 30-block model, 9 of a target of 15 removals done."""
    return make_session(
        30, 9, seed=7, pinned=("2.mlp",), manual={4: "27.attn"}, target=15, name="meta-llama/Llama-2-7b-like"
    )


def session_80() -> Session:
    """An 80-block model with 40 removals (a finished search)."""
    return make_session(80, 40, seed=11, pinned=("0.attn", "79.mlp"), finished=True, name="big/llama-80")


def live_script(session: Session, scored: int = 20) -> list:
    """Events of a search on `session`'s model that has made its recorded removals and is now
    `scored` candidates into the next step (one more is being evaluated)."""
    events: list = [
        E.SearchStarted(
            method="finercut",
            metric=session.spec.metric,
            num_blocks=session.num_blocks,
            target=session.method.target,
            unit="sublayer",
            removed=(),
            pinned=tuple(session.pinned.canonical()),
        )
    ]
    removed: list[str] = []
    for k, step in enumerate(session.steps, 1):
        candidates = tuple(
            f"{b}.{kind}"
            for b in range(session.num_blocks)
            for kind in ("attn", "mlp")
            if f"{b}.{kind}" not in removed and f"{b}.{kind}" not in session.pinned
        )
        events.append(E.StepStarted(k, candidates))
        for i, (sid, score) in enumerate((step.scores or {}).items(), 1):
            events.append(E.CandidateScored(k, sid, score, i, len(candidates), seconds=0.5))
        events.append(
            E.SublayerRemoved(k, step.removed, step.by, step.score, dict(step.scores or {}), step.seconds)
        )
        removed.append(step.removed)
    k = len(session.steps) + 1
    candidates = tuple(
        f"{b}.{kind}"
        for b in range(session.num_blocks)
        for kind in ("attn", "mlp")
        if f"{b}.{kind}" not in removed and f"{b}.{kind}" not in session.pinned
    )
    events.append(E.StepStarted(k, candidates))
    rng = random.Random(99)
    base = _importance(session.num_blocks, 7)
    for i, sid in enumerate(candidates[:scored], 1):
        events.append(
            E.CandidateScored(
                k, sid, round(base[sid] * rng.uniform(1.5, 2.5), 6), i, len(candidates), seconds=0.5
            )
        )
    if scored < len(candidates):
        events.append(E.CandidateStarted(k, candidates[scored], scored + 1, len(candidates)))
    events.append(E.LogMessage("scripted search: no model behind this view"))
    return events


if __name__ == "__main__":  # regenerate the YAML fixtures: python tests/data/sessions_fixture.py
    small_session().save(HERE / "sessions_fixture_small.yaml")
    session_30().save(HERE / "sessions_fixture_30.yaml")
    session_80().save(HERE / "sessions_fixture_80.yaml")
