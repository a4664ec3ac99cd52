"""The core (model, data, search, eval, session) never imports textual."""

import subprocess
import sys

CORE = [
    "finercut_tui.model",
    "finercut_tui.model.loading",
    "finercut_tui.model.surgery",
    "finercut_tui.data",
    "finercut_tui.data.calibration",
    "finercut_tui.search",
    "finercut_tui.search.engine",
    "finercut_tui.search.job",
    "finercut_tui.search.scoring",
    "finercut_tui.session",
    "finercut_tui.eval",
    "finercut_tui.commands.run",
]

BLOCKER = """
import importlib.abc, sys
class NoTextual(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "textual" or name.startswith("textual."):
            raise ImportError("textual is blocked in this test")
sys.meta_path.insert(0, NoTextual())
import importlib, pkgutil
import finercut_tui
for mod in {mods!r}:
    importlib.import_module(mod)
for pkg in ("finercut_tui.model", "finercut_tui.data", "finercut_tui.search", "finercut_tui.eval"):
    for info in pkgutil.iter_modules(importlib.import_module(pkg).__path__, pkg + "."):
        importlib.import_module(info.name)
assert "textual" not in sys.modules
print("ok")
"""


def test_core_imports_without_textual():
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKER.format(mods=CORE)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "ok"
