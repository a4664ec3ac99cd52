"""The peers' methods by name (issue 24), each against an independent reference written here.

- SLEB and BlockPruner are greedy: a slow loop runs the *unmodified* model with the removed units'
  outputs zeroed by hooks, once per candidate per step, and scores it by next-token NLL.
- ShortGPT's Block Influence and Gromov et al.'s angular distance are formulas over hidden states.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from builders import make_engine
from reference import logits_with_zeroed, nll_by_hand
from tiny_models import tiny_inputs, tiny_model

from finercut_tui.domain.events import SublayerRemoved
from finercut_tui.domain.methods import get_method
from finercut_tui.model.surgery import PrunableModel

L = 6  # blocks of the tiny model


@pytest.fixture(scope="module")
def ids():
    return tiny_inputs(n=3, t=16)


def greedy_nll(model, ids, units, target):
    """The greedy loop of SLEB / BlockPruner: remove the unit whose removal gives the lowest NLL of
    the current pruned model on the calibration tokens, re-scoring every remaining unit each step."""
    removed: list[str] = []
    all_scores = []
    while len(removed) < target:
        candidates = [u for u in units if u not in removed]
        scores = {u: nll_by_hand(logits_with_zeroed(model, ids, removed + [u]), ids) for u in candidates}
        all_scores.append(scores)
        removed.append(min(candidates, key=lambda u: (scores[u], units.index(u))))
    return removed, all_scores


def engine_order(ids, method, target, **options):
    engine = make_engine(
        PrunableModel(tiny_model("llama", num_hidden_layers=L)), ids, target, method=method, **options
    )
    events = [e for e in engine.run() if isinstance(e, SublayerRemoved)]
    return [e.sublayer for e in events], [e.scores for e in events]


def test_sleb_removes_blocks_greedily_by_nll_inside_its_barriers(ids):
    units = [f"{b}.block" for b in range(1, L - 1)]  # SLEB never removes its first and last block
    want, want_scores = greedy_nll(tiny_model("llama", num_hidden_layers=L), ids, units, 3)
    order, scores = engine_order(ids, "sleb", 3, metric="nll")
    assert order == want
    for got, expected in zip(scores, want_scores, strict=True):
        assert got.keys() == expected.keys()
        for unit in expected:
            assert got[unit] == pytest.approx(expected[unit], abs=1e-4)
    assert get_method("sleb").universe(L) == units


def test_sleb_order_is_the_same_with_prefix_caching_on_and_off(ids):
    cached, cached_scores = engine_order(ids, "sleb", 3, metric="nll", prefix_cache="gpu")
    plain, plain_scores = engine_order(ids, "sleb", 3, metric="nll", prefix_cache="off")
    assert cached == plain
    for a, b in zip(cached_scores, plain_scores, strict=True):
        assert a == pytest.approx(b, abs=1e-6)


def test_blockpruner_removes_sublayers_greedily_by_nll(ids):
    units = [f"{b}.{k}" for b in range(L) for k in ("attn", "mlp")]
    want, want_scores = greedy_nll(tiny_model("llama", num_hidden_layers=L), ids, units, 4)
    order, scores = engine_order(ids, "blockpruner", 4, metric="nll")
    assert order == want
    for got, expected in zip(scores, want_scores, strict=True):
        for unit in expected:
            assert got[unit] == pytest.approx(expected[unit], abs=1e-4)


def _hidden_states(model, ids):
    """Every block's input per token, and the last block's output, from plain forward hooks."""
    blocks = model.model.layers
    inputs, last = {}, []
    handles = [
        block.register_forward_pre_hook(
            lambda m, a, k, b=b: inputs.setdefault(b, []).append(a[0] if a else k["hidden_states"]),
            with_kwargs=True,
        )
        for b, block in enumerate(blocks)
    ]
    handles.append(
        blocks[-1].register_forward_hook(lambda m, a, o: last.append(o[0] if isinstance(o, tuple) else o))
    )
    try:
        with torch.no_grad():
            for i in range(ids.shape[0]):
                model(ids[i : i + 1], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    h = [torch.cat(inputs[b]).double() for b in range(len(blocks))]
    return h + [torch.cat(last).double()]  # h[b] enters block b; h[L] leaves the last block


def test_shortgpt_removes_the_blocks_of_lowest_block_influence(ids):
    h = _hidden_states(tiny_model("llama", num_hidden_layers=L), ids)
    influence = {
        f"{b}.block": 1.0 - F.cosine_similarity(h[b], h[b + 1], dim=-1).mean().item() for b in range(L)
    }
    want = sorted(influence, key=influence.get)[:3]
    order, scores = engine_order(ids, "shortgpt", 3)
    assert order == want
    for unit, value in influence.items():
        assert scores[0][unit] == pytest.approx(value, abs=1e-5)


def test_angular_removes_the_contiguous_run_of_smallest_angular_distance(ids):
    n = 2
    h = _hidden_states(tiny_model("llama", num_hidden_layers=L), ids)
    last = [x[:, -1] for x in h]
    distance = {
        b: (torch.arccos(F.cosine_similarity(last[b], last[b + n], dim=-1).clamp(-1, 1)) / torch.pi)
        .mean()
        .item()
        for b in range(L - n + 1)
    }
    start = min(distance, key=lambda b: (distance[b], b))
    order, scores = engine_order(ids, "angular", n, block_metric="angular-gap")
    assert order == [f"{start + i}.block" for i in range(n)]
    assert scores[0][f"{start}.block"] == pytest.approx(distance[start], abs=1e-5)
