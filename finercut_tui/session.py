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

from finercut_tui.errors import SessionError

SCHEMA_VERSION = 1
REQUIRED_KEYS = ("schema_version", "model", "calibration", "method", "steps")


@dataclass
class Step:
    removed: str
    by: str = "search"  # "search" | "manual"
    score: float | None = None
    scores: dict[str, float] | None = None
    seconds: float | None = None

    def to_yaml(self) -> dict[str, Any]:
        out: dict[str, Any] = {"removed": self.removed, "by": self.by}
        if self.score is not None:
            out["score"] = _round(self.score)
        if self.scores:
            out["scores"] = {k: _round(v) for k, v in self.scores.items()}
        if self.seconds is not None:
            out["seconds"] = round(float(self.seconds), 3)
        return out


def _round(x: float) -> float:
    """Keep full float precision in YAML (repr round-trips), but plain floats, not numpy scalars."""
    return float(x)


@dataclass
class Session:
    model: dict[str, Any]
    calibration: dict[str, Any]
    method: dict[str, Any]
    pinned: list[str] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    undone: list[dict[str, Any]] = field(default_factory=list)
    command: str | None = None
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
    notes: str = ""
    finished: bool = False
    schema_version: int = SCHEMA_VERSION

    # -- queries -------------------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        return int(self.model["num_blocks"])

    def removed_at(self, k: int | None = None) -> list[str]:
        """The first k removals (all when k is None), in order."""
        steps = self.steps if k is None else self.steps[:k]
        return [s.removed for s in steps]

    def baseline_evals(self) -> list[dict[str, Any]]:
        return [e for e in self.evals if e.get("step") == 0]

    # -- YAML ------------------------------------------------------------------------------------
    def to_yaml_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema_version": self.schema_version,
            "created": self.created,
            "command": self.command,
            "model": dict(self.model),
            "calibration": dict(self.calibration),
            "method": dict(self.method),
            "pinned": list(self.pinned),
            "steps": [s.to_yaml() for s in self.steps],
            "evals": list(self.evals),
            "finished": self.finished,
        }
        if self.undone:
            out["undone"] = list(self.undone)
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
            raise SessionError(
                f"{source} uses session schema {version}, newer than this finercut-tui understands "
                f"({SCHEMA_VERSION}): upgrade finercut-tui (pip install -U finercut-tui); the file was not changed"
            )
        try:
            steps = [Step(**_step_fields(s)) for s in data.get("steps") or []]
            session = cls(
                model=dict(data["model"]),
                calibration=dict(data["calibration"]),
                method=dict(data["method"]),
                pinned=[str(p) for p in data.get("pinned") or []],
                steps=steps,
                evals=list(data.get("evals") or []),
                undone=list(data.get("undone") or []),
                command=data.get("command"),
                created=str(data.get("created") or ""),
                notes=str(data.get("notes") or ""),
                finished=bool(data.get("finished", False)),
                schema_version=version,
            )
            int(session.model["num_blocks"])
        except (TypeError, ValueError, KeyError) as exc:
            raise SessionError(f"{source} is corrupt ({exc}); fix it by hand or start a new session") from exc
        from finercut_tui.model.sublayers import parse_id

        for sid in session.removed_at() + session.pinned:
            try:
                parse_id(sid, session.num_blocks, allow_block=True)
            except Exception as exc:  # noqa: BLE001 - re-raised as a session error
                raise SessionError(f"{source} is corrupt: {exc}") from exc
        return session

    @classmethod
    def load(cls, path: str | os.PathLike) -> Session:
        path = Path(path)
        if not path.is_file():
            raise SessionError(f"session file not found: {path} (check the path)")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            where = getattr(exc, "problem_mark", None)
            line = f" at line {where.line + 1}" if where is not None else ""
            raise SessionError(
                f"{path} is not valid YAML{line}; it was left untouched: fix it or start a new session"
            ) from exc
        return cls.from_yaml_dict(data, source=str(path))


def _step_fields(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict) or "removed" not in raw:
        raise ValueError(f"bad step entry {raw!r}")
    allowed = {"removed", "by", "score", "scores", "seconds"}
    out = {k: v for k, v in raw.items() if k in allowed}
    out["removed"] = str(out["removed"])
    if out.get("by", "search") not in ("search", "manual"):
        raise ValueError(f"bad 'by' in step {raw!r}")
    if out.get("scores") is not None:
        out["scores"] = {str(k): float(v) for k, v in out["scores"].items()}
    return out


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
    model: dict[str, Any] | None = None,
    calibration: dict[str, Any] | None = None,
    source: str = "session",
) -> None:
    """Raise SessionError when the session was recorded on another model or calibration set."""
    if model is not None:
        for key in ("architecture", "num_blocks"):
            if key in model and key in session.model and model[key] != session.model[key]:
                raise SessionError(
                    f"{source} was recorded on {session.model.get('name_or_path')} "
                    f"({key} {session.model[key]}), not on this model ({key} {model[key]}); "
                    "pass the session's model or start a new session"
                )
    if calibration is not None:
        mine, theirs = calibration.get("fingerprint"), session.calibration.get("fingerprint")
        if mine and theirs and mine != theirs:
            raise SessionError(
                f"{source} was scored on other calibration tokens ({theirs[:19]}... vs {mine[:19]}...): "
                "use the session's --calib/--calib-samples/--seq-len or start a new session"
            )
