"""Distances between the original and the pruned model's final logits (lower = more similar).

Each metric maps a `Reference` (the original model's logits for some samples, with the
quantities the metric needs computed once per session) and the pruned logits of the same samples,
shape (B, T, V), to per-token values of shape (B, T'); the score is their mean over every token of
every sample. The maths runs in the dtype of the logits it is given (the scorer casts them to the
distance dtype, fp32 by default); 0 log 0 = 0 (logs are clamped at the smallest normal float). Adding a metric is one decorated function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from finercut_tui.errors import FinercutError

LOG_TINY = float(torch.log(torch.tensor(torch.finfo(torch.float32).tiny)))  # ~ -87.3


@dataclass
class Reference:
    """Reference logits plus cached fp32 log-probs and probs, for the metrics that need them."""

    logits: torch.Tensor
    log_p: torch.Tensor | None = None  # clamped at LOG_TINY so that 0 * log 0 = 0
    p: torch.Tensor | None = None

    def rows(self, start: int, stop: int) -> Reference:
        cut = lambda t: None if t is None else t[start:stop]  # noqa: E731
        return Reference(self.logits[start:stop], cut(self.log_p), cut(self.p))

    def tokens(self, start: int, stop: int) -> Reference:
        cut = lambda t: None if t is None else t[:, start:stop]  # noqa: E731
        return Reference(self.logits[:, start:stop], cut(self.log_p), cut(self.p))


MetricFn = Callable[[Reference | None, torch.Tensor, torch.Tensor], torch.Tensor]
METRICS: dict[str, MetricFn] = {}
NEEDS_REFERENCE: dict[str, bool] = {}
NEEDS_PROBS: dict[str, bool] = {}
TOKEN_LOCAL: dict[str, bool] = {}  # each token's value depends on that position alone (can be chunked)


def register(name: str, needs_reference: bool = True, needs_probs: bool = True, token_local: bool = True):
    def deco(fn: MetricFn) -> MetricFn:
        METRICS[name] = fn
        NEEDS_REFERENCE[name] = needs_reference
        NEEDS_PROBS[name] = needs_reference and needs_probs
        TOKEN_LOCAL[name] = token_local
        return fn

    return deco


def get_metric(name: str) -> MetricFn:
    if name not in METRICS:
        raise FinercutError(f"unknown metric {name!r}: choose one of {', '.join(METRICS)}")
    return METRICS[name]


def prepare_reference(logits: torch.Tensor, metric: str) -> Reference:
    """Compute once what `metric` needs from the original model's logits."""
    ref = Reference(logits)
    if NEEDS_PROBS.get(metric):
        log_p = F.log_softmax(logits, -1)
        ref.p = log_p.exp()
        ref.log_p = log_p.clamp_min_(LOG_TINY)
    return ref


def _log_probs(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    log_q = F.log_softmax(out, -1)
    q = log_q.exp()
    return log_q.clamp_min_(LOG_TINY), q


# Differences of logs are taken element by element (p (log p - log m)), not as differences of summed
# entropies, which cancel catastrophically when the two distributions are close.


@register("js")
def js(ref: Reference, out: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence per token: 0.5 KL(P||M) + 0.5 KL(Q||M), M = (P+Q)/2, natural log."""
    log_q, q = _log_probs(out)
    m = 0.5 * (ref.p + q)
    log_m = torch.log(m).clamp_min_(LOG_TINY)
    return 0.5 * ((ref.p * (ref.log_p - log_m)).sum(-1) + (q * (log_q - log_m)).sum(-1))


@register("js-ref")
def js_ref(ref: Reference, out: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """FinerCut's reference code: 0.5 (KL(M||P) + KL(M||Q)) with torch's kl_div, mean over tokens x vocab.

    `F.kl_div(log_softmax(x), M, reduction="mean")` averages M (log M - log P) over every element,
    so the per-token value is that sum divided by the vocabulary size.
    """
    log_q, q = _log_probs(out)
    m = 0.5 * (ref.p + q)
    log_m = torch.log(m).clamp_min_(LOG_TINY)
    return 0.5 * ((m * (log_m - ref.log_p)).sum(-1) + (m * (log_m - log_q)).sum(-1)) / out.shape[-1]


@register("kl")
def kl(ref: Reference, out: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """KL(P_original || Q_pruned) per token."""
    log_q, _ = _log_probs(out)
    return (ref.p * (ref.log_p - log_q)).sum(-1)


@register("angular", needs_probs=False)
def angular(ref: Reference, out: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Angle between the two logit vectors, arccos(cos) with cos clamped to [0, 1].

    Computed as 2 atan2(|a - b|, |a + b|) of the unit vectors, which stays accurate near 0 where
    fp32 arccos has a floor of ~5e-4 rad.
    """
    a = F.normalize(ref.logits, dim=-1)
    b = F.normalize(out, dim=-1)
    angle = 2 * torch.atan2((a - b).norm(dim=-1), (a + b).norm(dim=-1))
    return angle.clamp(max=torch.pi / 2)


@register("l2", needs_probs=False)
def l2(ref: Reference, out: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """L2 norm of the logit difference per token."""
    return (ref.logits - out).norm(dim=-1)


@register("nll", needs_reference=False, token_local=False)
def nll(ref: Reference | None, out: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Next-token negative log-likelihood of the pruned model (SLEB-style); ignores the reference."""
    logits = out[:, :-1]
    return F.cross_entropy(logits.transpose(1, 2), ids[:, 1:].to(logits.device), reduction="none")
