"""Similarity drop (LLM-Drop): scores equal a hand-written cosine reference; orders match."""

import pytest
import torch
import torch.nn.functional as F
from builders import make_engine
from tiny_models import tiny_model

from finercut_tui.domain.events import SublayerRemoved
from finercut_tui.model.adapters import architecture_for
from finercut_tui.model.surgery import PrunableModel
from finercut_tui.search.similarity import angular_gap, measure_similarities


def reference_importance(model, ids, removed=()):
    """1 - mean cos, read off the unmodified model: X = block input, the MLP pre-norm's input is the
    residual after attention, the block output is the next block's input. Removed sublayers are
    zeroed with hooks."""
    arch = architecture_for(model.config)
    blocks = dict(model.named_modules())[arch.blocks]
    L = len(blocks)
    inputs, mids, outputs, handles = {}, {}, {}, []
    mlp_norm = arch.mlp[0][0]
    for b, block in enumerate(blocks):
        handles.append(
            block.register_forward_pre_hook(
                lambda m, a, k, b=b: inputs.setdefault(b, []).append(a[0] if a else k["hidden_states"]),
                with_kwargs=True,
            )
        )
        handles.append(block.register_forward_hook(lambda m, a, o, b=b: outputs.setdefault(b, []).append(o)))
        handles.append(
            getattr(block, mlp_norm).register_forward_pre_hook(
                lambda m, a, b=b: mids.setdefault(b, []).append(a[0])
            )
        )
        for kind in ("attn", "mlp"):
            if f"{b}.{kind}" in removed:
                group = arch.attn if kind == "attn" else arch.mlp
                handles.append(
                    getattr(block, group[-1][0]).register_forward_hook(
                        lambda m, i, o: (o[0] * 0,) + o[1:] if isinstance(o, tuple) else o * 0
                    )
                )
    with torch.no_grad():
        for i in range(ids.shape[0]):
            model(ids[i : i + 1], use_cache=False)
    for h in handles:
        h.remove()

    def imp(xs, ys):
        cos = [
            F.cosine_similarity(x.double(), y.double(), dim=-1).flatten() for x, y in zip(xs, ys, strict=True)
        ]
        return 1.0 - torch.cat(cos).mean().item()

    scores = {}
    for b in range(L):
        scores[f"{b}.block"] = imp(inputs[b], outputs[b])
        if f"{b}.attn" not in removed:
            scores[f"{b}.attn"] = imp(inputs[b], mids[b])
        if f"{b}.mlp" not in removed:
            scores[f"{b}.mlp"] = imp(mids[b], outputs[b])
    return scores


@pytest.fixture
def ids():
    return torch.randint(3, 128, (3, 20), generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("name", ["llama", "gemma2", "gpt2"])
def test_step1_scores_equal_hand_written_cosine(name, ids):
    want = reference_importance(tiny_model(name), ids)
    sims = measure_similarities(PrunableModel(tiny_model(name)), ids, batch_size=2)
    got = {f"{b}.attn": 1 - s for b, s in sims.attn.items()}
    got |= {f"{b}.mlp": 1 - s for b, s in sims.mlp.items()}
    got |= {f"{b}.block": 1 - s for b, s in sims.block.items()}
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key


def run_order(name, ids, num_hidden_layers=4, **config):
    model = tiny_model(name, num_hidden_layers=num_hidden_layers)
    engine = make_engine(PrunableModel(model), ids, **config)
    removed = [e for e in engine.run() if isinstance(e, SublayerRemoved)]
    return [e.sublayer for e in removed], removed


@pytest.mark.parametrize(
    "method,kinds",
    [
        ("joint-drop", ("attn", "mlp")),
        ("attn-drop", ("attn",)),
        ("mlp-drop", ("mlp",)),
        ("block-drop", ("block",)),
    ],
)
def test_one_shot_orders_match_reference(method, kinds, ids):
    want_scores = reference_importance(tiny_model("llama"), ids)
    candidates = [k for k in want_scores if k.split(".")[1] in kinds]
    want = sorted(candidates, key=lambda k: want_scores[k])[:3]
    order, removed = run_order("llama", ids, method=method, target=3)
    assert order == want
    assert removed[0].scores and not removed[1].scores  # one-shot: scores recorded at the step computing them


@pytest.mark.parametrize("method", ["joint-drop", "attn-drop"])
def test_iterative_order_matches_reference(method, ids):
    model = tiny_model("llama")
    kinds = ("attn", "mlp") if method == "joint-drop" else ("attn",)
    removed = []
    for _ in range(4):
        scores = reference_importance(model, ids, removed)
        candidates = [k for k in scores if k.split(".")[1] in kinds and k not in removed]
        removed.append(min(candidates, key=lambda k: scores[k]))
    order, events = run_order("llama", ids, method=method, target=4, iterative=True)
    assert order == removed
    assert all(e.scores for e in events)


def test_angular_gap_removes_the_best_contiguous_run(ids):
    model = tiny_model("llama", num_hidden_layers=6)
    with torch.no_grad():
        hs = [
            torch.cat(
                [
                    model(ids[i : i + 1], output_hidden_states=True, use_cache=False).hidden_states[b][:, -1]
                    for i in range(3)
                ]
            )
            for b in range(6)
        ]
    sims = measure_similarities(PrunableModel(tiny_model("llama", num_hidden_layers=6)), ids)
    gaps = angular_gap(sims.last_token, 2)
    for b in range(4):  # h_b, h_{b+2} both inside the stack (the last HF hidden state is post-norm)
        cos = F.cosine_similarity(hs[b].double(), hs[b + 2].double(), dim=-1)
        assert gaps[b] == pytest.approx((torch.arccos(cos) / torch.pi).mean().item(), rel=1e-5)
    order, _ = run_order(
        "llama", ids, num_hidden_layers=6, method="block-drop", block_metric="angular-gap", target=2
    )
    start = min(gaps, key=lambda b: gaps[b])
    assert order == [f"{start}.block", f"{start + 1}.block"]


def test_parallel_residual_gpt_neox_uses_the_block_input_for_both_sublayers(ids):
    """GPT-NeoX: out = x + attn(ln1(x)) + mlp(ln2(x)); attention Y = x + attn, MLP Y = x + mlp."""
    model = tiny_model("gpt_neox")
    attn_out, mlp_out, inputs = {}, {}, {}
    handles = []
    for b, layer in enumerate(model.gpt_neox.layers):
        handles.append(
            layer.register_forward_pre_hook(
                lambda m, a, k, b=b: inputs.setdefault(b, []).append(a[0] if a else k["hidden_states"]),
                with_kwargs=True,
            )
        )
        handles.append(
            layer.attention.register_forward_hook(
                lambda m, a, o, b=b: attn_out.setdefault(b, []).append(o[0])
            )
        )
        handles.append(
            layer.mlp.register_forward_hook(lambda m, a, o, b=b: mlp_out.setdefault(b, []).append(o))
        )
    with torch.no_grad():
        for i in range(ids.shape[0]):
            model(ids[i : i + 1], use_cache=False)
    for h in handles:
        h.remove()

    def sim(xs, ds):
        return (
            torch.cat(
                [
                    F.cosine_similarity(x.double(), (x + d).double(), dim=-1).flatten()
                    for x, d in zip(xs, ds, strict=True)
                ]
            )
            .mean()
            .item()
        )

    sims = measure_similarities(PrunableModel(tiny_model("gpt_neox")), ids)
    for b in range(4):
        assert sims.attn[b] == pytest.approx(sim(inputs[b], attn_out[b]), rel=1e-5)
        assert sims.mlp[b] == pytest.approx(sim(inputs[b], mlp_out[b]), rel=1e-5)
