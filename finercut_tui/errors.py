"""User-facing errors: one line that names the problem and the fix."""

import sys


class FinercutError(Exception):
    """An error the CLI prints as one line (no traceback)."""


class SessionError(FinercutError):
    """The session file is corrupt, from a newer schema, or does not match the run."""


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of an error's message (its type's name when it has none), cut to `limit`."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:limit]


def error_line(exc: BaseException, limit: int | None = None) -> str:
    """One line for a user: our own errors as they read, anything else prefixed with its type."""
    if isinstance(exc, FinercutError) or not str(exc).strip():
        return first_line(exc, limit)
    return f"{type(exc).__name__}: {first_line(exc, limit)}"


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or any error saying so (CPU allocators, older torch); imports no torch."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return "out of memory" in str(exc).lower()
