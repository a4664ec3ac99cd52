"""User-facing errors: one line that names the problem and the fix."""

import sys


class FinercutError(Exception):
    """An error the CLI prints as one line (no traceback)."""


class SessionError(FinercutError):
    """The session file is corrupt, from a newer schema, or does not match the run."""


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or any error saying so (CPU allocators, older torch); imports no torch."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return "out of memory" in str(exc).lower()
