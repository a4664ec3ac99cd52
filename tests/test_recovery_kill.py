"""SIGKILL during the similarity methods (one-shot attention drop, iterative joint drop, angular-gap block
drop) and SLEB's greedy block search, at chosen moments, with the default batching: the session on disk always parses, holds a prefix of
the uninterrupted run, and `run --resume` finishes it with the uninterrupted order and scores.

The moments are deterministic: the child process runs the ordinary CLI with a small wrapper that sends
itself SIGKILL at the n-th decoder-layer forward (mid-measurement), just before the n-th atomic replace of
the session file (its temp file written, the rename not done) or just after it.
"""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from builders import save_tiny_checkpoint

from finercut_tui.cli import main

TEXT = "tests/data/english.txt"
ROOT = Path(__file__).resolve().parents[1]
L = 6  # blocks

KILLER = textwrap.dedent(
    """
    import os, signal, sys
    moment, n, session = sys.argv[1], int(sys.argv[2]), os.path.abspath(sys.argv[3])
    count = 0

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if moment == "layer":  # the n-th forward of any decoder block
        import torch

        def pre_hook(module, args):
            global count
            if type(module).__name__.endswith("DecoderLayer"):
                count += 1
                if count == n:
                    die()

        torch.nn.modules.module.register_module_forward_pre_hook(pre_hook)
    else:  # "replacing" / "saved": around the n-th atomic replace of the session file
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            global count
            if os.path.abspath(os.fspath(dst)) != session:
                return real_replace(src, dst, *args, **kwargs)
            count += 1
            if moment == "replacing" and count == n:
                die()
            result = real_replace(src, dst, *args, **kwargs)
            if moment == "saved" and count == n:
                die()
            return result

        os.replace = replace
    from finercut_tui.cli import main

    code = main(sys.argv[4:])
    sys.exit(f"the kill moment {moment} {n} was never reached (exit code {code}, {count} counted)")
    """
)

METHODS = {
    "attn-drop": ["--method", "attn-drop", "--target", "all"],
    "joint-drop-iterative": ["--method", "joint-drop", "--iterative", "--target", "5"],
    "angular-gap": ["--method", "block-drop", "--block-metric", "angular-gap", "--target", "3"],
    "sleb": ["--method", "sleb", "--metric", "nll", "--target", "3"],
}
# (moment, n): the session is saved once before the first step and after every step; a measurement is
# one forward of all L blocks (one-shot and angular-gap measure once, iterative before every step)
MOMENTS = {
    "attn-drop": [("layer", 3), ("replacing", 2), ("saved", 2), ("saved", 4)],
    "joint-drop-iterative": [("layer", 4), ("replacing", 3), ("saved", 3), ("layer", L * 3 + 2)],
    "angular-gap": [("layer", 5), ("replacing", 2), ("saved", 2), ("saved", 3)],
    # SLEB scores blocks greedily (prefix-cached): a kill mid-step 2, and around the second removal
    "sleb": [("layer", 30), ("replacing", 3), ("saved", 3)],
}
# SLEB's step 1 runs 26 block forwards (reference 6, prefix capture 6, candidates 1..4 from their own
# block 5+4+3+2 = 14): the 30th is inside step 2, with one step recorded
GREEDY_DONE_AT_LAYER = {"sleb": {30: 1}}
CASES = [(method, *moment) for method, moments in MOMENTS.items() for moment in moments]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama-kill")
    save_tiny_checkpoint(path, "llama", num_hidden_layers=L)
    return path


def argv(model, session, method):
    return [
        "run",
        "--model",
        str(model),
        "--calib",
        TEXT,
        "--calib-samples",
        "4",
        "--seq-len",
        "32",
        "--session",
        str(session),
        "--quiet",
        *METHODS[method],
    ]


@pytest.fixture(scope="module")
def uninterrupted(llama_dir, tmp_path_factory):
    cache = {}

    def get(method):
        if method not in cache:
            session = tmp_path_factory.mktemp("clean") / "s.yaml"
            assert main(argv(llama_dir, session, method)) == 0
            cache[method] = yaml.safe_load(session.read_text())
        return cache[method]

    return get


def run_killed(args, moment, n, session):
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}  # as this process (one_thread)
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLER, moment, str(n), str(session), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, err[-3000:]


def same_step(got, want):
    assert got["removed"] == want["removed"]
    assert got["score"] == pytest.approx(want["score"], rel=1e-6, abs=1e-12)
    assert bool(got.get("scores")) == bool(want.get("scores"))
    if want.get("scores"):
        assert set(got["scores"]) == set(want["scores"])
        for sid, value in want["scores"].items():
            assert got["scores"][sid] == pytest.approx(value, rel=1e-6, abs=1e-12), sid


@pytest.mark.parametrize("method,moment,n", CASES)
def test_sigkill_then_resume_reproduces_the_uninterrupted_run(
    method, moment, n, llama_dir, tmp_path, uninterrupted, capsys
):
    want = uninterrupted(method)
    assert want["finished"] is True
    session = tmp_path / "s.yaml"
    run_killed(argv(llama_dir, session, method), moment, n, session)

    data = yaml.safe_load(session.read_text())  # parses after the kill
    done = len(data["steps"])
    assert data["finished"] is False and done < len(want["steps"])
    if moment == "layer":  # killed while measuring the step after the last one recorded
        if method in GREEDY_DONE_AT_LAYER:
            assert done == GREEDY_DONE_AT_LAYER[method][n]
        else:
            assert done == ((n - 1) // L if "--iterative" in METHODS[method] else 0)
    else:  # save 1 is the empty session; save k + 1 holds k steps
        assert done == n - 1 - (moment == "replacing")
    for got, expected in zip(data["steps"], want["steps"], strict=False):
        same_step(got, expected)

    code = main(["run", "--session", str(session), "--resume", "--quiet"])
    err = capsys.readouterr().err
    assert code == 0, err
    resumed = yaml.safe_load(session.read_text())
    assert resumed["finished"] is True
    assert [s["removed"] for s in resumed["steps"]] == [s["removed"] for s in want["steps"]]
    for got, expected in zip(resumed["steps"], want["steps"], strict=True):
        same_step(got, expected)
