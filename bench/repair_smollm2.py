"""Training-free repair on the embedded SmolLM2-135M: held-out perplexity unrepaired vs repaired.

    python bench/repair_smollm2.py                              # steps 10 20 30 of the committed session
    python bench/repair_smollm2.py --steps 10 --ridge 0 1e-3 1e-2 1e-1   # a ridge sweep at 10 removals

The removal order is the committed FinerCut session (`sessions/smollm2-finercut-all.yaml`, the same
first 10 removals as `sessions/smollm2-finercut-heal.yaml`). Calibration: `--calib-samples` x
`--seq-len` tokens of pydoc's first half (the session's own calibration is 2 x 64 = 128 tokens, fewer
than the hidden size 576). Evaluation: perplexity on pydoc's second half, 16 x 256 tokens (4096),
as `--ppl pydoc --ppl-seq-len 256 --ppl-max-tokens 4096` scores it, so the figures sit beside the
LoRA heal's in README. fp32 on CPU. Prints one line per (step, ridge) and the seconds each repair took.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from finercut_tui.data.calibration import build_calibration  # noqa: E402
from finercut_tui.data.sources import load_text  # noqa: E402
from finercut_tui.domain.sublayers import expand  # noqa: E402
from finercut_tui.eval.perplexity import make_windows, score_windows  # noqa: E402
from finercut_tui.model.loading import ModelSpec, load_model  # noqa: E402
from finercut_tui.repair import repaired  # noqa: E402
from finercut_tui.session import Session  # noqa: E402


def ppl(pm, windows, batch) -> float:
    nll, count = score_windows(pm, windows, batch)
    return math.exp(nll / count)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--session", default=str(ROOT / "sessions" / "smollm2-finercut-all.yaml"))
    ap.add_argument("--steps", type=int, nargs="+", default=[10, 20, 30])
    ap.add_argument("--ridge", type=float, nargs="+", default=[0.1])
    ap.add_argument("--calib-samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8, help="calibration samples per forward")
    ap.add_argument("--ppl-max-tokens", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    session = Session.load(args.session)
    lm = load_model(ModelSpec("smollm2-135m", dtype="float32", device="cpu"), progress=lambda m: None)
    pm = lm.pm
    cal = build_calibration(pm.tokenizer, "pydoc", args.calib_samples, args.seq_len)
    text = load_text("pydoc", purpose="evaluation")
    windows = make_windows(pm.tokenizer, text.text, 256, args.ppl_max_tokens).input_ids
    print(
        f"calibration pydoc ({cal.split}) {cal.samples} x {cal.seq_len} = {cal.input_ids.numel()} tokens; "
        f"eval pydoc ({text.split}) {windows.shape[0]} x {windows.shape[1]} tokens; "
        f"{torch.get_num_threads()} threads",
        flush=True,
    )
    pm.restore_all()
    start = time.perf_counter()
    dense = ppl(pm, windows, 8)
    print(f"unpruned: ppl {dense:.2f} ({time.perf_counter() - start:.0f}s)", flush=True)
    for k in args.steps:
        removed = session.removed_at(k)
        pm.set_removed(expand(removed))
        plain = ppl(pm, windows, 8)
        print(f"step {k}: unrepaired ppl {plain:.2f} ({100 * dense / plain:.1f}% retained)", flush=True)
        for ridge in args.ridge:
            with repaired(pm, cal.input_ids, removed, ridge=ridge, batch_size=args.batch_size) as outcome:
                fixed = ppl(pm, windows, 8)  # the weights are given back on leaving the block
            left = [p.relative for p in outcome.patched if p.relative is not None]
            print(
                f"step {k}: ridge {ridge:g}: repaired ppl {fixed:.2f} ({100 * dense / fixed:.1f}% retained); "
                f"{len(outcome.patched)} patches, mean stream error left {100 * sum(left) / len(left):.1f}%; "
                f"repair {outcome.seconds:.1f}s",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
