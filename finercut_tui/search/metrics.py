"""Distances between the original and the pruned model's final logits (lower = more similar).

Each metric maps (reference logits, pruned logits, input ids) of one batch, shape (B, T, V), to
per-token values of shape (B, T'); the score is their mean over every token of every sample.
All maths in fp32. Adding a metric is one decorated function.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from finercut_tui.errors import FinercutError

MetricFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
METRICS: dict[str, MetricFn] = {}
NEEDS_REFERENCE: dict[str, bool] = {}


def register(name: str, needs_reference: bool = True):
    def deco(fn: MetricFn) -> MetricFn:
        METRICS[name] = fn
        NEEDS_REFERENCE[name] = needs_reference
        return fn

    return deco


def get_metric(name: str) -> MetricFn:
    if name not in METRICS:
        raise FinercutError(f"unknown metric {name!r}: choose one of {', '.join(METRICS)}")
    return METRICS[name]


@register("js")
def js(ref: torch.Tensor, out: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence per token: 0.5 KL(P||M) + 0.5 KL(Q||M), M = (P+Q)/2, natural log."""
    log_p, log_q = F.log_softmax(ref.float(), -1), F.log_softmax(out.float(), -1)
    log_m = torch.logaddexp(log_p, log_q) - torch.log(torch.tensor(2.0, device=log_p.device))
    kl_pm = (log_p.exp() * (log_p - log_m)).sum(-1)
    kl_qm = (log_q.exp() * (log_q - log_m)).sum(-1)
    return 0.5 * (kl_pm + kl_qm)


@register("js-ref")
def js_ref(ref: torch.Tensor, out: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """FinerCut's reference code: 0.5 (KL(M||P) + KL(M||Q)) with torch's kl_div, mean over tokens x vocab.

    `F.kl_div(log_softmax(x), M, reduction="mean")` averages M (log M - log P) over every element,
    so the per-token value is that sum divided by the vocabulary size.
    """
    log_p, log_q = F.log_softmax(ref.float(), -1), F.log_softmax(out.float(), -1)
    m = 0.5 * (log_p.exp() + log_q.exp())
    vocab = ref.shape[-1]
    kl_mp = F.kl_div(log_p, m, reduction="none").sum(-1)
    kl_mq = F.kl_div(log_q, m, reduction="none").sum(-1)
    return 0.5 * (kl_mp + kl_mq) / vocab


@register("kl")
def kl(ref: torch.Tensor, out: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """KL(P_original || Q_pruned) per token."""
    log_p, log_q = F.log_softmax(ref.float(), -1), F.log_softmax(out.float(), -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


@register("angular")
def angular(ref: torch.Tensor, out: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """arccos of the cosine of the two logit vectors, cosine clamped to [0, 1]."""
    cos = F.cosine_similarity(ref.float(), out.float(), dim=-1)
    return torch.arccos(cos.clamp(0.0, 1.0))


@register("l2")
def l2(ref: torch.Tensor, out: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """L2 norm of the logit difference per token."""
    return (ref.float() - out.float()).norm(dim=-1)


@register("nll", needs_reference=False)
def nll(ref: torch.Tensor | None, out: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Next-token negative log-likelihood of the pruned model (SLEB-style); ignores the reference."""
    logits = out[:, :-1].float()
    return F.cross_entropy(logits.transpose(1, 2), ids[:, 1:].to(logits.device), reduction="none")
