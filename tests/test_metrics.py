"""Every metric against a hand-written formula; 0 log 0 handled; the CLI's name list is the registry."""

import math

import pytest
import torch

from finercut_tui.domain import methods
from finercut_tui.search.metrics import METRICS, prepare_reference

G = torch.Generator().manual_seed(0)
REF = torch.randn(2, 5, 11, generator=G, dtype=torch.float64) * 3
OUT = REF + torch.randn(2, 5, 11, generator=G, dtype=torch.float64)
IDS = torch.randint(0, 11, (2, 5), generator=G)


def score(name, ref=REF, out=OUT):
    return METRICS[name](prepare_reference(ref.float(), name), out.float(), IDS).double().mean().item()


def probs(x):
    return torch.softmax(x, -1)


def test_metric_names_listed_for_the_cli_are_the_registry():
    assert tuple(METRICS) == methods.METRIC_NAMES


def test_js_kl_jsref_by_hand():
    p, q = probs(REF), probs(OUT)
    m = (p + q) / 2
    kl = lambda a, b: (a * (a.log() - b.log())).sum(-1)  # noqa: E731
    assert score("js") == pytest.approx((0.5 * kl(p, m) + 0.5 * kl(q, m)).mean().item(), rel=1e-5)
    assert score("kl") == pytest.approx(kl(p, q).mean().item(), rel=1e-5)
    assert score("js-ref") == pytest.approx((0.5 * (kl(m, p) + kl(m, q)) / 11).mean().item(), rel=1e-5)


def test_angular_l2_nll_by_hand():
    cos = (REF * OUT).sum(-1) / (REF.norm(dim=-1) * OUT.norm(dim=-1))
    assert score("angular") == pytest.approx(torch.arccos(cos.clamp(0, 1)).mean().item(), rel=1e-5)
    assert score("l2") == pytest.approx((REF - OUT).norm(dim=-1).mean().item(), rel=1e-5)
    logq = torch.log_softmax(OUT, -1)
    nll = -logq[:, :-1].gather(-1, IDS[:, 1:, None]).squeeze(-1)
    assert score("nll") == pytest.approx(nll.mean().item(), rel=1e-5)


def test_angular_is_accurate_for_nearly_equal_logits():
    out = REF * (1 + 1e-6)  # the same direction: angle 0, where fp32 arccos would give ~5e-4
    assert score("angular", out=out) < 1e-6


@pytest.mark.parametrize("name", ["js", "js-ref", "kl"])
def test_zero_probabilities_give_finite_scores(name):
    ref = REF.clone()
    ref[0, 0, 3] = -math.inf  # p = 0 for one token of the vocabulary
    out = OUT.clone()
    out[1, 2, 4] = -math.inf
    value = score(name, ref=ref, out=out)
    assert math.isfinite(value) and value > 0


def test_identical_outputs_score_zero():
    for name in ("js", "js-ref", "kl", "angular", "l2"):
        assert abs(score(name, out=REF)) < 1e-6, name
