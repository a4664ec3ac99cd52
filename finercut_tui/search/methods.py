"""Method names, their units (sublayer or block), candidates and targets."""

from __future__ import annotations

from finercut_tui.errors import FinercutError
from finercut_tui.model.sublayers import expand, split_id

METHODS = ("finercut", "attn-drop", "mlp-drop", "block-drop", "joint-drop")
BLOCK_METRICS = ("cosine", "angular-gap")
# FinerCut distances, as registered in search/metrics.py (kept here so CLI help needs no torch)
METRIC_NAMES = ("js", "js-ref", "kl", "angular", "l2", "nll")


def check_method(method: str) -> None:
    if method not in METHODS:
        raise FinercutError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")


def unit(method: str) -> str:
    return "block" if method == "block-drop" else "sublayer"


def universe(method: str, num_blocks: int) -> list[str]:
    """Every unit the method may remove, in model order."""
    kinds = {
        "finercut": ("attn", "mlp"),
        "joint-drop": ("attn", "mlp"),
        "attn-drop": ("attn",),
        "mlp-drop": ("mlp",),
        "block-drop": ("block",),
    }[method]
    return [f"{b}.{k}" for b in range(num_blocks) for k in kinds]


def is_removed(uid: str, removed: frozenset[str] | set[str]) -> bool:
    return all(s in removed for s in expand([uid]))


def is_pinned(uid: str, pinned: set[str]) -> bool:
    return any(s in pinned for s in expand([uid]))


def progress(method: str, num_blocks: int, removed: frozenset[str] | set[str]) -> int:
    """How many of the method's units are removed (manual removals of the same kind count)."""
    return sum(is_removed(u, removed) for u in universe(method, num_blocks))


def resolve_target(
    text: str | int | float, method: str, num_blocks: int, pinned: set[str] = frozenset()
) -> int:
    """`N` units, a fraction 0<F<1 of the method's units (rounded down), or `all` (every unpinned one)."""
    units = universe(method, num_blocks)
    available = [u for u in units if not is_pinned(u, set(pinned))]
    noun = "blocks" if unit(method) == "block" else "sublayers"
    raw = str(text).strip().lower()
    if raw == "all":
        return len(available)
    try:
        value = float(raw)
    except ValueError:
        raise FinercutError(f"bad --target {text!r}: give a count N, a fraction 0<F<1, or 'all'") from None
    if value.is_integer() and value >= 1:
        count = int(value)
    elif 0 < value < 1:
        count = int(value * len(units))
        if count == 0:
            raise FinercutError(
                f"--target {text} of {len(units)} {noun} rounds down to 0: give a larger fraction"
            )
    else:
        raise FinercutError(
            f"--target {text} is out of range: give a count 1..{len(units)}, a fraction 0<F<1, or 'all'"
        )
    if count > len(available):
        pinned_note = f" ({len(units) - len(available)} pinned)" if len(available) < len(units) else ""
        raise FinercutError(
            f"--target {count} is more than there are candidates: {method} can remove {len(available)} "
            f"{noun}{pinned_note}"
        )
    return count


def front_held_blocks(num_blocks: int, exclude_front: float, removed_count: int) -> set[int]:
    """FinerCut's front exclusion: blocks 0..int(L*X/2) wait until int(L*X)+1 sublayers are removed."""
    if exclude_front <= 0 or removed_count >= int(num_blocks * exclude_front) + 1:
        return set()
    return set(range(int(num_blocks * exclude_front / 2) + 1))


def block_of(uid: str) -> int:
    return split_id(uid)[0]
