"""The real thing: `finercut-tui tui` in a pseudo-terminal on a tiny model. The search makes a
removal, we press q, the app exits 0 and the session is on disk. Every wait is for a condition, with a
generous ceiling that only catches a condition that never comes (no timing claim: see bench/)."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import sys
import termios
import time
from pathlib import Path

import pytest

from finercut_tui.session import Session

DATA = Path(__file__).parent / "data"
CEILING = 120.0  # seconds; a loaded 2-core machine is slow, never wrong


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    from builders import save_tiny_checkpoint

    path = tmp_path_factory.mktemp("tiny-llama-pty")
    save_tiny_checkpoint(path, "llama")
    return path


def _drain(fd: int, sink: bytearray, seconds: float) -> None:
    """Read what the app draws (a pty whose reader stops reading blocks the writer)."""
    end = time.monotonic() + seconds
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return
        ready, _, _ = select.select([fd], [], [], min(left, 0.05))
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                return
            if not chunk:
                return
            sink.extend(chunk)


class Child:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.code: int | None = None

    def exited(self) -> int | None:
        """The exit code once the child is gone (reaped once), else None."""
        if self.code is None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.code = os.waitstatus_to_exitcode(status)
        return self.code

    def kill(self) -> None:
        if self.exited() is None:
            os.kill(self.pid, 9)
            os.waitpid(self.pid, 0)


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_tui_in_a_pty_quits_cleanly_after_a_removal(tiny_dir, tmp_path):
    session_path = tmp_path / "pty.yaml"
    argv = [
        sys.executable, "-m", "finercut_tui.cli", "tui",
        "--model", str(tiny_dir), "--device", "cpu", "--dtype", "float32",
        "--calib", str(DATA / "english.txt"), "--calib-samples", "2", "--seq-len", "16",
        "--target", "all", "--session", str(session_path),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TEXTUAL")}
    env.update(
        TERM="xterm-256color", COLUMNS="80", LINES="24", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false"
    )
    pid, fd = pty.fork()
    if pid == 0:  # the child: the app on the pty
        try:
            os.execvpe(argv[0], argv, env)
        finally:
            os._exit(127)
    child = Child(pid)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    screen = bytearray()
    try:
        deadline = time.monotonic() + CEILING
        while not (b"finercut" in screen and session_path.exists() and Session.load(session_path).steps):
            assert child.exited() is None, screen[-2000:].decode(errors="replace")
            assert time.monotonic() < deadline, "no header and no removal: the search never got going"
            _drain(fd, screen, 0.1)
        os.write(fd, b"q")
        deadline = time.monotonic() + CEILING
        code = None
        while code is None:
            assert time.monotonic() < deadline, "the app never exited after q"
            _drain(fd, screen, 0.05)
            code = child.exited()
        assert code == 0, screen[-2000:].decode(errors="replace")
    finally:
        child.kill()
        os.close(fd)
    saved = Session.load(session_path)
    assert saved.steps and saved.steps[0].by == "search"
    assert b"finercut" in screen  # the app drew its header on the terminal
