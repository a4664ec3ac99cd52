"""The session YAML: what was pruned, how, in which order, and how the model fared.

Human-readable and diff-able; written atomically after every step (temp file in the same folder,
fsync, os.replace), so a process killed at any moment leaves the previous complete file. A corrupt
file, a newer schema or a mismatching model/calibration raises SessionError and is never overwritten.

`steps` is the effective removal order: the pruned model at step K has the first K removals applied.
An undo pops the last step and keeps it under `undone` with the step index it was undone at.
"""

from __future__ import annotations

import datetime as _dt
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from finercut_tui import __version__
from finercut_tui.domain.evals import EvalRecord
from finercut_tui.domain.pins import Pins
from finercut_tui.domain.records import CalibrationRecord, HealRecord, ModelRecord, Step, Undone, bounded_int
from finercut_tui.domain.repairs import RepairRecord
from finercut_tui.domain.spec import MethodRecord, SearchSpec
from finercut_tui.domain.sublayers import parse_id
from finercut_tui.errors import FinercutError, SessionError

SCHEMA_VERSION = 1
WRITER = f"finercut-tui {__version__}"  # what a new session records as `written_by`
REQUIRED_KEYS = ("schema_version", "model", "calibration", "method", "steps")


@dataclass
class Session:
    model: ModelRecord
    calibration: CalibrationRecord
    method: MethodRecord
    pinned: Pins = field(default_factory=Pins)
    steps: list[Step] = field(default_factory=list)
    evals: list[EvalRecord] = field(default_factory=list)
    undone: list[Undone] = field(default_factory=list)
    heals: list[HealRecord] = field(default_factory=list)  # `finercut-tui heal` runs, in order
    repairs: list[RepairRecord] = field(default_factory=list)  # `finercut-tui repair` runs, in order
    command: str | None = None
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
    notes: str = ""
    finished: bool = False
    schema_version: int = SCHEMA_VERSION
    # the version that created the file (files from before 2026-12 have none and keep none)
    written_by: str | None = WRITER

    # -- queries -------------------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        return self.model.num_blocks

    @property
    def spec(self) -> SearchSpec:
        return self.method.spec

    def removed_at(self, k: int | None = None) -> list[str]:
        """The first k removals (all when k is None), in order."""
        steps = self.steps if k is None else self.steps[:k]
        return [s.removed for s in steps]

    def evals_until(self, k: int) -> list[EvalRecord]:
        return [e for e in self.evals if e.step <= k]

    def one_shot_scores(self) -> dict[str, float] | None:
        """The scores a one-shot method ranked once (the first step that recorded any)."""
        return next((dict(s.scores) for s in self.steps if s.scores), None)

    # -- operations ------------------------------------------------------------------------------
    def continued_from(self, k: int, origin: str) -> Session:
        """A new, unfinished session holding this one's first k steps (to search on from there)."""
        new = Session.from_yaml_dict(self.to_yaml_dict(), source=origin)
        new.steps = new.steps[:k]
        new.evals = new.evals_until(k)
        new.heals = [h for h in new.heals if h.step <= k]
        new.repairs = [r for r in new.repairs if r.step <= k]
        new.undone = []
        new.finished = False
        new.written_by = WRITER  # a new file, written by this version
        new.notes = (new.notes + "\n" if new.notes else "") + f"continued from {origin} at step {k}"
        return new

    # -- YAML ------------------------------------------------------------------------------------
    def to_yaml_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema_version": self.schema_version}
        if self.written_by:
            out["written_by"] = self.written_by
        out |= {
            "created": self.created,
            "command": self.command,
            "model": self.model.to_dict(),
            "calibration": self.calibration.to_dict(),
            "method": self.method.to_dict(),
            "pinned": self.pinned.canonical(),
            "steps": [s.to_dict() for s in self.steps],
            "evals": [e.to_dict() for e in self.evals],
            "finished": self.finished,
        }
        if self.undone:
            out["undone"] = [u.to_dict() for u in self.undone]
        if self.heals:  # written only when there are any: older files round-trip byte for byte
            out["heals"] = [h.to_dict() for h in self.heals]
        if self.repairs:  # likewise
            out["repairs"] = [r.to_dict() for r in self.repairs]
        if self.notes:
            out["notes"] = self.notes
        return out

    def dumps(self) -> str:
        return yaml.safe_dump(self.to_yaml_dict(), sort_keys=False, width=120, allow_unicode=True)

    def save(self, path: str | os.PathLike) -> None:
        save_text_atomic(Path(path), self.dumps())

    @classmethod
    def from_yaml_dict(cls, data: Any, source: str = "<session>") -> Session:
        if not isinstance(data, dict):
            raise SessionError(
                f"{source} is not a finercut session (expected a YAML mapping); pick another file"
            )
        missing = [k for k in REQUIRED_KEYS if k not in data]
        if missing:
            raise SessionError(f"{source} is not a finercut session: missing {', '.join(missing)}")
        version = data["schema_version"]
        if not isinstance(version, int) or version < 1:
            raise SessionError(f"{source}: bad schema_version {version!r}; the file is corrupt")
        if version > SCHEMA_VERSION:
            by = f", written by {data['written_by']}" if data.get("written_by") else ""
            raise SessionError(
                f"{source} uses session schema {version}, newer than this {WRITER} understands "
                f"({SCHEMA_VERSION}{by}): upgrade finercut-tui (pip install -U finercut-tui); the file was not changed"
            )
        try:
            model = ModelRecord.from_dict(data["model"])
            for sid in [
                *(s.get("removed") for s in data.get("steps") or [] if isinstance(s, dict)),
                *(data.get("pinned") or []),
            ]:
                parse_id(str(sid), model.num_blocks, allow_block=True)
            _check_sizes(data, model.num_blocks)
            session = cls(
                model=model,
                calibration=CalibrationRecord.from_dict(data["calibration"]),
                method=MethodRecord.from_dict(data["method"]),
                pinned=Pins(str(p) for p in data.get("pinned") or []),
                steps=[Step.from_dict(s) for s in data.get("steps") or []],
                evals=[EvalRecord.from_dict(e) for e in data.get("evals") or []],
                undone=[Undone.from_dict(u) for u in data.get("undone") or []],
                heals=[HealRecord.from_dict(h) for h in data.get("heals") or []],
                repairs=[RepairRecord.from_dict(r) for r in data.get("repairs") or []],
                command=data.get("command"),
                created=str(data.get("created") or ""),
                notes=str(data.get("notes") or ""),
                finished=bool(data.get("finished", False)),
                schema_version=version,
                written_by=str(data["written_by"]) if data.get("written_by") else None,
            )
        except (TypeError, ValueError, KeyError, AttributeError, RecursionError, FinercutError) as exc:
            raise SessionError(
                f"{source} is corrupt ({exc}){_other_writer(data)}; fix it by hand or start a new session"
            ) from exc
        return session

    @classmethod
    def load(cls, path: str | os.PathLike) -> Session:
        path = Path(path)
        if not path.is_file():
            raise SessionError(f"session file not found: {path} (check the path)")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except RecursionError:
            raise SessionError(
                f"{path} nests deeper than any session does (damaged?); it was left untouched: fix it or "
                "start a new session"
            ) from None
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            where = getattr(exc, "problem_mark", None)
            line = f" at line {where.line + 1}" if where is not None else ""
            raise SessionError(
                f"{path} is not valid YAML{line}; it was left untouched: fix it or start a new session"
            ) from exc
        return cls.from_yaml_dict(data, source=str(path))


def _other_writer(data: dict) -> str:
    """For an error about a file another version wrote: which one, and which this is."""
    writer = data.get("written_by")
    if not writer or writer == WRITER:
        return ""
    return f"; it was written by {writer}, this is {WRITER}: open it with that version, or update"


def _check_sizes(data: dict, num_blocks: int) -> None:
    """What the file claims, checked against its own model before anything is sized by it."""
    steps = data.get("steps") or []
    if isinstance(steps, list) and len(steps) > 2 * num_blocks:
        raise ValueError(
            f"{len(steps)} steps, more than the {2 * num_blocks} sublayers of {num_blocks} blocks"
        )
    method = data.get("method")
    target = method.get("target") if isinstance(method, dict) else None
    if target is not None:
        bounded_int(target, "method target", 0, 2 * num_blocks)


def _file_mode(path: Path) -> int:
    """Keep an existing file's permissions; a new one gets 0666 less the umask (mkstemp uses 0600)."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def save_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so that a crash leaves either the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _file_mode(path))
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def check_matches(
    session: Session,
    *,
    architecture: str | None = None,
    num_blocks: int | None = None,
    calibration: CalibrationRecord | None = None,
    source: str = "session",
) -> None:
    """Raise SessionError when the session was recorded on another model or calibration set."""
    for key, mine in (("architecture", architecture), ("num_blocks", num_blocks)):
        theirs = getattr(session.model, key)
        if mine is not None and theirs is not None and mine != theirs:
            raise SessionError(
                f"{source} was recorded on {session.model.name} ({key} {theirs}), not on this model "
                f"({key} {mine}); pass the session's model or start a new session"
            )
    if calibration is not None:
        mine, theirs = calibration.fingerprint, session.calibration.fingerprint
        if mine and theirs and mine != theirs:
            raise SessionError(
                f"{source} was scored on other calibration tokens ({theirs[:19]}... vs {mine[:19]}...): "
                "use the session's --calib/--calib-samples/--seq-len or start a new session"
            )
