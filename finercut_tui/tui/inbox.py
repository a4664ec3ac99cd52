"""The hand-over from a worker thread (the search, or the model load) to the UI.

The thread only drops items in an `EventInbox`; the inbox posts one `SearchEvents` message when it
goes from empty to non-empty, so a burst of thousands of candidate events costs one message.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import Any

from textual.message import Message

from finercut_tui.errors import error_line


class SearchEvents(Message):
    """Items are waiting in the inbox (one message per burst)."""


@dataclasses.dataclass(frozen=True)
class WorkerFailed:
    """The search (or the model load) raised: one line for the UI."""

    text: str


@dataclasses.dataclass(frozen=True)
class JobReady:
    """The model of a continued session is loaded: its job is ready to run."""

    job: Any


class EventInbox:
    """Thread-safe hand-over from the worker thread: posts a message only when it was empty."""

    def __init__(self, notify: Callable[[], None]) -> None:
        self._lock = threading.Lock()
        self._items: list[Any] = []
        self._pending = False
        self._notify = notify

    def put(self, item: Any) -> None:
        with self._lock:
            self._items.append(item)
            if self._pending:
                return
            self._pending = True
        self._notify()

    def take(self) -> list[Any]:
        with self._lock:
            items, self._items = self._items, []
            self._pending = False
        return items


def one_line(exc: BaseException) -> str:
    """What went wrong, in one line for a notification (out of memory comes with advice)."""
    text = str(exc).strip()
    if "out of memory" in text.lower():
        return (
            "out of GPU memory: try --batch-size 1, fewer --calib-samples, a shorter --seq-len or "
            "--prefix-cache cpu (the session holds every finished step)"
        )
    return error_line(exc)
