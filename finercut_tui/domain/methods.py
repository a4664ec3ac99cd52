"""The method registry: per method, what it scores, its unit, how it ranks, and its candidates.

Adding a method is one `register(Method(...))` here plus, when it scores in a new way, one `Scoring`
member and its strategy in `search/strategies.py`. No other module compares method names.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from finercut_tui.domain.pins import Pins
from finercut_tui.domain.sublayers import expand, split_id
from finercut_tui.errors import FinercutError

BLOCK_METRICS = ("cosine", "angular-gap", "cosine-gap")
# block metrics that pick one contiguous run of n blocks for the target (not a ranking)
ONE_RUN_METRICS = ("angular-gap", "cosine-gap")
# FinerCut distances, as registered in search/metrics.py (named here so CLI help needs no torch)
METRIC_NAMES = ("js", "js-ref", "kl", "angular", "l2", "nll")


class Scoring(StrEnum):
    """How a method scores its candidates; `search/strategies.py` holds one strategy per member."""

    DISTANCE = "distance"  # the pruned model's output against the original's (FinerCut): needs --metric
    SIMILARITY = "similarity"  # 1 - cos(module input, module output) (LLM-Drop)

    @property
    def uses_metric(self) -> bool:
        """Whether --metric (a distance from search/metrics.py) names the score."""
        return self is Scoring.DISTANCE


@dataclass(frozen=True)
class Method:
    name: str
    kinds: tuple[str, ...]  # what it removes: "attn", "mlp" and/or "block"
    scoring: Scoring
    always_iterative: bool  # re-scores every remaining candidate after each removal, whatever --iterative
    front_exclusion: bool  # honours --exclude-front
    summary: str
    # the paper's settings, taken where the user gives none: SearchSpec fields (metric, block_metric)
    # and CalibrationSpec fields (source, samples, seq_len, layout)
    defaults: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)
    # spec fields the method is defined by (angular is block-drop with angular-gap): no option changes them
    requires: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)
    barriers: tuple[int, int] = (0, 0)  # blocks at the front and at the back that are never candidates
    paper: str = ""  # where the method comes from (README's method table)

    @property
    def unit(self) -> str:
        return "block" if self.kinds == ("block",) else "sublayer"

    @property
    def noun(self) -> str:
        return f"{self.unit}s"

    def iterative(self, asked: bool) -> bool:
        """Whether scores are re-computed after each removal."""
        return self.always_iterative or asked

    def unit_of(self, sid: str) -> str:
        """What this method removes for the sublayer `sid`: the sublayer, or its whole block."""
        block, _ = split_id(sid)
        return f"{block}.block" if self.unit == "block" else sid

    def universe(self, num_blocks: int) -> list[str]:
        """Every unit the method may remove, in model order (barrier blocks excluded)."""
        front, back = self.barriers
        return [f"{b}.{k}" for b in range(front, num_blocks - back) for k in self.kinds]

    def spec_defaults(self, fields: Set[str]) -> dict[str, Any]:
        """The method's own defaults among `fields` (e.g. SearchSpec's or CalibrationSpec's)."""
        return {k: v for k, v in self.defaults.items() if k in fields}

    def progress(self, num_blocks: int, removed: Set[str]) -> int:
        """How many of the method's units are removed (manual removals of the same kind count)."""
        return sum(is_removed(u, removed) for u in self.universe(num_blocks))

    def candidates(
        self, num_blocks: int, removed: Set[str], pins: Pins, held_blocks: Set[int] = frozenset()
    ) -> tuple[list[str], list[str]]:
        """(this step's candidates, units held back by front exclusion), in model order.

        `removed` holds sublayer ids. Held-back units become candidates when nothing else is left,
        so a search never waits forever on them.
        """
        units = [u for u in self.universe(num_blocks) if not is_removed(u, removed) and u not in pins]
        free = [u for u in units if block_of(u) not in held_blocks]
        held = [u for u in units if block_of(u) in held_blocks]
        return (free, held) if free else (held, [])

    def resolve_target(self, text: str | int | float, num_blocks: int, pins: Pins = Pins()) -> int:
        """`N` units, a fraction 0<F<1 of the method's units (rounded down), or `all` (every unpinned one)."""
        units = self.universe(num_blocks)
        available = [u for u in units if u not in pins]
        raw = str(text).strip().lower()
        if raw == "all":
            return len(available)
        try:
            value = float(raw)
        except ValueError:
            raise FinercutError(
                f"bad --target {text!r}: give a count N, a fraction 0<F<1, or 'all'"
            ) from None
        if value.is_integer() and value >= 1:
            count = int(value)
        elif 0 < value < 1:
            count = int(value * len(units))
            if count == 0:
                raise FinercutError(
                    f"--target {text} of {len(units)} {self.noun} rounds down to 0: give a larger fraction"
                )
        else:
            raise FinercutError(
                f"--target {text} is out of range: give a count 1..{len(units)}, a fraction 0<F<1, or 'all'"
            )
        if count > len(available):
            pinned_note = f" ({len(units) - len(available)} pinned)" if len(available) < len(units) else ""
            raise FinercutError(
                f"--target {count} is more than there are candidates: {self.name} can remove "
                f"{len(available)} {self.noun}{pinned_note}"
            )
        return count


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    _REGISTRY[method.name] = method
    return method


register(
    Method(
        "finercut",
        ("attn", "mlp"),
        Scoring.DISTANCE,
        always_iterative=True,
        front_exclusion=True,
        summary="greedy: remove the sublayer whose removal changes the output least",
        paper="Zhang et al., FinerCut, arXiv 2405.18218",
    )
)
_SIM = Scoring.SIMILARITY
_LLM_DROP = "He et al., What Matters in Transformers? (LLM-Drop), arXiv 2406.15786"
register(
    Method("attn-drop", ("attn",), _SIM, False, False, "attention sublayers by 1 - cos", paper=_LLM_DROP)
)
register(Method("mlp-drop", ("mlp",), _SIM, False, False, "MLP sublayers by 1 - cos", paper=_LLM_DROP))
register(Method("block-drop", ("block",), _SIM, False, False, "whole blocks by 1 - cos", paper=_LLM_DROP))
register(
    Method(
        "joint-drop",
        ("attn", "mlp"),
        _SIM,
        False,
        False,
        "attention and MLP ranked together",
        paper=_LLM_DROP,
    )
)
# the peers' methods by name, each with its paper's defaults (README: "The peers' methods")
register(
    Method(
        "sleb",
        ("block",),
        Scoring.DISTANCE,
        always_iterative=True,
        front_exclusion=False,
        summary="greedy: remove the block whose removal gives the lowest calibration NLL",
        defaults={"metric": "nll", "source": "wikitext2", "samples": 128, "seq_len": 2048},
        barriers=(1, 1),  # SLEB's early_barrier / latter_barrier: its first and last block stay
        paper="Song et al., SLEB, arXiv 2402.09025",
    )
)
register(
    Method(
        "blockpruner",
        ("attn", "mlp"),
        Scoring.DISTANCE,
        always_iterative=True,
        front_exclusion=False,
        summary="greedy: remove the sublayer whose removal gives the lowest calibration perplexity",
        defaults={"metric": "nll", "samples": 32, "seq_len": 2048},
        paper="Zhong et al., BlockPruner, arXiv 2406.10594",
    )
)
register(
    Method(
        "shortgpt",
        ("block",),
        _SIM,
        False,
        False,
        "one-shot: the blocks of lowest Block Influence, 1 - mean cos(block input, output)",
        requires={"block_metric": "cosine"},
        paper="Men et al., ShortGPT, arXiv 2403.03853",
    )
)
register(
    Method(
        "angular",
        ("block",),
        _SIM,
        False,
        False,
        "one-shot: the contiguous run of n blocks of smallest angular distance at the last token",
        defaults={"block_metric": "angular-gap"},
        requires={"block_metric": "angular-gap"},
        paper="Gromov et al., The Unreasonable Ineffectiveness of the Deeper Layers, arXiv 2403.17887",
    )
)
register(
    Method(
        "replaceme",
        ("block",),
        _SIM,
        False,
        False,
        "one-shot: the contiguous run of n blocks of smallest cosine distance at the last token; "
        "then `repair` fits its linear map",
        defaults={"block_metric": "cosine-gap", "samples": 8000, "seq_len": 1024},
        requires={"block_metric": "cosine-gap"},
        paper="Shopkhoev et al., ReplaceMe, arXiv 2505.02819",
    )
)

METHODS: tuple[str, ...] = tuple(_REGISTRY)


def get_method(name: str) -> Method:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise FinercutError(f"unknown method {name!r}: choose one of {', '.join(METHODS)}") from None


def picks_one_run(method: Method, block_metric: str) -> bool:
    """Whether the method removes one contiguous run of blocks chosen for its target (angular-gap,
    cosine-gap):
    its order at a smaller target is then no prefix of the order at a larger one."""
    return method.unit == "block" and block_metric in ONE_RUN_METRICS


def is_removed(uid: str, removed: Set[str]) -> bool:
    """A unit is removed when all of its sublayers are."""
    return all(s in removed for s in expand([uid]))


def block_of(uid: str) -> int:
    return split_id(uid)[0]


FRONT_RULES = ("reference", "halved")


def front_held_blocks(
    num_blocks: int, exclude_front: float | None, removed_count: int, rule: str
) -> set[int]:
    """FinerCut's front exclusion `-x X`: the blocks held back while `removed_count` sublayers are gone.

    "reference" (llm_dissect's get_target_layers): blocks 0..int(L*X) wait until int(2L*X)+1
    sublayers are removed; at X = 0 block 0 waits for the first removal. "halved": the rule of
    sessions recorded before 2026-11-29, blocks 0..int(L*X/2) until int(L*X)+1 removals, nothing
    at X = 0; kept so that those sessions replay and resume as recorded. None: no exclusion.
    """
    if exclude_front is None:
        return set()
    if rule == "halved":
        if exclude_front <= 0 or removed_count >= int(num_blocks * exclude_front) + 1:
            return set()
        return set(range(int(num_blocks * exclude_front / 2) + 1))
    if removed_count >= int(2 * num_blocks * exclude_front) + 1:
        return set()
    return set(range(int(num_blocks * exclude_front) + 1))
