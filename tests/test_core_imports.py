"""The core never imports textual: with `import textual` made to fail, the core packages (model, data,
search, eval, domain), the session, the grid's view model, the reports and the CLI parser still
import (the TUI is a face over the core, never the reverse)."""

from __future__ import annotations

import subprocess
import sys

PROBE = r"""
import importlib, importlib.abc, pkgutil, sys

class NoTextual(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "textual" or name.startswith("textual."):
            raise ImportError(f"textual is blocked in this test ({name})")
        return None

sys.meta_path.insert(0, NoTextual())
import finercut_tui
done = []
for package in ("model", "data", "search", "eval", "domain"):
    pkg = importlib.import_module(f"finercut_tui.{package}")
    done.append(pkg.__name__)
    for info in pkgutil.walk_packages(pkg.__path__, prefix=f"finercut_tui.{package}."):
        importlib.import_module(info.name)
        done.append(info.name)
for name in (
    "finercut_tui.session",
    "finercut_tui.layer_map",
    "finercut_tui.report",
    "finercut_tui.errors",
    "finercut_tui.cli",
    "finercut_tui.commands.run",
):
    importlib.import_module(name)
    done.append(name)
from finercut_tui.cli import build_parser
build_parser()  # every subcommand registers without textual (tui/replay import it only when run)
from finercut_tui.commands.show import render
render(sys.argv[1], "text")
assert not any(m == "textual" or m.startswith("textual.") for m in sys.modules), "textual got imported"
print(len(done), "modules")
"""


def test_core_imports_without_textual():
    from pathlib import Path

    session = Path(__file__).parent / "data" / "sessions_fixture_small.yaml"
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(session)], capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "modules" in out.stdout
