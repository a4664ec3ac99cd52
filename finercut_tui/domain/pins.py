"""Pins: sublayers the search must never remove. One meaning for the engine, the session and the grid.

A pin is held per sublayer. Pinning `<b>.block` pins both of its sublayers; unpinning one part
leaves the other pinned. A unit (a sublayer, or a block for block methods) is pinned when any of
its sublayers is. The session stores the canonical form: one entry per block, `<b>.block` when
both parts are pinned, else the pinned part, in model order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from finercut_tui.domain.sublayers import KINDS, expand, sort_key, split_id


class Pins:
    __slots__ = ("_parts",)

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self._parts: frozenset[str] = frozenset(expand(ids))

    def pin(self, uid: str) -> Pins:
        return Pins([*self._parts, uid])

    def unpin(self, uid: str) -> Pins:
        gone = set(expand([uid]))
        return Pins(p for p in self._parts if p not in gone)

    def __contains__(self, uid: object) -> bool:
        """True when any sublayer of `uid` is pinned."""
        return isinstance(uid, str) and any(s in self._parts for s in expand([uid]))

    @property
    def sublayers(self) -> frozenset[str]:
        return self._parts

    def canonical(self) -> list[str]:
        """The stored form: `<b>.block` for a block with both parts pinned, else the part."""
        out: list[str] = []
        for block in sorted({split_id(s)[0] for s in self._parts}):
            parts = [k for k in KINDS if f"{block}.{k}" in self._parts]
            out += [f"{block}.block"] if len(parts) == len(KINDS) else [f"{block}.{k}" for k in parts]
        return out

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._parts, key=sort_key))

    def __len__(self) -> int:
        return len(self._parts)

    def __bool__(self) -> bool:
        return bool(self._parts)

    def __or__(self, other: Iterable[str]) -> Pins:
        return Pins([*self._parts, *(other.sublayers if isinstance(other, Pins) else other)])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pins) and other._parts == self._parts

    def __hash__(self) -> int:
        return hash(self._parts)

    def __repr__(self) -> str:
        return f"Pins({self.canonical()!r})"
