"""`finercut-tui bakeoff` end to end on a tiny Llama: two methods at two targets, the table against the
sessions it wrote, a kill mid-way and a rerun, and bad input refused before any model is loaded."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from builders import save_tiny_checkpoint

from finercut_tui.cli import main
from finercut_tui.session import Session

ROOT = Path(__file__).resolve().parents[1]
TEXT = str(ROOT / "tests" / "data" / "english.txt")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("bakeoff-model")
    save_tiny_checkpoint(path, "llama", num_hidden_layers=4)
    return path


def argv(model, out, report):
    return [
        "bakeoff", "--model", str(model), "--methods", "finercut,shortgpt", "--targets", "0.25,0.5",
        "--calib", TEXT, "--calib-samples", "2", "--seq-len", "16",
        "--ppl", TEXT, "--ppl-seq-len", "16", "--ppl-max-tokens", "64",
        "--out", str(out), "--report", str(report), "--quiet",
    ]  # fmt: skip


def cells(report: str) -> dict[str, list[str]]:
    """method -> its retained cells ("97.6% (4) *"), the seconds column left out."""
    rows = {}
    for line in report.splitlines():
        parts = re.split(r"\s{2,}", line.strip())
        if parts and parts[0] in ("finercut", "shortgpt"):
            rows[parts[0]] = parts[1:-1]
    return rows


@pytest.fixture(scope="module")
def uninterrupted(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("bakeoff-clean")
    assert main(argv(model, root / "out", root / "report.txt")) == 0
    return root


def test_the_table_is_what_the_sessions_record(uninterrupted):
    report = (uninterrupted / "report.txt").read_text()
    table = cells(report)
    assert set(table) == {"finercut", "shortgpt"}
    finercut = Session.load(uninterrupted / "out" / "finercut.yaml")
    shortgpt = Session.load(uninterrupted / "out" / "shortgpt.yaml")
    assert len(finercut.steps) == 4 and len(shortgpt.steps) == 2  # 50% of 8 sublayers: 4, or 2 blocks
    baseline = [e for e in finercut.evals if e.step == 0]
    assert len(baseline) == 1 and [e for e in shortgpt.evals if e.step == 0][0].results == baseline[0].results
    for method, session, steps in (("finercut", finercut, (2, 4)), ("shortgpt", shortgpt, (1, 2))):
        for cell, k in zip(table[method], steps, strict=True):
            record = next(e for e in session.evals if e.step == k)
            removed = 2 * k if method == "shortgpt" else k
            assert cell.startswith(f"{record.retained_average:.1f}% ({removed})"), (method, k, cell)
    for column in range(2):  # the best of each column is marked, and it is the highest
        values = {m: float(table[m][column].split("%")[0]) for m in table}
        best = max(values, key=values.get)
        assert table[best][column].endswith("*")
    assert "unpruned baseline" in report


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    n, count = int(sys.argv[1]), 0
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        global count
        result = real(src, dst, *args, **kwargs)
        if str(dst).endswith(".yaml"):
            count += 1
            if count == n:
                os.kill(os.getpid(), signal.SIGKILL)
        return result

    os.replace = replace
    from finercut_tui.cli import main
    sys.exit(main(sys.argv[2:]))
    """
)


@pytest.mark.parametrize("n", [3, 7])  # the 3rd and 7th session write: mid-search, mid-evaluation
def test_a_killed_bakeoff_reruns_to_the_same_table(n, model, uninterrupted, tmp_path):
    out, report = tmp_path / "out", tmp_path / "report.txt"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, str(n), *argv(model, out, report)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not report.exists()
    assert main(argv(model, out, report)) == 0
    assert cells(report.read_text()) == cells((uninterrupted / "report.txt").read_text())
    for name in ("finercut.yaml", "shortgpt.yaml"):
        want = Session.load(uninterrupted / "out" / name)
        got = Session.load(out / name)
        assert got.removed_at() == want.removed_at()
        assert [(e.step, e.results) for e in got.evals] == [(e.step, e.results) for e in want.evals]


@pytest.mark.parametrize(
    "option,value,says",
    [
        ("--methods", "finercut,nope", "unknown method 'nope'"),
        ("--targets", "0.25,1.5", "--targets 1.5 is out of range"),
        ("--targets", "0", "--targets 0 is out of range"),
    ],
)
def test_bad_input_is_one_line_before_the_model_loads(option, value, says, tmp_path, capsys):
    code = main(
        ["bakeoff", "--model", str(tmp_path / "no-such-model"), option, value, "--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and says in err and "no-such-model" not in err
    assert not (tmp_path / "o").exists()
