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
class Pin:
    sublayer: str  # as typed: an id, or `<b>.block` for both sublayers


@dataclass(frozen=True)
class Unpin:
    sublayer: str


@dataclass(frozen=True)
class ForceRemove:
    sublayer: str  # removed now, recorded as `by: manual` (block methods remove its whole block)


@dataclass(frozen=True)
class Undo:
    """Take the last removal back."""


@dataclass(frozen=True)
class Evaluate:
    request: Any  # an EvalRequest
    repair_ridge: float | None = None  # also evaluate the model repaired with this ridge (a what-if)


@dataclass(frozen=True)
class Extend:
    target: int  # after the target: search on to this many removals


# what the app (or a test) sends the engine; plain frozen dataclasses, so torchrun can broadcast them
Command = Pin | Unpin | ForceRemove | Undo | Evaluate | Extend


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
        self._sent = 0  # commands sent, and applied by the engine (their events emitted)
        self._applied = 0

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

    def send(self, command: Command) -> None:
        with self._cond:
            self._queue.append(command)
            self._sent += 1
            self._cond.notify_all()

    @property
    def idle(self) -> bool:
        """Every command sent has been applied: its events are out (the app and the tests wait on it)."""
        with self._cond:
            return self._applied >= self._sent

    def pin(self, sid: str) -> None:
        self.send(Pin(sid))

    def unpin(self, sid: str) -> None:
        self.send(Unpin(sid))

    def force_remove(self, sid: str) -> None:
        self.send(ForceRemove(sid))

    def undo(self) -> None:
        self.send(Undo())

    def evaluate(self, request: Any, repair_ridge: float | None = None) -> None:
        self.send(Evaluate(request, repair_ridge))

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

    def applied(self) -> None:
        """Called by the search once a command is applied and its events are emitted."""
        with self._cond:
            self._applied += 1

    def extend(self, target: int) -> None:
        """After the search reached its target: search on to `target` removals."""
        self.send(Extend(int(target)))

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
