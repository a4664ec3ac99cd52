"""The session's `repairs:` records: one per `finercut-tui repair` (torch-free).

A repair fits a least-squares patch per run of removed sublayers and folds it into the nearest kept
sublayer's output projection (finercut_tui/repair). The record says where each patch went, which run
it covers and how much of the stream error it took away, and holds the evaluations of the pruned model
before and after, each with retained % against the unpruned baseline, as `HealRecord` does. Keys
written by another version are kept in `extra`; `to_dict` leaves out what is empty or None, so files
diff cleanly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from finercut_tui.domain.evals import EvalRecord
from finercut_tui.domain.records import keyed_dict, optional_eval, optional_float, require_mapping

DEFAULT_RIDGE = 0.1  # relative: lam = ridge * trace(z^T z) / d (README: the sweep that chose it)
OBJECTIVE = "lstsq"  # the least-squares patch (finercut_tui/repair/lstsq.py)


@dataclass(frozen=True)
class PatchRecord:
    """One run's patch. `sublayer` received it (None: the run starts at 0.attn and got none, see `note`);
    `run` lists the removed sublayers it stands in for, in residual order. The errors are
    ||P + z_p - D|| / ||D|| (before) and ||P + z_p T - D|| / ||D|| (after) on the calibration tokens."""

    run: tuple[str, ...]
    sublayer: str | None = None
    error_before: float | None = None
    error_after: float | None = None
    note: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    _KEYS = ("sublayer", "run", "error_before", "error_after", "relative_error", "note")

    @property
    def relative_error(self) -> float | None:
        """||P + z_p T - D|| / ||P + z_p - D||: the share of the unpatched stream error left."""
        if self.error_before is None or self.error_after is None or self.error_before == 0:
            return None
        return self.error_after / self.error_before

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sublayer": self.sublayer, "run": list(self.run)}
        before = None if self.error_before is None else round(float(self.error_before), 6)
        after = None if self.error_after is None else round(float(self.error_after), 6)
        if before is not None:
            out["error_before"] = before
        if after is not None:
            out["error_after"] = after
        if before and after is not None:  # from the written values, so a file round-trips
            out["relative_error"] = round(after / before, 6)
        if self.note:
            out["note"] = self.note
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: Any) -> PatchRecord:
        data = require_mapping(data, "patch")
        run = data.get("run")
        if not isinstance(run, list) or not run:
            raise ValueError(f"patch entry without a run {data!r}")
        return cls(
            run=tuple(str(s) for s in run),
            sublayer=None if data.get("sublayer") is None else str(data["sublayer"]),
            error_before=optional_float(data.get("error_before"), "repair error_before"),
            error_after=optional_float(data.get("error_after"), "repair error_after"),
            note=data.get("note") or None,
            extra={k: v for k, v in data.items() if k not in cls._KEYS},
        )


@dataclass(frozen=True)
class RepairRecord:
    """One `finercut-tui repair`: least-squares patches for the model at `step`, exported to `out`.

    `ridge` is relative (lam = ridge * trace(z^T z) / d); `calibration` holds source, split, samples,
    seq_len, layout, tokens and the token fingerprint the patches were fitted on. `before` / `after`
    are evaluations of the pruned model at `step` without and with the patches (same `what`)."""

    step: int
    objective: str = "lstsq"
    ridge: float | None = None
    calibration: dict[str, Any] = field(default_factory=dict)
    patches: tuple[PatchRecord, ...] = ()
    seconds: float | None = None  # the fit and fold alone (not the evaluations or the export)
    out: str | None = None
    command: str | None = None
    created: str | None = None
    before: EvalRecord | None = None
    after: EvalRecord | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    _KEYS = (
        "step",
        "created",
        "command",
        "objective",
        "ridge",
        "calibration",
        "patches",
        "seconds",
        "out",
        "before",
        "after",
    )

    @property
    def patched(self) -> list[PatchRecord]:
        return [p for p in self.patches if p.sublayer is not None]

    def to_dict(self) -> dict[str, Any]:
        return keyed_dict(self, self._KEYS, self.extra)

    @classmethod
    def from_dict(cls, data: Any) -> RepairRecord:
        data = require_mapping(data, "repair")
        if "step" not in data:
            raise ValueError(f"repair entry without a step {data!r}")

        return cls(
            step=int(data["step"]),
            objective=str(data.get("objective") or "lstsq"),
            ridge=optional_float(data.get("ridge"), "repair ridge"),
            calibration=dict(data.get("calibration") or {}),
            patches=tuple(PatchRecord.from_dict(p) for p in data.get("patches") or []),
            seconds=optional_float(data.get("seconds"), "repair seconds"),
            out=data.get("out"),
            command=data.get("command"),
            created=data.get("created"),
            before=optional_eval(data, "before"),
            after=optional_eval(data, "after"),
            extra={k: v for k, v in data.items() if k not in cls._KEYS},
        )
