"""Sublayer surgery on every architecture: exact, reversible, zero compute, cache-correct."""

import inspect
import math

import pytest
import torch
from tiny_models import ARCH_NAMES, tiny_inputs, tiny_model

from finercut_tui.domain.sublayers import all_sublayers, expand, parse_id
from finercut_tui.errors import FinercutError
from finercut_tui.model.adapters import architecture_for
from finercut_tui.model.surgery import PrunableModel


def zeroing_hook_logits(model, arch, x, removed):
    """Reference: the unmodified model, with each removed sublayer's *output module* zeroed by a hook."""
    blocks = dict(model.named_modules())[arch.blocks]
    handles = []
    for sid in removed:
        b, kind = sid.split(".")
        group = arch.attn if kind == "attn" else arch.mlp
        last = getattr(blocks[int(b)], group[-1][0])

        def zero(module, inputs, output):
            if isinstance(output, tuple):
                return (output[0] * 0.0,) + output[1:]
            return output * 0.0

        handles.append(last.register_forward_hook(zero))
    try:
        with torch.no_grad():
            return model(x, use_cache=False).logits
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("name", ARCH_NAMES)
def test_single_removals_match_zeroing_reference_and_restore_exactly(name):
    model = tiny_model(name)
    x = tiny_inputs()
    with torch.no_grad():
        original = model(x, use_cache=False).logits.clone()
    arch = architecture_for(model.config)
    pm = PrunableModel(model)
    with torch.no_grad():
        assert torch.equal(model(x, use_cache=False).logits, original)  # wrapping changes nothing
    reference_model = tiny_model(name)  # an untouched copy with the same weights
    for sid in all_sublayers(pm.num_blocks):
        pm.set_removed([sid])
        with torch.no_grad():
            pruned = model(x, use_cache=False).logits
        expected = zeroing_hook_logits(reference_model, arch, x, [sid])
        torch.testing.assert_close(pruned, expected, atol=1e-5, rtol=0)
        assert not torch.allclose(pruned, original, atol=1e-4), f"removing {sid} changed nothing"
        pm.restore_all()
        with torch.no_grad():
            assert torch.equal(model(x, use_cache=False).logits, original)


@pytest.mark.parametrize("name", ["llama", "gemma2", "gpt_neox", "opt"])
def test_sets_of_removals_match_reference(name):
    model, reference_model = tiny_model(name), tiny_model(name)
    pm = PrunableModel(model)
    x = tiny_inputs()
    removed = ["0.attn", "1.mlp", "2.attn", "2.mlp", "3.attn"]
    pm.set_removed(removed)
    with torch.no_grad():
        pruned = model(x, use_cache=False).logits
    expected = zeroing_hook_logits(reference_model, architecture_for(model.config), x, removed)
    torch.testing.assert_close(pruned, expected, atol=1e-5, rtol=0)


def _rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def hand_llama_logits(model, x, removed):
    """A Llama forward written out from the weights: RMSNorm, RoPE, GQA causal attention, SwiGLU."""
    c = model.config
    h = model.model.embed_tokens.weight[x]
    t, hd = x.shape[1], c.hidden_size // c.num_attention_heads
    theta = c.rope_parameters["rope_theta"]
    inv = 1.0 / theta ** (torch.arange(0, hd, 2).float() / hd)
    ang = torch.outer(torch.arange(t).float(), inv)
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()

    def rope(q):
        q1, q2 = q[..., : hd // 2], q[..., hd // 2 :]
        return q * cos + torch.cat([-q2, q1], -1) * sin

    mask = torch.full((t, t), -math.inf).triu(1)
    for b, layer in enumerate(model.model.layers):
        if f"{b}.attn" not in removed:
            a = layer.self_attn
            z = _rms(h, layer.input_layernorm.weight, c.rms_norm_eps)
            q = (z @ a.q_proj.weight.T).view(*x.shape, c.num_attention_heads, hd).transpose(1, 2)
            k = (z @ a.k_proj.weight.T).view(*x.shape, c.num_key_value_heads, hd).transpose(1, 2)
            v = (z @ a.v_proj.weight.T).view(*x.shape, c.num_key_value_heads, hd).transpose(1, 2)
            rep = c.num_attention_heads // c.num_key_value_heads
            k, v = rope(k).repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
            att = torch.softmax(rope(q) @ k.transpose(-1, -2) / math.sqrt(hd) + mask, -1)
            h = h + (att @ v).transpose(1, 2).reshape(*x.shape, -1) @ a.o_proj.weight.T
        if f"{b}.mlp" not in removed:
            m = layer.mlp
            z = _rms(h, layer.post_attention_layernorm.weight, c.rms_norm_eps)
            h = (
                h
                + (torch.nn.functional.silu(z @ m.gate_proj.weight.T) * (z @ m.up_proj.weight.T))
                @ m.down_proj.weight.T
            )
    return _rms(h, model.model.norm.weight, c.rms_norm_eps) @ model.lm_head.weight.T


def test_llama_matches_hand_written_forward():
    model = tiny_model("llama")
    reference = tiny_model("llama")
    pm = PrunableModel(model)
    x = tiny_inputs()
    for removed in [[], ["0.attn"], ["3.mlp"], ["1.attn", "2.mlp"], all_sublayers(4)]:
        pm.set_removed(removed)
        with torch.no_grad():
            got = model(x, use_cache=False).logits
            want = hand_llama_logits(reference, x, set(removed))
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ARCH_NAMES)
def test_removing_everything_runs_and_is_finite(name):
    model = tiny_model(name)
    pm = PrunableModel(model)
    pm.set_removed(pm.sublayers)
    with torch.no_grad():
        logits = model(tiny_inputs(), use_cache=False).logits
    assert torch.isfinite(logits).all()
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in tiny_model(name).parameters())


@pytest.mark.parametrize("name", ["llama", "gemma2", "gpt_neox", "opt", "mixtral"])
def test_removed_modules_run_no_compute(name):
    model = tiny_model(name)
    pm = PrunableModel(model)
    removed = ["1.attn", "2.mlp"]
    calls = {sid: 0 for sid in pm.sublayers}
    for sid in pm.sublayers:
        for module in pm.original_modules(sid).values():
            for sub in module.modules():  # every linear / norm inside counts
                sub.register_forward_hook(lambda *a, sid=sid: calls.__setitem__(sid, calls[sid] + 1))
    pm.set_removed(removed)
    with torch.no_grad():
        model(tiny_inputs(), use_cache=False)
    assert all(calls[sid] == 0 for sid in removed), calls
    assert all(calls[sid] > 0 for sid in pm.sublayers if sid not in removed), calls


def greedy_without_cache(model, x, n):
    for _ in range(n):
        with torch.no_grad():
            nxt = model(x, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        x = torch.cat([x, nxt], 1)
    return x


REMOVAL_SETS = [
    (),
    ("0.attn",),
    ("3.attn",),
    ("0.attn", "1.mlp", "3.attn"),
    ("0.attn", "1.attn", "2.attn"),
    ("0.attn", "1.attn", "2.attn", "3.attn"),
]


@pytest.mark.parametrize("name", ARCH_NAMES)
def test_generate_with_cache_equals_greedy_without_cache(name):
    model = tiny_model(name)
    pm = PrunableModel(model)
    x = tiny_inputs(2, 5)
    for removed in REMOVAL_SETS:
        pm.set_removed(removed)
        with torch.no_grad():
            out = model.generate(x, max_new_tokens=10, do_sample=False, pad_token_id=0, eos_token_id=None)
        assert torch.equal(out, greedy_without_cache(model, x, 10)), f"{name} with {removed} removed"


def test_cache_holds_only_kept_attention_layers():
    model = tiny_model("gemma2")
    pm = PrunableModel(model)
    pm.set_removed(["0.attn", "3.attn", "1.mlp"])
    cache = pm.make_cache()
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    with torch.no_grad():
        model(tiny_inputs(1, 5), use_cache=True, **{cache_kw: cache})
    assert len(cache.layers) == 2  # blocks 1 and 2 keep attention
    assert [type(layer).__name__ for layer in cache.layers] == ["DynamicLayer", "DynamicSlidingWindowLayer"]
    assert cache.get_seq_length() == 5


def test_ids_parse_and_validate():
    assert parse_id("07.attn", 30) == "7.attn"
    assert parse_id(" 3.mlp", 4) == "3.mlp"
    assert parse_id("2.block", 4, allow_block=True) == "2.block"
    assert expand(["1.block", "1.attn", "0.mlp"]) == ["1.attn", "1.mlp", "0.mlp"]
    with pytest.raises(FinercutError, match=r"out of range: this model has blocks 0..3"):
        parse_id("4.attn", 4)
    with pytest.raises(FinercutError, match=r"bad sublayer id 'x.attn'"):
        parse_id("x.attn", 4)
    with pytest.raises(FinercutError, match="bad sublayer id"):
        parse_id("2.block", 4)
    with pytest.raises(FinercutError, match="bad sublayer id"):
        parse_id("2.ffn", 4)


def test_unsupported_architecture_is_named_with_the_supported_list():
    from transformers import BertConfig

    with pytest.raises(
        FinercutError, match=r"unsupported architecture .*supported model types: .*gemma2.*llama"
    ):
        architecture_for(BertConfig())
