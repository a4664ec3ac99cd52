"""Candidates/s of FinerCut at world sizes 1 and 2 on CPU (gloo, one thread per rank), and the scaling
efficiency: a small random Llama (no hub), started the way torchrun starts ranks, on 127.0.0.1.

    .venv/bin/python bench/distributed_search.py [--layers 8] [--hidden 256] [--samples 4]
        [--seq-len 128] [--target 4] [--worlds 1 2]

Candidates/s = the candidates of the timed steps / the seconds rank 0 recorded for them (scoring plus
the gather; model loading and calibration excluded). Efficiency = (rate at W / rate at 1) / W.
On a GPU box: run `torchrun --nproc-per-node 8 -m finercut_tui run ...` and read `seconds` per step.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _checkpoint(folder: Path, layers: int, hidden: int) -> Path:
    from tiny_models import tiny_model
    from tiny_tokenizer import tiny_tokenizer

    tiny_model(
        "llama",
        num_hidden_layers=layers,
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_attention_heads=max(1, hidden // 32),
    ).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def _launch(world: int, argv: list[str], timeout: float = 1200) -> None:
    port, procs = _free_port(), []
    try:
        for rank in range(world):
            env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
            for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
                env.pop(key, None)
            if world > 1:
                env.update(
                    RANK=str(rank),
                    WORLD_SIZE=str(world),
                    LOCAL_RANK=str(rank),
                    MASTER_ADDR="127.0.0.1",
                    MASTER_PORT=str(port),
                )
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "finercut_tui", "run", *argv],
                    cwd=ROOT,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        deadline = time.monotonic() + timeout
        for p in procs:
            _, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            if p.returncode:
                raise SystemExit(f"world {world}: a rank exited {p.returncode}: {err.strip()[-400:]}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--target", type=int, default=4)
    ap.add_argument("--worlds", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()

    from finercut_tui.session import Session

    with tempfile.TemporaryDirectory() as tmp:
        model = _checkpoint(Path(tmp) / "model", args.layers, args.hidden)
        rates = {}
        for world in args.worlds:
            session = Path(tmp) / f"w{world}.yaml"
            _launch(
                world,
                [
                    "--model", str(model), "--calib", "tests/data/english.txt",
                    "--calib-samples", str(args.samples), "--seq-len", str(args.seq_len),
                    "--device", "cpu", "--target", str(args.target), "--session", str(session), "--quiet",
                ],
            )  # fmt: skip
            steps = Session.load(session).steps
            candidates = sum(len(s.scores or {}) for s in steps)
            seconds = sum(s.seconds or 0.0 for s in steps)
            rates[world] = candidates / seconds
            print(
                f"world {world}: {candidates} candidates in {seconds:.2f}s = {rates[world]:.2f} candidates/s "
                f"(order {' '.join(s.removed for s in steps)})"
            )
        if 1 in rates:
            for world, rate in rates.items():
                if world > 1:
                    print(f"scaling efficiency at world {world}: {rate / rates[1] / world:.0%}")


if __name__ == "__main__":
    main()
