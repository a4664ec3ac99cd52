"""Run one reader of finercut-tui over many (damaged) session files, in one process, and report.

    python tests/damaged_reader.py READER MODEL_DIR TEXT OUT_DIR LIST.json RESULT.json

Called by tests/test_damaged_files.py under an address-space limit (RLIMIT_AS), so a file that makes
a reader allocate without bound ends as a MemoryError here instead of taking the machine down. Each
file gets the real CLI (`finercut_tui.cli.main`) with its own argv; what it printed on stderr, its
exit code and its time are written to RESULT.json. `tui --resume` runs up to the app, which is
replaced by one that exits at once (the readers are what is tested, not the screen); a replay's app
is drawn headless once, so its grid and panels read the file too.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import resource
import signal
import sys
import time
from pathlib import Path

PER_FILE_S = 60  # no file may keep a reader busy longer


def argv(reader: str, path: str, model: str, text: str, out: str) -> list[str]:
    return {
        "show": ["show", path],
        "replay": ["replay", path],
        "compare": ["compare", path, path],
        "export": ["export", path, "--step", "1", "--out", out, "--force", "--model", model],
        "eval": ["eval", "--model", model, "--session", path, "--ppl", text, "--ppl-seq-len", "16",
                 "--ppl-max-tokens", "32"],
        "heal": ["heal", path, "--step", "1", "--out", out, "--force", "--model", model, "--data", text,
                 "--steps", "1", "--batch-size", "1", "--seq-len", "16", "--quiet"],
        "run": ["run", "--model", model, "--session", path, "--resume", "--quiet"],
        "tui": ["tui", "--model", model, "--session", path, "--resume"],
    }[reader]  # fmt: skip


async def _draw_once(app) -> int:
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
    return 0


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout


def main() -> int:
    reader, model, text, out_dir, listing, result = sys.argv[1:7]
    limit = int(sys.argv[7]) if len(sys.argv) > 7 else 0
    if limit:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from textual.app import App

    def run_briefly(app, *args, **kwargs):
        if app.job is not None:  # tui --resume: the readers up to the app, then leave
            return 0
        return asyncio.run(_draw_once(app))  # a replay: draw it once, headless

    App.run = run_briefly
    from finercut_tui.cli import main as cli

    signal.signal(signal.SIGALRM, _alarm)
    reports = []
    for i, path in enumerate(json.loads(Path(listing).read_text())):
        err = io.StringIO()
        code: int | str
        started = time.monotonic()
        signal.alarm(PER_FILE_S)
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = cli(argv(reader, path, model, text, str(Path(out_dir) / str(i))))
        except _Timeout:
            code = "timeout"
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 2
        except BaseException as exc:  # noqa: BLE001 - what escaped the CLI is the finding
            code = f"escaped {type(exc).__name__}: {exc}"[:300]
        finally:
            signal.alarm(0)
        reports.append(
            {"path": path, "code": code, "stderr": err.getvalue(), "seconds": time.monotonic() - started}
        )
    Path(result).write_text(json.dumps(reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
