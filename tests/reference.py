"""Slow, obviously-correct references for the search maths (independent of the code under test)."""

from __future__ import annotations

import torch

from finercut_tui.model.adapters import architecture_for


def logits_with_zeroed(model, ids, removed) -> torch.Tensor:
    """Full forward of the *unmodified* model with removed sublayers' outputs multiplied by zero."""
    arch = architecture_for(model.config)
    blocks = dict(model.named_modules())[arch.blocks]
    handles = []
    for sid in removed:
        b, kind = sid.split(".")
        kinds = ["attn", "mlp"] if kind == "block" else [kind]
        for k in kinds:
            group = arch.attn if k == "attn" else arch.mlp
            last = getattr(blocks[int(b)], group[-1][0])
            handles.append(
                last.register_forward_hook(
                    lambda m, i, o: (o[0] * 0.0,) + o[1:] if isinstance(o, tuple) else o * 0.0
                )
            )
    try:
        with torch.no_grad():
            return torch.cat([model(ids[i : i + 1], use_cache=False).logits for i in range(ids.shape[0])])
    finally:
        for h in handles:
            h.remove()


def js_by_hand(p_logits, q_logits):
    p, q = torch.softmax(p_logits.double(), -1), torch.softmax(q_logits.double(), -1)
    m = (p + q) / 2
    kl_pm = (p * (p.log() - m.log())).sum(-1)
    kl_qm = (q * (q.log() - m.log())).sum(-1)
    return (0.5 * kl_pm + 0.5 * kl_qm).mean().item()


def js_ref_by_hand(p_logits, q_logits):
    """0.5 * (KL(M||P) + KL(M||Q)), each averaged over tokens x vocabulary (torch kl_div 'mean')."""
    p, q = torch.softmax(p_logits.double(), -1), torch.softmax(q_logits.double(), -1)
    m = (p + q) / 2
    return (0.5 * ((m * (m.log() - p.log())).mean() + (m * (m.log() - q.log())).mean())).item()


def kl_by_hand(p_logits, q_logits):
    p, q = torch.softmax(p_logits.double(), -1), torch.softmax(q_logits.double(), -1)
    return (p * (p.log() - q.log())).sum(-1).mean().item()


def angular_by_hand(p_logits, q_logits):
    """Angle between the logit vectors per token, arccos of the cosine clamped to [0, 1]."""
    cos = torch.nn.functional.cosine_similarity(p_logits.double(), q_logits.double(), dim=-1)
    return torch.arccos(cos.clamp(0.0, 1.0)).mean().item()


def l2_by_hand(p_logits, q_logits):
    return (p_logits.double() - q_logits.double()).norm(dim=-1).mean().item()


def nll_by_hand(q_logits, ids):
    """Mean next-token negative log-likelihood of the pruned model (the original is not used)."""
    log_q = torch.log_softmax(q_logits.double()[:, :-1], -1)
    return -log_q.gather(-1, ids[:, 1:, None]).mean().item()


HAND_METRICS = {
    "js": js_by_hand,
    "js-ref": js_ref_by_hand,
    "kl": kl_by_hand,
    "angular": angular_by_hand,
    "l2": l2_by_hand,
}


def greedy_finercut(model, ids, metric, target, pinned=(), exclude_front=None, start=()):
    """The FinerCut greedy loop, a full forward per candidate, from the removals in `start`.
    Front exclusion as llm_dissect applies `-x X` to the 2L sublayers in model order: the first
    2 * (int(L*X) + 1) of them are no candidates while at most int(2L*X) are removed.
    Returns (order including `start`, scores of the first greedy step)."""
    L = model.config.num_hidden_layers
    original = logits_with_zeroed(model, ids, [])

    def distance(pruned):
        return nll_by_hand(pruned, ids) if metric == "nll" else HAND_METRICS[metric](original, pruned)

    removed: list[str] = list(start)
    first_scores = None
    while len(removed) < target:
        sublayers = [f"{b}.{k}" for b in range(L) for k in ("attn", "mlp")]
        excluded = set()
        if exclude_front is not None and len(removed) <= int(2 * L * exclude_front):
            excluded = set(sublayers[: 2 * (int(L * exclude_front) + 1)])
        candidates = [s for s in sublayers if s not in removed and s not in pinned and s not in excluded]
        scores = {c: distance(logits_with_zeroed(model, ids, removed + [c])) for c in candidates}
        first_scores = first_scores or scores
        removed.append(min(candidates, key=lambda c: scores[c]))
    return removed, first_scores
