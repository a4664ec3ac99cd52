"""The naive FinerCut loop, as the paper's reference code runs it: one sample at a time, a full
forward per candidate, every removed sublayer masked by a zeroing hook (its compute still runs)."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from finercut_tui.model.adapters import architecture_for


def _zero(module, inputs, output):
    return (output[0] * 0.0,) + tuple(output[1:]) if isinstance(output, tuple) else output * 0.0


def naive_finercut(model, ids: torch.Tensor, steps: int, batched: bool = False):
    """Returns (order, candidate evaluations, seconds). JS divergence per token, mean over tokens."""
    arch = architecture_for(model.config)
    blocks = dict(model.named_modules())[arch.blocks]
    L = len(blocks)
    rows = [ids] if batched else [ids[i : i + 1] for i in range(ids.shape[0])]

    def logits() -> list[torch.Tensor]:
        with torch.inference_mode():
            return [model(r, use_cache=False).logits for r in rows]

    start = time.perf_counter()
    reference = [F.log_softmax(x.float(), -1) for x in logits()]
    removed: list[str] = []
    handles: dict[str, object] = {}
    evaluations = 0
    for _ in range(steps):
        scores = {}
        for b in range(L):
            for kind in ("attn", "mlp"):
                sid = f"{b}.{kind}"
                if sid in removed:
                    continue
                group = arch.attn if kind == "attn" else arch.mlp
                h = getattr(blocks[b], group[-1][0]).register_forward_hook(_zero)
                total, count = 0.0, 0
                for log_p, out in zip(reference, logits(), strict=True):
                    log_q = F.log_softmax(out.float(), -1)
                    log_m = torch.logaddexp(log_p, log_q) - torch.log(torch.tensor(2.0))
                    js = 0.5 * (
                        (log_p.exp() * (log_p - log_m)).sum(-1) + (log_q.exp() * (log_q - log_m)).sum(-1)
                    )
                    total += float(js.double().sum())
                    count += js.numel()
                h.remove()
                scores[sid] = total / count
                evaluations += 1
        best = min(scores, key=scores.get)
        removed.append(best)
        b, kind = best.split(".")
        group = arch.attn if kind == "attn" else arch.mlp
        handles[best] = getattr(blocks[int(b)], group[-1][0]).register_forward_hook(_zero)
    for h in handles.values():
        h.remove()
    return removed, evaluations, time.perf_counter() - start
