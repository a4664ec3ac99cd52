"""Commands flowing into a running search: the UI thread calls these, the search thread polls.

At each checkpoint the search takes a `Directive` (the queued commands, paused, cancelled) and
blocks while paused (still taking commands such as pin or evaluate that make sense while paused).
Under torchrun rank 0's directive is broadcast, so every rank applies the same commands at the same
checkpoint (search/engine.py).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Command:
    name: str  # pin | unpin | force_remove | undo | evaluate | extend
    arg: Any = None


@dataclass(frozen=True)
class Directive:
    """What the search does at a checkpoint: apply `commands` in order, then stop or wait."""

    commands: tuple[Command, ...] = ()
    paused: bool = False
    cancelled: bool = False


class Cancelled(Exception):
    """Raised inside the search when the user cancels; the search ends cleanly."""


class Controller:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: deque[Command] = deque()
        self._paused = False
        self._pause_after_removal = False
        self._cancelled = threading.Event()

    # -- called from the UI / any thread ----------------------------------------------------------
    def pause(self) -> None:
        with self._cond:
            self._paused = True
            self._cond.notify_all()

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._pause_after_removal = False
            self._cond.notify_all()

    def toggle_pause(self) -> bool:
        """Pause or resume; returns True when now paused."""
        with self._cond:
            paused = not self._paused
        self.pause() if paused else self.resume()
        return paused

    def step(self) -> None:
        """Run until the next removal, then pause."""
        with self._cond:
            self._paused = False
            self._pause_after_removal = True
            self._cond.notify_all()

    def cancel(self) -> None:
        self._cancelled.set()
        with self._cond:
            self._cond.notify_all()

    def send(self, name: str, arg: Any = None) -> None:
        with self._cond:
            self._queue.append(Command(name, arg))
            self._cond.notify_all()

    def pin(self, sid: str) -> None:
        self.send("pin", sid)

    def unpin(self, sid: str) -> None:
        self.send("unpin", sid)

    def force_remove(self, sid: str) -> None:
        self.send("force_remove", sid)

    def undo(self) -> None:
        self.send("undo")

    def evaluate(self, request: Any) -> None:
        self.send("evaluate", request)

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    # -- called from the search thread -----------------------------------------------------------
    def directive(self) -> Directive:
        """Take the queued commands with the pause and cancel state, in one go."""
        with self._cond:
            commands = tuple(self._queue)
            self._queue.clear()
            return Directive(commands, self._paused, self._cancelled.is_set())

    def extend(self, target: int) -> None:
        """After the search reached its target: search on to `target` removals."""
        self.send("extend", int(target))

    def wait_for_command(self, timeout: float = 0.25) -> None:
        """Block until a command is queued, the search is cancelled, or `timeout` passes."""
        with self._cond:
            if not self._queue and not self._cancelled.is_set():
                self._cond.wait(timeout)

    def wait_while_paused(self, timeout: float = 0.25) -> bool:
        """Block while paused until a command arrives or the pause ends; True if still paused."""
        with self._cond:
            if self._paused and not self._queue and not self._cancelled.is_set():
                self._cond.wait(timeout)
            return self._paused and not self._cancelled.is_set()

    def removal_done(self) -> None:
        """Called by the search after each removal: honours `step()`."""
        with self._cond:
            if self._pause_after_removal:
                self._pause_after_removal = False
                self._paused = True
