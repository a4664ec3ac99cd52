"""repair: the least-squares patch against an independent reference written here.

The reference captures the streams with plain forward hooks on the projections and norms (not the
branch modules the repair hooks), stacks every token, solves with numpy.linalg.lstsq (the ridge as
extra rows sqrt(lam) I -> sqrt(lam) I), folds T into its own copy of the model, and goes on to the
next run on that copy. The repair's T, its folded weights and its stream errors must agree.
"""

import numpy as np
import pytest
import torch
from tiny_models import tiny_inputs, tiny_model
from tiny_tokenizer import tiny_tokenizer

from finercut_tui import load_pruned
from finercut_tui.domain.sublayers import expand
from finercut_tui.errors import FinercutError
from finercut_tui.export.folder import export_pruned
from finercut_tui.model.surgery import PrunableModel
from finercut_tui.repair import removal_runs, repair_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# written out here, independently of the adapter table
LAYOUT = {  # arch: (blocks, attention, attention out, mlp norm, mlp out, Conv1D)
    "llama": (
        "model.layers",
        "self_attn",
        "self_attn.o_proj",
        "post_attention_layernorm",
        "mlp.down_proj",
        0,
    ),
    "qwen2": (
        "model.layers",
        "self_attn",
        "self_attn.o_proj",
        "post_attention_layernorm",
        "mlp.down_proj",
        0,
    ),
    "gpt2": ("transformer.h", "attn", "attn.c_proj", "ln_2", "mlp.c_proj", 1),
}


def get(module, dotted):
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


def order(num_blocks):
    return [f"{b}.{k}" for b in range(num_blocks) for k in ("attn", "mlp")]


def reference_runs(removed, num_blocks):
    """(patched sublayer, last removed sublayer) per run, worked out here by hand."""
    gone, out, kept, current = set(expand(removed)), [], None, []
    for sid in order(num_blocks):
        if sid in gone:
            current.append(sid)
            continue
        if current:
            out.append((kept, current[-1]))
            current = []
        kept = sid
    if current:
        out.append((kept, current[-1]))
    return out


def capture(model, arch, ids, points):
    """Forward `ids`; return {point: (tokens, d) float64} for points ("in", b) block input,
    ("mid", b) the stream before the MLP (its norm's input), ("out", b) block output,
    ("z", sid) the output projection's output. Plain hooks only."""
    blocks_path, _, attn_out, mlp_norm, mlp_out, _ = LAYOUT[arch]
    blocks = get(model, blocks_path)
    got, handles = {}, []

    def keep(key, pre):
        if pre:
            return lambda m, args: got.__setitem__(key, args[0].detach())
        return lambda m, args, out: got.__setitem__(key, (out[0] if isinstance(out, tuple) else out).detach())

    for kind, b in points:
        block = blocks[b] if kind != "z" else None
        if kind == "in":
            handles.append(block.register_forward_pre_hook(keep((kind, b), True)))
        elif kind == "mid":
            handles.append(get(block, mlp_norm).register_forward_pre_hook(keep((kind, b), True)))
        elif kind == "out":
            handles.append(block.register_forward_hook(keep((kind, b), False)))
        else:
            sid = b
            blk, k = int(sid.split(".")[0]), sid.split(".")[1]
            proj = get(blocks[blk], attn_out if k == "attn" else mlp_out)
            handles.append(proj.register_forward_hook(keep((kind, sid), False)))
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return {k: v.reshape(-1, v.shape[-1]).double().numpy() for k, v in got.items()}


def after_point(last):
    b, kind = int(last.split(".")[0]), last.split(".")[1]
    return ("mid", b) if kind == "attn" else ("out", b)


def before_point(sid):
    b, kind = int(sid.split(".")[0]), sid.split(".")[1]
    return ("in", b) if kind == "attn" else ("mid", b)


def reference_repair(name, removed, ids, ridge):
    """The reference on its own copy of the model: per run, T by numpy lstsq, folded by hand; returns
    (the model, [(T, optimal error, ||D||, unpatched error)])."""
    arch, model = model_for(name)
    pm = PrunableModel(model)
    _, _, attn_out, _, mlp_out, conv1d = LAYOUT[arch]
    dense = capture(model, arch, ids, [after_point(last) for _, last in reference_runs(removed, 4)])
    out = []
    pm.set_removed(expand(removed))
    for patched, last in reference_runs(removed, 4):
        if patched is None:
            continue
        side = capture(model, arch, ids, [before_point(patched), ("z", patched)])
        d, p, z = dense[after_point(last)], side[before_point(patched)], side[("z", patched)]
        n = z.shape[1]
        lam = ridge * np.trace(z.T @ z) / n
        a = np.vstack([z, np.sqrt(lam) * np.eye(n)])
        b = np.vstack([d - p, np.sqrt(lam) * np.eye(n)])
        t = np.linalg.lstsq(a, b, rcond=None)[0]
        err = np.linalg.norm(p + z @ t - d)
        out.append((t, err, np.linalg.norm(d), np.linalg.norm(p + z - d)))
        blk, kind = int(patched.split(".")[0]), patched.split(".")[1]
        proj = get(get(model, LAYOUT[arch][0])[blk], attn_out if kind == "attn" else mlp_out)  # p is kept
        tt = torch.from_numpy(t)
        with torch.no_grad():
            w = proj.weight.double()
            proj.weight.copy_((w @ tt if conv1d else tt.T @ w).float())
            if proj.bias is not None:
                proj.bias.copy_((proj.bias.double() @ tt).float())
    return pm, out


EXTRA = {"llama-biased": {"attention_bias": True, "mlp_bias": True}}

CASES = {
    "attention run": ("llama", ["2.attn"], 0.0),
    "mlp run": ("llama", ["1.mlp"], 0.0),
    "run over several blocks": ("llama", ["1.mlp", "2.block", "3.attn"], 0.0),
    "whole-block cut (ReplaceMe)": ("llama", ["2.block"], 0.0),
    "two runs, front to back": ("llama", ["1.attn", "2.mlp"], 0.0),
    "qwen2 (biased q/k/v)": ("qwen2", ["1.block", "3.attn"], 0.0),
    "biased o_proj and down_proj": ("llama-biased", ["1.mlp", "2.attn"], 0.0),
    "gpt2 Conv1D with bias": ("gpt2", ["1.attn", "2.block"], 0.0),
    "ridge": ("llama", ["1.mlp", "2.attn"], 0.05),
}


def model_for(name):
    """The tiny model of a case; every bias gets random values (they start at zero), the same each call."""
    arch = "llama" if name == "llama-biased" else name
    model = tiny_model(arch, **EXTRA.get(name, {}))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for key, p in model.named_parameters():
            if key.endswith(".bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return arch, model


@pytest.mark.parametrize("case", list(CASES))
def test_patch_is_the_least_squares_optimum(case):
    name, removed, ridge = CASES[case]
    arch, model = model_for(name)
    ids = tiny_inputs(8, 24, seed=3)  # 192 tokens > hidden size 64
    pm = PrunableModel(model, tiny_tokenizer())
    originals = {k: v.clone() for k, v in model.state_dict().items()}
    outcome = repair_model(pm, ids, removed, ridge=ridge, batch_size=3, keep_maps=True)

    ref_pm, ref = reference_repair(name, removed, ids, ridge)
    patched = outcome.patched
    assert [p.sublayer for p in patched] == [r[0] for r in reference_runs(removed, 4)]
    assert len(patched) == len(ref)
    for patch, (t, err, d_norm, e0) in zip(patched, ref, strict=True):
        np.testing.assert_allclose(patch.t.numpy(), t, rtol=1e-4, atol=1e-5 * np.abs(t).max())
        assert patch.error_after * d_norm == pytest.approx(err, rel=1e-6)  # the least-squares optimum
        assert patch.error_before * d_norm == pytest.approx(e0, rel=1e-6)
        assert patch.error_after < patch.error_before
    # the folded weights are the reference's, everything else untouched
    state, ref_state = model.state_dict(), ref_pm.model.state_dict()
    changed = set()
    for key, value in state.items():
        torch.testing.assert_close(value, ref_state[key], rtol=1e-5, atol=1e-6)
        if not torch.equal(value, originals[key]):
            changed.add(key)
    names = {"attn": LAYOUT[arch][2], "mlp": LAYOUT[arch][4]}
    blocks = LAYOUT[arch][0]
    expected = set()
    for p in patched:
        b, kind = p.sublayer.split(".")
        expected |= {k for k in state if k.startswith(f"{blocks}.{b}.{names[kind]}.")}
    assert changed == expected and pm.removed == frozenset(expand(removed))


def test_a_ridge_pulls_toward_the_identity():
    ids = tiny_inputs(8, 24, seed=3)
    maps = []
    for ridge in (0.0, 1.0, 1e6):
        pm = PrunableModel(tiny_model("llama"), tiny_tokenizer())
        maps.append(repair_model(pm, ids, ["2.attn"], ridge=ridge, keep_maps=True).patched[0].t)
    eye = torch.eye(64, dtype=torch.float64)
    dist = [float((m - eye).norm()) for m in maps]
    assert dist[0] > dist[1] > dist[2] and dist[2] < 1e-3


def test_runs_and_the_run_at_the_front():
    runs = removal_runs(["0.attn", "1.block", "2.attn", "3.mlp"], 4)
    assert [(r.sublayers, r.patched) for r in runs] == [
        (("0.attn",), None),
        (("1.attn", "1.mlp", "2.attn"), "0.mlp"),
        (("3.mlp",), "3.attn"),
    ]
    pm = PrunableModel(tiny_model("llama"), tiny_tokenizer())
    outcome = repair_model(pm, tiny_inputs(8, 24), ["0.attn", "2.mlp"])
    first, second = outcome.patches
    assert first.sublayer is None and "0.attn" in first.note and second.sublayer == "2.attn"


def test_refusals_are_one_line():
    ids = tiny_inputs(2, 16)  # 32 tokens < hidden size 64
    pm = PrunableModel(tiny_model("llama"), tiny_tokenizer())
    with pytest.raises(FinercutError, match="needs at least 64 tokens") as info:
        repair_model(pm, ids, ["1.attn"], ridge=0.0)
    assert "\n" not in str(info.value) and "--ridge" in str(info.value)
    repair_model(pm, ids, ["1.attn"], ridge=0.1)  # with a ridge it fits
    with pytest.raises(FinercutError, match="nothing is removed"):
        repair_model(pm, ids, [])
    gemma = PrunableModel(tiny_model("gemma2"), tiny_tokenizer())
    with pytest.raises(FinercutError, match="not supported for gemma2"):
        repair_model(gemma, tiny_inputs(8, 24), ["1.attn"])


def test_a_repaired_model_exports_and_reloads_with_the_same_logits(tmp_path):
    pm = PrunableModel(tiny_model("llama"), tiny_tokenizer())
    removed = ["1.mlp", "2.attn"]
    repair_model(pm, tiny_inputs(8, 24, seed=3), removed)
    x = tiny_inputs(2, 16, seed=9)
    with torch.no_grad():
        expected = pm.model(x, use_cache=False).logits
        unrepaired = PrunableModel(tiny_model("llama"))
        unrepaired.set_removed(removed)
        assert not torch.allclose(unrepaired.model(x, use_cache=False).logits, expected)
    export_pruned(pm, tmp_path / "out", removed, source_model="tiny", progress=lambda m: None)
    loaded, _ = load_pruned(tmp_path / "out")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, use_cache=False).logits, expected, rtol=0, atol=2e-5)


def test_a_repaired_block_cut_exports_as_a_plain_checkpoint(tmp_path):
    from transformers import AutoModelForCausalLM

    pm = PrunableModel(tiny_model("qwen2"), tiny_tokenizer())
    repair_model(pm, tiny_inputs(8, 24, seed=3), ["2.block"])
    x = tiny_inputs(2, 16, seed=9)
    with torch.no_grad():
        expected = pm.model(x, use_cache=False).logits
    export_pruned(pm, tmp_path / "out", ["2.block"], source_model="tiny", progress=lambda m: None)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert loaded.config.num_hidden_layers == 3
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, use_cache=False).logits, expected, rtol=0, atol=2e-5)


def test_replaceme_picks_the_closest_run_of_blocks():
    """--method replaceme: the run of 2 blocks whose first input and last output are closest in cosine
    distance at the last token, on the dense model; against plain hooks and the formula."""
    from builders import make_engine

    from finercut_tui.domain.events import SublayerRemoved

    pm = PrunableModel(tiny_model("llama"), tiny_tokenizer())
    ids = tiny_inputs(4, 20)
    states = {}
    blocks = pm.blocks
    hs = [
        blk.register_forward_pre_hook(lambda m, a, b=b: states.__setitem__(b, a[0][:, -1]))
        for b, blk in enumerate(blocks)
    ]
    hs.append(
        blocks[-1].register_forward_hook(
            lambda m, a, o: states.__setitem__(4, (o[0] if isinstance(o, tuple) else o)[:, -1])
        )
    )
    with torch.no_grad():
        pm.model(input_ids=ids, use_cache=False)
    for h in hs:
        h.remove()
    ref = {
        b: float((1 - torch.nn.functional.cosine_similarity(states[b], states[b + 2], dim=-1)).mean())
        for b in range(3)
    }
    engine = make_engine(pm, ids, 2, method="replaceme", block_metric="cosine-gap")
    removed = [e for e in engine.run() if isinstance(e, SublayerRemoved)]
    start = min(ref, key=ref.get)
    assert [e.sublayer for e in removed] == [f"{start}.block", f"{start + 1}.block"]
    assert {u: s for u, s in removed[0].scores.items()} == pytest.approx(
        {f"{b}.block": v for b, v in ref.items()}, rel=1e-5
    )


def _one_run_reference(model, ids, removed, p_point, z_module, d_point, pm):
    """T for one run by lstsq from plain hooks. `p_point` / `d_point`: {name: (module, pre)}, whose
    captured inputs (pre) or outputs summed give P (pruned) and D (dense); `z_module`'s output is z_p.
    Returns (T, the optimal error, ||D||)."""
    got = {}

    def hook(key, pre):
        if pre:
            return lambda m, args: got.__setitem__(key, args[0].detach())
        return lambda m, a, out: got.__setitem__(key, (out[0] if isinstance(out, tuple) else out).detach())

    def run(points):
        handles = [
            m.register_forward_pre_hook(hook(k, True)) if pre else m.register_forward_hook(hook(k, False))
            for k, (m, pre) in points.items()
        ]
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
        for h in handles:
            h.remove()
        return {k: v.reshape(-1, v.shape[-1]).double().numpy() for k, v in got.items()}

    pm.restore_all()
    dense = run(d_point)
    d = sum(dense[k] for k in d_point)
    got.clear()
    pm.set_removed(expand(removed))
    side = run({**p_point, "z": (z_module, False)})
    p = sum(side[k] for k in p_point)
    t = np.linalg.lstsq(side["z"], d - p, rcond=None)[0]
    return t, np.linalg.norm(p + side["z"] @ t - d), np.linalg.norm(d)


def test_parallel_residual_block_cut_matches_the_dense_block_output():
    """GPT-NeoX (parallel residual): the stream before 1.mlp is block 1's input plus its attention's
    output; with block 2 cut, P + z_p is block 1's output, matched to the dense block 2 output."""
    model = tiny_model("gpt_neox")
    pm = PrunableModel(model, tiny_tokenizer())
    ids = tiny_inputs(8, 24, seed=3)
    outcome = repair_model(pm, ids, ["2.block"], ridge=0.0, keep_maps=True)
    (patch,) = outcome.patched
    assert patch.sublayer == "1.mlp"
    ref_model = tiny_model("gpt_neox")
    ref_pm = PrunableModel(ref_model)
    layers = ref_model.gpt_neox.layers
    t, err, d_norm = _one_run_reference(
        ref_model,
        ids,
        ["2.block"],
        {"in": (layers[1], True), "attn": (layers[1].attention.dense, False)},
        layers[1].mlp.dense_4h_to_h,
        {"out": (layers[2], False)},
        ref_pm,
    )
    np.testing.assert_allclose(patch.t.numpy(), t, rtol=1e-4, atol=1e-5 * np.abs(t).max())
    assert patch.error_after * d_norm == pytest.approx(err, rel=1e-5)


def test_a_moe_patch_folds_into_every_expert():
    """Mixtral: the MLP is a sum of routed experts, so T folds into each expert's down projection."""
    model = tiny_model("mixtral")
    pm = PrunableModel(model, tiny_tokenizer())
    ids = tiny_inputs(8, 24, seed=3)
    before = model.model.layers[1].mlp.experts.down_proj.detach().clone()
    outcome = repair_model(pm, ids, ["2.attn"], ridge=0.0, keep_maps=True)
    (patch,) = outcome.patched
    assert patch.sublayer == "1.mlp"
    after = model.model.layers[1].mlp.experts.down_proj.detach()
    folded = (patch.t.T @ before.double()).float()
    torch.testing.assert_close(after, folded, rtol=1e-5, atol=1e-6)
    ref_model = tiny_model("mixtral")
    layers = ref_model.model.layers
    t, err, d_norm = _one_run_reference(
        ref_model,
        ids,
        ["2.attn"],
        {"mid": (layers[1].post_attention_layernorm, True)},
        layers[1].mlp,
        {"mid": (layers[2].post_attention_layernorm, True)},
        PrunableModel(ref_model),
    )
    np.testing.assert_allclose(patch.t.numpy(), t, rtol=1e-4, atol=1e-5 * np.abs(t).max())
    assert patch.error_after * d_norm == pytest.approx(err, rel=1e-5)


def test_the_what_if_repair_gives_every_weight_back():
    from finercut_tui.repair import repaired

    pm = PrunableModel(tiny_model("llama", attention_bias=True), tiny_tokenizer())
    pm.set_removed(["3.mlp"])
    state = {k: v.clone() for k, v in pm.model.state_dict().items()}
    x = tiny_inputs(2, 16, seed=9)
    with repaired(pm, tiny_inputs(8, 24, seed=3), ["1.attn", "2.mlp"]) as outcome:
        assert pm.removed == frozenset({"1.attn", "2.mlp"}) and len(outcome.patched) == 2
        with torch.no_grad():
            inside = pm.model(x, use_cache=False).logits
    assert pm.removed == frozenset({"3.mlp"})
    after = pm.model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], v) for k, v in state.items())
    pm.set_removed(["1.attn", "2.mlp"])
    with torch.no_grad():
        assert not torch.allclose(pm.model(x, use_cache=False).logits, inside)


def test_a_repaired_model_exports_as_nemotron_nas_with_the_same_logits(tmp_path):
    """The engine format (DeciLM / Nemotron-NAS, read with trust_remote_code): patched weights only."""
    from serve_models import REMOVED, serve_model
    from transformers import AutoModelForCausalLM

    from finercut_tui.export.nemotron_nas import export_nemotron_nas

    pm = serve_model("qwen2")  # hidden 128, FFN 256 (the format's rounding), biases
    outcome = repair_model(pm, tiny_inputs(8, 24, seed=3), REMOVED)  # 0.attn: a run with no patch
    assert outcome.patches[0].sublayer is None and [p.sublayer for p in outcome.patched] == [
        "1.attn",
        "5.attn",
    ]
    x = tiny_inputs(2, 16, seed=9)
    with torch.no_grad():
        expected = pm.model(x, use_cache=False).logits
    export_nemotron_nas(pm, tmp_path / "nas", REMOVED, source_model="tiny", progress=lambda m: None)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "nas", trust_remote_code=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, use_cache=False).logits, expected, rtol=0, atol=2e-5)


@pytest.mark.engine
def test_a_repaired_model_exported_as_gguf_gives_the_same_logits_in_llama_cpp(tmp_path):
    """The other engine format: llama.cpp itself reads the patched weights (f32, to 1e-4)."""
    from engines import llama_cpp_logits
    from serve_models import REMOVED, prompt_ids, pruned_logits, serve_model

    from finercut_tui.export.gguf import write_gguf

    pm = serve_model("llama")
    outcome = repair_model(pm, tiny_inputs(8, 24, seed=3), REMOVED)
    assert outcome.patched  # the weights really changed
    ids = prompt_ids()
    expected = pruned_logits(pm, REMOVED, ids)[-1]
    write_gguf(pm, tmp_path / "r.gguf", REMOVED, outtype="f32", source_model="tiny")
    _, got = llama_cpp_logits(tmp_path / "r.gguf", ids)
    assert (torch.tensor(got) - expected).abs().max() < 1e-4
