"""User-facing errors: one line that names the problem and the fix."""


class FinercutError(Exception):
    """An error the CLI prints as one line (no traceback)."""


class SessionError(FinercutError):
    """The session file is corrupt, from a newer schema, or does not match the run."""
