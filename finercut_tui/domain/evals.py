"""An evaluation record of the session (`evals:`), typed, and its text for every face.

A record is written by `eval.runner` (see its docstring for the meaning of each field) and read by
`show`, the app's evaluation panel, the model card and resume. Keys this version does not know are
kept in `extra` and written back unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

_ORDER = (
    "step",
    "what",
    "results",
    "average",
    "retained",
    "retained_average",
    "metrics",
    "higher_is_better",
    "overlaps_calibration",
    "warnings",
    "error",
    "seconds",
)


@dataclass(frozen=True)
class EvalRecord:
    step: int  # removals applied to the evaluated model (0 = the unpruned baseline)
    what: dict[str, Any] = field(default_factory=dict)  # equal `what` = the same measurement
    results: dict[str, float] = field(default_factory=dict)
    average: float | None = None
    retained: dict[str, float | None] = field(default_factory=dict)
    retained_average: float | None = None
    metrics: dict[str, str] = field(default_factory=dict)
    higher_is_better: dict[str, bool] = field(default_factory=dict)
    overlaps_calibration: bool | None = None
    warnings: tuple[str, ...] = ()
    error: str | None = None  # the evaluation failed: why, in one line (no results then)
    seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys written by another version

    @classmethod
    def from_dict(cls, data: Any) -> EvalRecord:
        if not isinstance(data, dict):
            raise ValueError(f"bad eval entry {data!r}")
        known = {k: v for k, v in data.items() if k in _ORDER}
        extra = {k: v for k, v in data.items() if k not in _ORDER}
        return cls(
            step=int(known.get("step", 0)),
            what=dict(known.get("what") or {}),
            results={str(k): v for k, v in (known.get("results") or {}).items()},
            average=known.get("average"),
            retained=dict(known.get("retained") or {}),
            retained_average=known.get("retained_average"),
            metrics=dict(known.get("metrics") or {}),
            higher_is_better=dict(known.get("higher_is_better") or {}),
            overlaps_calibration=known.get("overlaps_calibration"),
            warnings=tuple(known.get("warnings") or ()),
            error=known.get("error"),
            seconds=known.get("seconds"),
            extra=extra,
        )

    @property
    def failed(self) -> bool:
        return self.error is not None

    def to_dict(self) -> dict[str, Any]:
        """The YAML mapping, in the order the runner writes it; empty optional fields left out
        (`average` is always written: null says the evaluation had no task metrics)."""
        out: dict[str, Any] = {"step": self.step}
        if self.what:
            out["what"] = dict(self.what)
        if self.failed:  # nothing was measured
            return {**out, "error": self.error, **self.extra}
        out.update(results=dict(self.results), average=self.average, retained=dict(self.retained))
        out["retained_average"] = self.retained_average
        if self.metrics:
            out["metrics"] = dict(self.metrics)
        if self.higher_is_better:
            out["higher_is_better"] = dict(self.higher_is_better)
        if self.overlaps_calibration is not None:
            out["overlaps_calibration"] = self.overlaps_calibration
        if self.warnings:
            out["warnings"] = list(self.warnings)
        if self.error is not None:
            out["error"] = self.error
        if self.seconds is not None:
            out["seconds"] = self.seconds
        out.update(self.extra)
        return out


# -- text ------------------------------------------------------------------------------------------
def fmt_value(value: Any) -> str:
    """A measured number in four significant digits; anything else as it is."""
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def describe_eval(record: EvalRecord, width: int | None = None) -> str:
    """One eval in a line: `ppl:wikitext2 12.3 (96.1%), arc_easy 0.61 (98%)`."""
    if record.failed:
        return _clip(f"failed: {record.error}", width)
    parts = []
    for name, value in record.results.items():
        part = f"{name} {fmt_value(value)}"
        kept = record.retained.get(name)
        if kept is not None:
            part += f" ({float(kept):.1f}%)"
        parts.append(part)
    return _clip(", ".join(parts) or "-", width)


def _clip(text: str, width: int | None) -> str:
    if width is not None and len(text) > width:
        text = text[: max(1, width - 1)] + "…"
    return text


def retained_text(record: EvalRecord) -> str:
    """The retained average as `95.0%`, or `-`."""
    avg = record.retained_average
    return "-" if avg is None else f"{float(avg):.1f}%"
