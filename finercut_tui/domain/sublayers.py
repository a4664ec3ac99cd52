"""Sublayer ids: `<block>.attn`, `<block>.mlp`, and `<block>.block` for a whole block.

Ids are plain strings everywhere (CLI, YAML, UI); these helpers parse, validate and order them.
"""

from __future__ import annotations

from collections.abc import Iterable

from finercut_tui.errors import FinercutError

KINDS = ("attn", "mlp")
_KIND_ORDER = {"attn": 0, "mlp": 1, "block": 2}


def sublayer_id(block: int, kind: str) -> str:
    return f"{block}.{kind}"


def split_id(sid: str) -> tuple[int, str]:
    """Split a *valid* id into (block, kind); use `parse_id` for user input."""
    block, kind = sid.split(".")
    return int(block), kind


def parse_id(text: str, num_blocks: int, allow_block: bool = False) -> str:
    """Validate a user-given id and return it in canonical form (`"07.attn"` -> `"7.attn"`)."""
    kinds = KINDS + (("block",) if allow_block else ())
    forms = " or ".join(f"<block>.{k}" for k in kinds)
    head, sep, kind = str(text).strip().partition(".")
    if not sep or not head.isdigit() or kind not in kinds:
        raise FinercutError(
            f"bad sublayer id {text!r}: write {forms} with block in 0..{num_blocks - 1}, e.g. 3.attn"
        )
    block = int(head)
    if block >= num_blocks:
        raise FinercutError(
            f"sublayer id {text!r} is out of range: this model has blocks 0..{num_blocks - 1}"
        )
    return sublayer_id(block, kind)


def all_sublayers(num_blocks: int) -> list[str]:
    """Every sublayer id in model order: 0.attn, 0.mlp, 1.attn, ..."""
    return [sublayer_id(b, k) for b in range(num_blocks) for k in KINDS]


def expand(ids: Iterable[str]) -> list[str]:
    """Replace `<b>.block` with its two sublayers; keep order, drop repeats."""
    out: list[str] = []
    for sid in ids:
        block, kind = split_id(sid)
        for part in KINDS if kind == "block" else (kind,):
            s = sublayer_id(block, part)
            if s not in out:
                out.append(s)
    return out


def sort_key(sid: str) -> tuple[int, int]:
    block, kind = split_id(sid)
    return block, _KIND_ORDER[kind]
