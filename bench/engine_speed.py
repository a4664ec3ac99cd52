"""What pruning buys in a real engine: llama.cpp on the original and the pruned GGUF, in one run.

    python bench/engine_speed.py                                  # SmolLM2-135M, the committed session
    python bench/engine_speed.py --steps 10 20 30 --outtype q8_0
    python bench/engine_speed.py --model PATH --session S.yaml --ctx 4096

Exports the model at step 0 (no removals) and at each `--steps` K of the session with
`finercut_tui.export.gguf` (same outtype), then runs llama.cpp (npm's node-llama-cpp prebuilt CPU
library, `make engines`) on each file: prefill tokens/s over `--prompt` tokens, decode tokens/s over
`--decode` tokens, the KV-cache bytes llama.cpp allocates for `--ctx` tokens (its log line) and the
file size. Each file runs `--repeats` times, alternating, and the best is kept. Prints one table:
each measured ratio next to the share of FLOPs (per token at `--ctx` / 2 context) and of weight bytes
that the removals take out, computed from the shapes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PROBE = ROOT / "tests" / "llama_cpp_probe.mjs"
LLAMA_DIR = Path(os.environ.get("FINERCUT_ENGINES", ROOT / ".engines")) / "llama"


def run_llama(path: Path, args) -> dict:
    env = {**os.environ, "NODE_LLAMA_CPP_DIR": str(LLAMA_DIR)}
    cmd = ["node", str(PROBE), "bench", str(path), args.prompt, args.decode, args.ctx, args.threads]
    cmd += ["fa"] if args.flash_attention else []
    proc = subprocess.run(list(map(str, cmd)), env=env, capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("PROBE ")]
    if proc.returncode or not lines:
        raise SystemExit(f"llama.cpp failed on {path}: {proc.stderr[-1500:]}")
    return json.loads(lines[-1][6:])


def sublayer_costs(pm, ctx: int) -> tuple[dict[str, float], dict[str, int], float, int]:
    """Per-token FLOPs and parameters of every sublayer, and of the whole model, at context `ctx`."""
    cfg = pm.config
    heads = int(cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    flops, params = {}, {}
    for sid in pm.sublayers:
        n = pm.sublayer_parameters(sid)
        params[sid] = n
        extra = 4 * ctx * heads * head_dim if sid.endswith(".attn") else 0  # QK^T and AV
        flops[sid] = 2 * n + extra
    total_params = sum(p.numel() for p in pm.model.parameters())  # tied embeddings once
    total_flops = sum(flops.values()) + 2 * int(cfg.hidden_size) * int(cfg.vocab_size)  # + the LM head
    return flops, params, total_flops, total_params


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--session", default=str(ROOT / "sessions" / "smollm2-finercut-all.yaml"))
    ap.add_argument("--steps", type=int, nargs="+", default=[10, 20, 30])
    ap.add_argument("--outtype", default="f16")
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=1, help="1: robust on a shared CPU (2 threads spin)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--no-flash-attention",
        dest="flash_attention",
        action="store_false",
        help="flash attention off (llama.cpp then pads every layer's V cache to the largest, attention-free too)",
    )
    ap.add_argument("--out", help="keep the GGUF files in this folder")
    ap.add_argument("--json", help="also write the rows as JSON here")
    args = ap.parse_args(argv)

    from finercut_tui.domain.sublayers import expand
    from finercut_tui.export.gguf import write_gguf
    from finercut_tui.model.loading import ModelSpec, load_model
    from finercut_tui.session import Session

    if not (LLAMA_DIR / "node_modules" / "node-llama-cpp").is_dir():
        raise SystemExit("llama.cpp is not installed: run `make engines`")
    session = Session.load(args.session)
    lm = load_model(ModelSpec(args.model, dtype="float32", device="cpu"), progress=lambda _m: None)
    pm = lm.pm
    flops, params, total_flops, total_params = sublayer_costs(pm, args.ctx // 2)
    work = Path(args.out or tempfile.mkdtemp(prefix="engine_speed_"))
    work.mkdir(parents=True, exist_ok=True)
    files = {}
    for k in [0, *args.steps]:
        removed = expand(session.removed_at(k)) if k else []
        path = work / f"step{k:03d}-{args.outtype}.gguf"
        write_gguf(pm, path, removed, outtype=args.outtype, source_model=args.model)
        files[k] = (path, removed)
    best: dict[int, dict] = {}
    for _ in range(args.repeats):
        for k, (path, _removed) in files.items():
            got = run_llama(path, args)
            old = best.get(k)
            if old is None:
                best[k] = got
            else:
                old["prefill_tok_s"] = max(old["prefill_tok_s"], got["prefill_tok_s"])
                old["decode_tok_s"] = max(old["decode_tok_s"], got["decode_tok_s"])
    base = best[0]
    base_size = files[0][0].stat().st_size
    rows = []
    for k, (path, removed) in files.items():
        got = best[k]
        size = path.stat().st_size
        rows.append(
            {
                "step": k,
                "removed_attn": sum(s.endswith(".attn") for s in removed),
                "removed_mlp": sum(s.endswith(".mlp") for s in removed),
                "flops_removed": sum(flops[s] for s in removed) / total_flops,
                "bytes_removed": sum(params[s] for s in removed) / total_params,
                "prefill_tok_s": got["prefill_tok_s"],
                "decode_tok_s": got["decode_tok_s"],
                "prefill_speedup": got["prefill_tok_s"] / base["prefill_tok_s"],
                "decode_speedup": got["decode_tok_s"] / base["decode_tok_s"],
                "kv_bytes": got["kv_bytes"],
                "kv_ratio": got["kv_bytes"] / base["kv_bytes"] if base["kv_bytes"] else None,
                "file_bytes": size,
                "file_ratio": size / base_size,
            }
        )
    print(
        f"llama.cpp (node-llama-cpp 3.22.1, CPU, {args.threads} threads, flash attention "
        f"{'on' if args.flash_attention else 'off'}), {args.model} {args.outtype}, prompt {args.prompt}, "
        f"decode {args.decode}, KV at {args.ctx} tokens, best of {args.repeats}"
    )
    print(
        "| removals | attn / mlp | FLOPs removed | weights removed | prefill tok/s | decode tok/s "
        "| prefill x | decode x | KV MiB | KV ratio | file MiB | file ratio |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        kv = f"{r['kv_bytes'] / 2**20:.1f}" if r["kv_bytes"] else "?"
        kv_ratio = f"{r['kv_ratio']:.2f}" if r["kv_ratio"] is not None else "?"
        print(
            f"| {r['step']} | {r['removed_attn']} / {r['removed_mlp']} | {100 * r['flops_removed']:.1f}% "
            f"| {100 * r['bytes_removed']:.1f}% | {r['prefill_tok_s']:.0f} | {r['decode_tok_s']:.1f} "
            f"| {r['prefill_speedup']:.2f} | {r['decode_speedup']:.2f} | {kv} | {kv_ratio} "
            f"| {r['file_bytes'] / 2**20:.1f} | {r['file_ratio']:.2f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
