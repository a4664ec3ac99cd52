"""One prepared GPU benchmark: full-order FinerCut and similarity drop on a Llama-3-8B-shaped model.

    python bench/gpu_search.py                      # on one H100/H200 (~3-5 minutes)
    python bench/gpu_search.py --shape tiny --device cpu --sim-samples 4 --sim-seq-len 64   # smoke test

Random bf16 weights (32 blocks, hidden 4096, MLP 14336, 8 KV heads, vocab 128256), 10 x 256
calibration tokens. Prints: full-order FinerCut seconds, candidate evaluations/s, achieved TFLOP/s
(analytic count of the forward work actually run) and the fraction of the GPU's dense bf16 peak,
peak memory; the naive batched loop (full forward per candidate, zeroing hooks) for the first
greedy steps and the projected speed-up; similarity drop on 256 x 2048 tokens vs one forward pass.
Targets: full order <= 60 s on one H100; similarity <= 1.2x one forward.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _naive import naive_finercut  # noqa: E402

from finercut_tui.domain.events import CandidateScored, StepStarted, SublayerRemoved  # noqa: E402
from finercut_tui.domain.spec import SearchSpec  # noqa: E402
from finercut_tui.domain.sublayers import split_id  # noqa: E402
from finercut_tui.model.surgery import PrunableModel  # noqa: E402
from finercut_tui.search.engine import SearchEngine  # noqa: E402
from finercut_tui.search.similarity import measure_similarities  # noqa: E402

SHAPES = {
    "llama3-8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
    ),
    "tiny": dict(
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        vocab_size=4096,
    ),
}
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def build(shape: str, device: str, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=8192, attn_implementation="sdpa")
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype).eval()
    model.requires_grad_(False)
    return model


def forward_flops(
    config, tokens: int, seq_len: int, attn_blocks: int, mlp_blocks: int, head: bool = True
) -> float:
    """Matmul FLOPs of a forward over `tokens` tokens running the given numbers of sublayers."""
    d, ff, v = config.hidden_size, config.intermediate_size, config.vocab_size
    kv = config.num_key_value_heads * (d // config.num_attention_heads)
    attn = (
        2 * tokens * (d * d * 2 + d * kv * 2) + 2 * 2 * tokens * seq_len * d / 2
    )  # projections + causal QK/AV
    mlp = 2 * tokens * 3 * d * ff
    return attn_blocks * attn + mlp_blocks * mlp + (2 * tokens * d * v if head else 0)


def run_ours(model, ids):
    pm = PrunableModel(model)
    L = pm.num_blocks
    engine = SearchEngine(pm, ids, SearchSpec(method="finercut", metric="js"), 2 * L)
    tokens, seq_len = ids.numel(), ids.shape[1]
    flops, evaluations, order = 0.0, 0, []
    sync()
    start = time.perf_counter()
    for event in engine.run():
        if isinstance(event, StepStarted):  # the step's prefix-cache forward of the current model
            removed = pm.removed
            flops += forward_flops(
                model.config,
                tokens,
                seq_len,
                L - sum(s.endswith("attn") for s in removed),
                L - sum(s.endswith("mlp") for s in removed),
            )
        elif isinstance(event, CandidateScored):
            evaluations += 1
            block = split_id(event.sublayer)[0]
            removed = pm.removed | {event.sublayer}
            attn = sum(f"{b}.attn" not in removed for b in range(block, L))
            mlp = sum(f"{b}.mlp" not in removed for b in range(block, L))
            flops += forward_flops(model.config, tokens, seq_len, attn, mlp)
        elif isinstance(event, SublayerRemoved):
            order.append(event.sublayer)
    sync()
    seconds = time.perf_counter() - start
    pm.restore_all()
    return order, evaluations, seconds, flops


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", default="llama3-8b", choices=SHAPES)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--naive-steps", type=int, default=2)
    parser.add_argument("--sim-samples", type=int, default=256)
    parser.add_argument("--sim-seq-len", type=int, default=2048)
    parser.add_argument("--sim-batch", type=int, default=8)
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    model = build(args.shape, args.device, dtype)
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (args.samples, args.seq_len), generator=g).to(args.device)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(
        f"device {name}, torch {torch.__version__}, {args.shape}, {dtype}, calibration {tuple(ids.shape)}",
        flush=True,
    )

    with torch.inference_mode():
        model(ids[:1], use_cache=False)  # warm-up
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    order, evaluations, seconds, flops = run_ours(model, ids)
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
    tflops = flops / seconds / 1e12
    peak_tflops = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    print(f"\nFinerCut full order: {len(order)} removals, {evaluations} candidate evaluations")
    print(
        f"  ours:  {seconds:8.1f} s   {evaluations / seconds:8.2f} evals/s   {tflops:7.1f} TFLOP/s"
        + (
            f" ({100 * tflops / peak_tflops:.0f}% of {peak_tflops:.0f} dense bf16 peak)"
            if peak_tflops
            else ""
        )
        + f"   peak memory {peak:.1f} GiB",
        flush=True,
    )

    naive_order, naive_evals, naive_seconds = naive_finercut(model, ids, args.naive_steps, batched=True)
    rate = naive_evals / naive_seconds
    projected = evaluations / rate
    same = order[: args.naive_steps] == naive_order
    print(
        f"  naive batched loop, first {args.naive_steps} steps: {naive_evals} evals in {naive_seconds:.1f} s = "
        f"{rate:.2f} evals/s; full order projected {projected:.0f} s; speed-up {projected / seconds:.1f}x; "
        f"same first removals: {'yes' if same else 'NO'}",
        flush=True,
    )

    sim_ids = torch.randint(0, vocab, (args.sim_samples, args.sim_seq_len), generator=g).to(args.device)
    pm = PrunableModel(model)

    def one_forward():
        with torch.inference_mode():
            for i in range(0, sim_ids.shape[0], args.sim_batch):
                model(input_ids=sim_ids[i : i + args.sim_batch], use_cache=False, logits_to_keep=1)

    one_forward()  # warm-up at this shape
    t_forward = timed(one_forward)
    t_sim = timed(lambda: measure_similarities(pm, sim_ids, batch_size=args.sim_batch))
    print(
        f"\nsimilarity drop, {tuple(sim_ids.shape)} tokens: {t_sim:.1f} s vs one forward {t_forward:.1f} s "
        f"= {t_sim / t_forward:.2f}x (target <= 1.2x)"
    )


if __name__ == "__main__":
    main()
