"""The typed parts of a session file: model, calibration, steps and undone removals.

Each record reads its YAML mapping (`from_dict`, where its defaults live) and writes it back
(`to_dict`) in the order schema 1 has always used, so files stay readable and diff-able. Keys an
unknown version wrote are kept in `extra` and written back unchanged. `MethodRecord` lives beside
the search spec (domain/spec.py) and `EvalRecord` beside its text (domain/evals.py).

Adding a session field: give it a default here (readers of old files get the default) and write
it in `to_dict` only when it differs from that default, so old files round-trip byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from finercut_tui.domain.evals import EvalRecord

# what a file may claim before anything is sized by it (a damaged or hand-edited file must not cost
# unbounded memory or time): far above any real model, far below what would exhaust a machine
MAX_BLOCKS = 4096
MAX_SAMPLES = 1_000_000
MAX_SEQ_LEN = 10_000_000


def bounded_int(value: Any, what: str, low: int, high: int) -> int:
    """`value` as an int in low..high, else a ValueError that names the field and the range."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{what} must be a whole number, not {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{what} must be a whole number, not {value!r}") from None
    if not low <= number <= high:
        raise ValueError(f"{what} {number} is out of range {low}..{high}")
    return number


def optional_float(value: Any, what: str) -> float | None:
    """None, or `value` as a float; a ValueError that names the field for anything else."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{what} must be a number, not {value!r}")
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{what} must be a number, not {value!r}") from None


def _score(value: Any) -> float:
    number = optional_float(value, "a candidate's score")
    if number is None:
        raise ValueError("a candidate's score is empty")
    return number


def keyed_dict(record: Any, keys: tuple[str, ...], extra: dict[str, Any]) -> dict[str, Any]:
    """A record's YAML mapping: its fields in `keys` order (the first always, the others when not
    empty), nested records (and tuples of them) as their own mappings, then `extra` unchanged."""
    out: dict[str, Any] = {keys[0]: getattr(record, keys[0])}
    for key in keys[1:]:
        value = getattr(record, key)
        if value is None or (isinstance(value, dict | tuple) and not value):
            continue
        if hasattr(value, "to_dict"):
            value = value.to_dict()
        elif isinstance(value, tuple):
            value = [v.to_dict() if hasattr(v, "to_dict") else v for v in value]
        elif isinstance(value, dict):
            value = dict(value)
        out[key] = value
    out.update(extra)
    return out


def optional_eval(data: dict[str, Any], key: str) -> EvalRecord | None:
    """The evaluation record under `key` (a heal's or a repair's before / after), or None."""
    return EvalRecord.from_dict(data[key]) if data.get(key) is not None else None


def require_mapping(data: Any, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValueError(f"bad {what} entry {data!r}")
    return data


def _extra(data: dict[str, Any], known: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in known}


@dataclass(frozen=True)
class ModelRecord:
    num_blocks: int
    name_or_path: str | None = None
    gguf_file: str | None = None
    revision: str | None = None
    dtype: str | None = None  # as loaded
    dtype_asked: str = "auto"  # as given (a resume asks the same)
    architecture: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    _KEYS = ("name_or_path", "gguf_file", "revision", "dtype", "dtype_asked", "architecture", "num_blocks")

    @property
    def name(self) -> str:
        """What to call the model in headers: its path or hub id, else its GGUF file."""
        return self.name_or_path or self.gguf_file or "?"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name_or_path": self.name_or_path,
            "gguf_file": self.gguf_file,
            "revision": self.revision,
            "dtype": self.dtype,
            "dtype_asked": self.dtype_asked,
            "architecture": self.architecture,
            "num_blocks": self.num_blocks,
            **self.extra,
        }

    @classmethod
    def from_dict(cls, data: Any) -> ModelRecord:
        data = require_mapping(data, "model")
        return cls(
            num_blocks=bounded_int(data["num_blocks"], "model num_blocks", 1, MAX_BLOCKS),
            name_or_path=data.get("name_or_path") or None,
            gguf_file=data.get("gguf_file"),
            revision=data.get("revision"),
            dtype=data.get("dtype"),
            dtype_asked=str(data.get("dtype_asked") or "auto"),
            architecture=data.get("architecture"),
            extra=_extra(data, cls._KEYS),
        )


DEFAULT_LAYOUT = "per-row-bos"
LAYOUTS = (DEFAULT_LAYOUT, "finercut", "llm-drop")  # built by data.calibration


@dataclass(frozen=True)
class CalibrationRecord:
    source: str
    samples: int
    seq_len: int
    split: str | None = None
    bos: bool | None = None
    fingerprint: str | None = None  # sha256 of the token ids: equal = the very same tokens scored
    text_sha256: str | None = None  # of the text itself: an evaluation on it is flagged as overlapping
    layout: str = DEFAULT_LAYOUT
    extra: dict[str, Any] = field(default_factory=dict)

    _KEYS = ("source", "split", "samples", "seq_len", "bos", "fingerprint", "text_sha256", "layout")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "source": self.source,
            "split": self.split,
            "samples": self.samples,
            "seq_len": self.seq_len,
            "bos": self.bos,
            "fingerprint": self.fingerprint,
        }
        if self.layout != DEFAULT_LAYOUT:
            out["layout"] = self.layout
        if self.text_sha256:
            out["text_sha256"] = self.text_sha256
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: Any) -> CalibrationRecord:
        data = require_mapping(data, "calibration")
        return cls(
            source=str(data["source"]),
            samples=bounded_int(data["samples"], "calibration samples", 1, MAX_SAMPLES),
            seq_len=bounded_int(data["seq_len"], "calibration seq_len", 1, MAX_SEQ_LEN),
            split=data.get("split"),
            bos=data.get("bos"),
            fingerprint=data.get("fingerprint"),
            text_sha256=data.get("text_sha256") or None,
            layout=str(data.get("layout") or DEFAULT_LAYOUT),
            extra=_extra(data, cls._KEYS),
        )


BY = ("search", "manual")


@dataclass
class Step:
    """One removal. `scores` are all the candidates' scores this step chose from."""

    removed: str
    by: str = "search"  # "search" | "manual"
    score: float | None = None
    scores: dict[str, float] | None = None
    seconds: float | None = None
    world_size: int = 1  # replicas that scored this step (torchrun); written only when > 1
    gpus_per_replica: int = 1  # GPUs each replica spread over; written only when > 1

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"removed": self.removed, "by": self.by}
        if self.score is not None:
            out["score"] = float(self.score)  # repr round-trips; no numpy scalars in YAML
        if self.scores:
            out["scores"] = {k: float(v) for k, v in self.scores.items()}
        if self.seconds is not None:
            out["seconds"] = round(float(self.seconds), 3)
        if self.world_size != 1:
            out["world_size"] = int(self.world_size)
        if self.gpus_per_replica != 1:
            out["gpus_per_replica"] = int(self.gpus_per_replica)
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Step:
        if not isinstance(data, dict) or "removed" not in data:
            raise ValueError(f"bad step entry {data!r}")
        by = data.get("by", "search")
        if by not in BY:
            raise ValueError(f"bad 'by' in step {data!r}")
        scores = data.get("scores")
        if scores is not None and not isinstance(scores, dict):
            raise ValueError(f"bad scores in step {data.get('removed')!r}: a mapping of id: score")
        return cls(
            removed=str(data["removed"]),
            by=by,
            score=optional_float(data.get("score"), "step score"),
            scores=None if scores is None else {str(k): _score(v) for k, v in scores.items()},
            seconds=optional_float(data.get("seconds"), "step seconds"),
            world_size=bounded_int(data.get("world_size") or 1, "world_size", 1, 1 << 20),
            gpus_per_replica=bounded_int(data.get("gpus_per_replica") or 1, "gpus_per_replica", 1, 1 << 16),
        )


@dataclass(frozen=True)
class Undone:
    """A removal taken back by an undo, with the step index it was undone at."""

    removed: str
    by: str
    undone_at_step: int

    def to_dict(self) -> dict[str, Any]:
        return {"removed": self.removed, "by": self.by, "undone_at_step": self.undone_at_step}

    @classmethod
    def from_dict(cls, data: Any) -> Undone:
        data = require_mapping(data, "undone")
        return cls(str(data["removed"]), str(data.get("by", "search")), int(data["undone_at_step"]))


@dataclass(frozen=True)
class HealRecord:
    """One `finercut-tui heal`: a LoRA fine-tune of the model at `step`, merged and exported to `out`.

    `before` / `after` are the evaluations (same request, so the same `what`) of the pruned model at
    `step` without and with the heal, each with retained % against the unpruned baseline (the step-0
    record of the session's `evals:` with that `what`). They live here and not in `evals:`, which holds
    measurements of the search's own models only, so every reader of `evals:` stays as it was.
    """

    step: int
    data: dict[str, Any] = field(default_factory=dict)  # source, format, examples, tokens, fingerprint
    lora: dict[str, Any] = field(default_factory=dict)  # rank, alpha, dropout, modules, trainable
    training: dict[str, Any] = field(default_factory=dict)  # lr, batch size, seq len, seed, dtype, ...
    steps: int = 0  # optimizer steps
    tokens: int | None = None
    first_loss: float | None = None
    final_loss: float | None = None  # mean of the last 10% of the steps
    seconds: float | None = None  # training time (summed over resumed runs)
    out: str | None = None  # the merged export
    adapter: str | None = None  # the adapter alone (peft folder)
    resumed_from: int | None = None  # the checkpoint step a --resume continued from
    command: str | None = None
    created: str | None = None
    before: EvalRecord | None = None
    after: EvalRecord | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    _KEYS = (
        "step",
        "created",
        "command",
        "data",
        "lora",
        "training",
        "steps",
        "tokens",
        "first_loss",
        "final_loss",
        "seconds",
        "resumed_from",
        "out",
        "adapter",
        "before",
        "after",
    )

    def to_dict(self) -> dict[str, Any]:
        return keyed_dict(self, self._KEYS, self.extra)

    @classmethod
    def from_dict(cls, data: Any) -> HealRecord:
        data = require_mapping(data, "heal")
        if "step" not in data:
            raise ValueError(f"heal entry without a step {data!r}")

        return cls(
            step=int(data["step"]),
            data=dict(data.get("data") or {}),
            lora=dict(data.get("lora") or {}),
            training=dict(data.get("training") or {}),
            steps=int(data.get("steps") or 0),
            tokens=data.get("tokens"),
            first_loss=data.get("first_loss"),
            final_loss=data.get("final_loss"),
            seconds=data.get("seconds"),
            out=data.get("out"),
            adapter=data.get("adapter"),
            resumed_from=data.get("resumed_from"),
            command=data.get("command"),
            created=data.get("created"),
            before=optional_eval(data, "before"),
            after=optional_eval(data, "after"),
            extra=_extra(data, cls._KEYS),
        )
