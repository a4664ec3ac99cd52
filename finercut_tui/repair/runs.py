"""Removed sublayers grouped into runs, in residual order (torch-free).

Residual order is 0.attn, 0.mlp, 1.attn, 1.mlp, ...: the order in which a sequential pre-norm
decoder adds the sublayers' outputs to the residual stream. A *run* is a maximal stretch of
consecutive removed sublayers in that order; the sublayer that receives its patch is the nearest
kept one before it (`patched`), None for a run that starts at 0.attn.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from finercut_tui.domain.sublayers import KINDS, expand, sort_key


def residual_order(num_blocks: int) -> list[str]:
    return [f"{b}.{kind}" for b in range(num_blocks) for kind in KINDS]


@dataclass(frozen=True)
class Run:
    """Consecutive removed sublayers `sublayers` (residual order) and the kept one before them."""

    sublayers: tuple[str, ...]
    patched: str | None  # the nearest kept sublayer before the run; None when the run starts at 0.attn

    @property
    def first(self) -> str:
        return self.sublayers[0]

    @property
    def last(self) -> str:
        return self.sublayers[-1]

    def describe(self) -> str:
        if len(self.sublayers) == 1:
            return self.first
        return f"{self.first}..{self.last} ({len(self.sublayers)} sublayers)"


def removal_runs(removed: Iterable[str], num_blocks: int) -> list[Run]:
    """The maximal runs of `removed` (ids, `.block` allowed), front to back."""
    gone = set(expand(removed))
    order = residual_order(num_blocks)
    unknown = gone - set(order)
    if unknown:
        raise ValueError(f"unknown sublayer ids for {num_blocks} blocks: {sorted(unknown, key=sort_key)}")
    runs: list[Run] = []
    current: list[str] = []
    before: str | None = None  # the last kept sublayer seen
    for sid in order:
        if sid in gone:
            current.append(sid)
            continue
        if current:
            runs.append(Run(tuple(current), before))
            current = []
        before = sid
    if current:
        runs.append(Run(tuple(current), before))
    return runs
