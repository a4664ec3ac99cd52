"""What a search is: the spec (method, target, metric, ...), its calibration, its scoring knobs and its
evaluation schedule, each with its defaults and validation in one place.

`SearchSpec` defines the removal order: two runs with equal specs on equal tokens remove the same
sublayers in the same order. `ScoringOptions` only change how fast that happens. `MethodRecord` is
the session's `method:` mapping, written exactly as schema 1 always wrote it.

A field declared with `option(...)` is a command-line option of `run` and `tui` (`--help` shows its
default), is taken from the session on `--resume` when left out, and (for `SearchSpec`) is written
to the session's `method:` record when it differs from its default: adding a search option is one
field here plus the code that uses it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Set
from dataclasses import dataclass, field
from typing import Any

from finercut_tui.domain.methods import (
    BLOCK_METRICS,
    FRONT_RULES,
    METHODS,
    METRIC_NAMES,
    ONE_RUN_METRICS,
    Method,
    front_held_blocks,
    get_method,
)
from finercut_tui.domain.options import Option, given_over, option, options_of
from finercut_tui.domain.pins import Pins
from finercut_tui.domain.records import DEFAULT_LAYOUT, LAYOUTS
from finercut_tui.errors import FinercutError

PREFIX_CACHE_CHOICES = ("gpu", "cpu", "off")
# how long a rank waits for the others in a collective (--dist-timeout): long enough for an lm-eval run
DEFAULT_TIMEOUT_S = 1800
# the fields of the `method:` record that decide the order: a resume may not change them
_DEFINING = ("metric", "distance_dtype", "exclude_front", "exclude_front_rule", "iterative", "block_metric")
DISTANCE_DTYPES = ("float32", "model")
EVAL_DURING_RUN = "evaluation during the run"


@dataclass(frozen=True)
class SearchSpec:
    method: str = option("finercut", group="search", help=" | ".join(METHODS))
    # as given: a count N, a fraction 0<F<1, or "all"
    target: str = option(
        "0.25", group="search", help="N removals, a fraction 0<F<1 of the candidates, or 'all'"
    )
    # FinerCut's distance (distance methods only)
    metric: str = option("js", group="search", help=f"FinerCut distance: {', '.join(METRIC_NAMES)}")
    iterative: bool = option(
        False,
        action="store_true",
        group="search",
        help="similarity drop: re-score after every removal (default: one-shot)",
    )
    # FinerCut's front exclusion (the reference code's -x); None: off
    exclude_front: float | None = option(
        None,
        type=float,
        metavar="X",
        group="search",
        help="FinerCut's front exclusion, the reference code's -x X: hold back blocks 0..int(L*X) until "
        "int(2L*X)+1 sublayers are gone (X = 0 holds block 0 for the first removal; default: off)",
    )
    front_rule: str = "reference"  # how -x is applied: see domain.methods.front_held_blocks
    # block units: cosine (a ranking), or angular-gap / cosine-gap (one contiguous run)
    block_metric: str = option("cosine", choices=BLOCK_METRICS, group="search", help="block-drop score")
    seed: int = option(0, type=int, group="search", help="random seed")
    # distance methods: float32, or "model" (the model's dtype)
    distance_dtype: str = option(
        "float32",
        choices=DISTANCE_DTYPES,
        group="search",
        help="FinerCut: compute the distance in float32 or in the model's dtype (as the reference code "
        "does; for reproducing bf16 runs)",
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "target", str(self.target))

    @property
    def info(self) -> Method:
        return get_method(self.method)

    @property
    def rescored(self) -> bool:
        """Whether every remaining candidate is scored again after each removal."""
        return self.info.iterative(self.iterative)

    @property
    def score_label(self) -> str:
        """What the scores are: the distance, the block metric, or cosine."""
        if self.info.scoring.uses_metric:
            return self.metric
        return self.block_metric if self.info.unit == "block" else "cosine"

    def validate(self) -> SearchSpec:
        info = self.info  # unknown method
        for key, value in info.requires.items():
            if getattr(self, key) != value:
                flag = "--" + key.replace("_", "-")
                raise FinercutError(
                    f"--method {self.method} means {flag} {value}, not {getattr(self, key)}: drop {flag}"
                )
        if info.scoring.uses_metric and self.metric not in METRIC_NAMES:
            raise FinercutError(f"unknown metric {self.metric!r}: choose one of {', '.join(METRIC_NAMES)}")
        if self.exclude_front is not None and not 0.0 <= self.exclude_front < 1.0:
            raise FinercutError(f"--exclude-front {self.exclude_front} is out of range: give 0 <= X < 1")
        if self.distance_dtype not in DISTANCE_DTYPES:
            raise FinercutError(
                f"unknown --distance-dtype {self.distance_dtype!r}: choose {', '.join(DISTANCE_DTYPES)}"
            )
        if self.front_rule not in FRONT_RULES:
            raise FinercutError(f"unknown front-exclusion rule {self.front_rule!r}: {', '.join(FRONT_RULES)}")
        if self.block_metric not in BLOCK_METRICS:
            raise FinercutError(
                f"unknown --block-metric {self.block_metric!r}: choose {', '.join(BLOCK_METRICS)}"
            )
        if self.block_metric in ONE_RUN_METRICS and self.iterative:
            raise FinercutError(
                f"--block-metric {self.block_metric} picks one contiguous run: it cannot be --iterative"
            )
        return self

    def held_blocks(self, num_blocks: int, removed_count: int) -> set[int]:
        """Blocks held back by front exclusion now (methods without it hold none)."""
        if not self.info.front_exclusion:
            return set()
        return front_held_blocks(num_blocks, self.exclude_front, removed_count, self.front_rule)

    def candidates(self, num_blocks: int, removed: Set[str], pins: Pins) -> tuple[list[str], list[str]]:
        """(this step's candidates, units held back), given the removed sublayers and the pins."""
        held = self.held_blocks(num_blocks, len(removed))
        return self.info.candidates(num_blocks, removed, pins, held)

    def replace(self, **overrides: Any) -> SearchSpec:
        """A copy with the given fields changed; None means "keep"."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def record_fields(self) -> dict[str, Any]:
        """The order-defining part of the `method:` record, as schema 1 writes it."""
        info = self.info
        if info.scoring.uses_metric:
            out = {"metric": self.metric, "exclude_front": self.exclude_front, "iterative": True}
            if self.distance_dtype != "float32":
                out["distance_dtype"] = self.distance_dtype
            if self.exclude_front is not None and self.front_rule != "halved":
                out["exclude_front_rule"] = self.front_rule  # files without it used the halved rule
            return out
        out: dict[str, Any] = {"metric": "cosine", "iterative": self.iterative}
        if info.unit == "block":
            out["block_metric"] = self.block_metric
        return out

    def resume_conflict(self, recorded: SearchSpec) -> str | None:
        """Why this spec cannot continue a session recorded with `recorded` (None when it can)."""
        if recorded.method != self.method:
            return f"is a {recorded.method} session, not {self.method}: drop --method or start a new session"
        mine = {**self.record_fields(), **_added_values(self)}
        theirs = {**recorded.record_fields(), **_added_values(recorded)}
        for key in (*_DEFINING, *(k for k in mine if k not in _DEFINING)):
            if key in mine and key in theirs and mine[key] != theirs[key]:
                flag = "--" + key.replace("_", "-")
                return (
                    f"was searched with {key} {theirs[key]!r}, not {mine[key]!r}: drop {flag} to continue it, "
                    "or start a new session"
                )
        return None


@dataclass(frozen=True)
class CalibrationSpec:
    """Which tokens a search scores on (the session records the resulting fingerprint)."""

    source: str = option(
        "wikitext2",
        "--calib",
        group="calibration",
        help="wikitext2 | c4 | pydoc | PATH to a .txt or .jsonl file",
    )
    samples: int = option(10, "--calib-samples", type=int, group="calibration", help="number of samples")
    seq_len: int = option(256, "--seq-len", type=int, group="calibration", help="tokens per sample")
    # how text becomes rows: see data.calibration
    layout: str = option(
        DEFAULT_LAYOUT,
        "--calib-layout",
        choices=LAYOUTS,
        group="calibration",
        help=f"how text becomes rows: {DEFAULT_LAYOUT} (every row starts with BOS), finercut (one "
        "stream, one BOS) or llm-drop (documents + EOS, no BOS)",
    )

    def validate(self) -> CalibrationSpec:
        for flag, value in (("--calib-samples", self.samples), ("--seq-len", self.seq_len)):
            if int(value) < 1:
                raise FinercutError(f"{flag} must be >= 1, got {value}")
        return self

    def describe(self) -> str:
        layout = f" ({self.layout} layout)" if self.layout != DEFAULT_LAYOUT else ""
        return f"{self.samples} x {self.seq_len} tokens from {self.source}{layout}"


@dataclass(frozen=True)
class ScoringOptions:
    """How fast a search scores; never what it finds."""

    batch_size: int | None = option(
        None,
        type=int,
        group="speed",
        help="samples per forward (default all; halves itself on out-of-memory)",
    )
    prefix_cache: str = option(
        "gpu",
        choices=PREFIX_CACHE_CHOICES,
        group="speed",
        help="keep block inputs per step on the model's device, offload them to CPU, or off",
    )

    def validate(self) -> ScoringOptions:
        if self.batch_size is not None and self.batch_size < 1:
            raise FinercutError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.prefix_cache not in PREFIX_CACHE_CHOICES:
            raise FinercutError(
                f"--prefix-cache {self.prefix_cache!r}: choose {', '.join(PREFIX_CACHE_CHOICES)}"
            )
        return self


@dataclass(frozen=True)
class EvalSchedule:
    """Evaluate every `every` removals (0: never) and at the end, with `request` (an EvalRequest)."""

    every: int = option(
        0,
        "--eval-every",
        type=int,
        metavar="K",
        group=EVAL_DURING_RUN,
        help="evaluate after every K removals and at the end",
    )
    request: Any = None  # an EvalRequest (eval/request.py declares its options)

    def validate(self) -> EvalSchedule:
        if self.every < 0:
            raise FinercutError("--eval-every must be >= 0")
        if self.every and self.request is None:
            raise FinercutError(
                "--eval-every needs something to evaluate: add --ppl SOURCE and/or --tasks NAMES"
            )
        return self


# the SearchSpec fields MethodRecord writes by hand (as schema 1 always did); any other field of the
# spec is written under its own name when it differs from its default
_HAND_WRITTEN = (
    "method",
    "target",
    "metric",
    "iterative",
    "exclude_front",
    "front_rule",
    "block_metric",
    "seed",
    "distance_dtype",
)


def _added_values(spec: SearchSpec) -> dict[str, Any]:
    """Every field added after schema 1's, default or not (what a resume compares)."""
    return {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name not in _HAND_WRITTEN}


def added_fields(spec: SearchSpec) -> dict[str, Any]:
    """The spec's fields added after schema 1's, where they differ from their defaults."""
    out = {}
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        if f.name not in _HAND_WRITTEN and value != f.default:
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


@dataclass(frozen=True)
class MethodRecord:
    """The session's `method:` mapping: the spec, the resolved target, and a batch size that an
    out-of-memory fallback shrank (so a resume scores at the same size)."""

    spec: SearchSpec
    target: int | None = None
    batch_size: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys written by another version

    _KNOWN = (
        "name",
        "target",
        "target_spec",
        "metric",
        "exclude_front",
        "exclude_front_rule",
        "distance_dtype",
        "iterative",
        "block_metric",
        "seed",
    )

    def to_dict(self) -> dict[str, Any]:
        spec = self.spec
        out: dict[str, Any] = {"name": spec.method, "target": self.target, "target_spec": spec.target}
        out.update(spec.record_fields())
        out["seed"] = spec.seed
        out.update(added_fields(spec))
        if self.batch_size is not None:
            out["batch_size"] = self.batch_size
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: Any) -> MethodRecord:
        if not isinstance(data, dict) or "name" not in data:
            raise ValueError(f"bad method entry {data!r}")
        name = str(data["name"])
        info = get_method(name)
        spec_type = SETUP_PARTS["spec"]
        default = spec_type()
        target = data.get("target")
        added = {
            f.name: data[f.name]
            for f in dataclasses.fields(spec_type)
            if f.name not in _HAND_WRITTEN and f.name in data
        }
        spec = spec_type(
            method=name,
            target=str(data.get("target_spec", target)),
            metric=str(data.get("metric", default.metric)) if info.scoring.uses_metric else default.metric,
            iterative=bool(data.get("iterative", default.iterative)),
            exclude_front=None if data.get("exclude_front") is None else float(data["exclude_front"]),
            front_rule=str(data.get("exclude_front_rule", "halved")),
            distance_dtype=str(data.get("distance_dtype", default.distance_dtype)),
            block_metric=str(data.get("block_metric", default.block_metric)),
            seed=int(data.get("seed", default.seed) or 0),
            **added,
        )
        batch = data.get("batch_size")
        known = (*cls._KNOWN, "batch_size", *added)
        return cls(
            spec=spec,
            target=None if target is None else int(target),
            batch_size=None if batch is None else int(batch),
            extra={k: v for k, v in data.items() if k not in known},
        )


def _part(name: str) -> Any:
    return dataclasses.field(default_factory=lambda: SETUP_PARTS[name]())


@dataclass(frozen=True)
class SearchSetup:
    """Everything a search job needs besides the model: what to search, on which tokens, how fast,
    when to evaluate, and the pins it starts with."""

    spec: SearchSpec = _part("spec")
    calibration: CalibrationSpec = _part("calibration")
    scoring: ScoringOptions = _part("scoring")
    schedule: EvalSchedule = EvalSchedule()
    pins: tuple[str, ...] = option(
        (),
        "--pin",
        action="append",
        metavar="ID",
        group="search",
        help="never remove this sublayer (repeatable)",
    )

    def replace(self, **parts: Any) -> SearchSetup:
        return dataclasses.replace(self, **{k: v for k, v in parts.items() if v is not None})

    @classmethod
    def for_method(cls, name: str | None) -> SearchSetup:
        """A new search of method `name` with its paper's settings (`Method.defaults`: e.g. SLEB's
        metric and calibration size); options given on the command line still win."""
        if not name:
            return cls()
        info = get_method(name)
        parts = {}
        for part_name, part_type in SETUP_PARTS.items():
            fields = {f.name for f in dataclasses.fields(part_type)}
            defaults = info.spec_defaults(fields)
            if part_name == "spec":
                defaults["method"] = name
            if defaults:
                parts[part_name] = part_type(**defaults)
        return cls().replace(**parts)

    def given(self, args: Any) -> SearchSetup:
        """This setup with what `args` gives (an argparse Namespace from `setup_options`): an option
        left out (None) keeps this setup's value, which is the session's on --resume."""
        parts = {name: given_over(getattr(self, name), args) for name in SETUP_PARTS}
        return dataclasses.replace(given_over(self, args), **parts)


# the parts of a setup whose fields are options, in --help order; a test swaps in a spec with a
# field more to see it reach --help and the session with no other edit
SETUP_PARTS: dict[str, type] = {"spec": SearchSpec, "calibration": CalibrationSpec, "scoring": ScoringOptions}


def setup_options() -> list[Option]:
    """The options of a search setup (`run`, `tui`): the spec's, the pins, the calibration's, the
    scoring's. None when left out, so that `SearchSetup.given` keeps the session's value."""
    spec, *rest = SETUP_PARTS.values()
    out = options_of(spec) + options_of(SearchSetup)
    for part in rest:
        out += options_of(part)
    return out
