"""export --format nemotron-nas: a DeciLM folder that transformers (trust_remote_code, without
finercut-tui), vLLM and SGLang read; removed sublayers are absent and only kept attention is cached."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors import safe_open
from serve_models import REMOVED, prompt_ids, pruned_logits, serve_model
from tiny_models import tiny_model
from tiny_tokenizer import tiny_tokenizer

from finercut_tui.domain.sublayers import expand
from finercut_tui.errors import FinercutError
from finercut_tui.export.nemotron_nas import export_nemotron_nas, ffn_mult_for
from finercut_tui.export.remote_code.configuration_finercut_nas import ffn_mult_to_intermediate_size
from finercut_tui.model.surgery import PrunableModel

FAMILIES = ["llama", "qwen2", "llama3"]

# runs with python -I in an empty folder; finercut_tui cannot be imported there
LOAD_SCRIPT = textwrap.dedent(
    """
    import json, sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "finercut_tui":
                raise ImportError("finercut_tui is blocked in this process")
    sys.meta_path.insert(0, Block())
    try:
        import finercut_tui  # noqa
        raise SystemExit("finercut_tui is importable")
    except ImportError:
        pass
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    folder, ids = sys.argv[1], json.loads(sys.argv[2])
    model, info = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, output_loading_info=True)
    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    model.eval()
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = model(x).logits[0]
        out = model.generate(x, max_new_tokens=8, do_sample=False, return_dict_in_generate=True,
                             pad_token_id=0)
    cache = getattr(out, "past_key_values", None) or getattr(out, "cache", None)
    filled = [layer.keys is not None and layer.keys.numel() > 0 for layer in cache.layers]
    print(json.dumps({
        "module": type(model).__module__,
        "missing": sorted(info["missing_keys"]), "unexpected": sorted(info["unexpected_keys"]),
        "logits": logits.tolist(), "generated": out.sequences[0].tolist(),
        "text": tok.decode(out.sequences[0][len(ids):]),
        "cache_layers": len(cache.layers), "cache_filled": sum(filled),
        "cache_len": cache.get_seq_length(),
    }))
    """
)


def export(pm, folder, removed=REMOVED, **kw):
    return export_nemotron_nas(pm, folder, removed, source_model="tiny", progress=lambda _m: None, **kw)


def tensors(folder):
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)


@pytest.mark.parametrize("family", ["qwen2", "llama3"])  # llama3: a Llama with rope scaling
def test_folder_loads_without_finercut_same_logits_text_and_cache(tmp_path, family):
    pm = serve_model(family)
    out = tmp_path / "nas"
    export(pm, out)
    ids = prompt_ids()
    work = tmp_path / "empty"
    work.mkdir()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-I", "-c", LOAD_SCRIPT, str(out), json.dumps(ids)],
        cwd=work,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["module"].endswith("modeling_finercut_nas")
    assert got["missing"] == [] and got["unexpected"] == []

    expected = pruned_logits(pm, REMOVED, ids)
    assert torch.allclose(torch.tensor(got["logits"]), expected, atol=1e-4, rtol=0)

    pm.set_removed(expand(REMOVED))
    with torch.no_grad():
        ref = pm.model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False, pad_token_id=0)[
            0
        ].tolist()
    kept_attention = len(pm.kept_attention_blocks())
    pm.set_removed(())
    assert got["generated"] == ref
    assert got["text"] == pm.tokenizer.decode(ref[len(ids) :])
    # blocks 1, 4 and 5 keep attention (0 and 3 lost it, 2 is gone): 3 cache layers of 6
    assert kept_attention == 3
    assert got["cache_layers"] == kept_attention == got["cache_filled"]
    assert got["cache_len"] == len(ids) + 7


def engine_expected_tensors(config: dict) -> dict[str, tuple]:
    """The tensors vLLM's / SGLang's nemotron_nas code builds from the raw config, with their shapes.

    Written from their DeciLMDecoderLayer: attention (and input_layernorm) only where attention.no_op
    is false, with num_attention_heads // n_heads_in_group KV heads; the MLP (and
    post_attention_layernorm) only where ffn.no_op is false, sized by the ffn_mult rule; q/k/v biases and
    the o_proj bias from attention_bias, MLP biases from mlp_bias.
    """
    H, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or H // heads
    bias = config.get("attention_bias", False) or config.get("bias", False)
    qkv_bias = config.get("qkv_bias", bias)
    out = {"model.embed_tokens.weight": (config["vocab_size"], H), "model.norm.weight": (H,)}
    if not config.get("tie_word_embeddings", False):
        out["lm_head.weight"] = (config["vocab_size"], H)
    assert len(config["block_configs"]) == config["num_hidden_layers"]
    for i, block in enumerate(config["block_configs"]):
        p = f"model.layers.{i}."
        attn, ffn = block["attention"], block["ffn"]
        assert set(attn) == {"no_op", "replace_with_linear", "n_heads_in_group"}
        assert set(ffn) == {"no_op", "replace_with_linear", "ffn_mult"}
        assert attn["replace_with_linear"] is False and ffn["replace_with_linear"] is False
        if not attn["no_op"]:
            kv = heads // attn["n_heads_in_group"]
            out[p + "input_layernorm.weight"] = (H,)
            out[p + "self_attn.q_proj.weight"] = (heads * head_dim, H)
            out[p + "self_attn.k_proj.weight"] = (kv * head_dim, H)
            out[p + "self_attn.v_proj.weight"] = (kv * head_dim, H)
            out[p + "self_attn.o_proj.weight"] = (H, heads * head_dim)
            if qkv_bias:
                out[p + "self_attn.q_proj.bias"] = (heads * head_dim,)
                out[p + "self_attn.k_proj.bias"] = (kv * head_dim,)
                out[p + "self_attn.v_proj.bias"] = (kv * head_dim,)
            if bias:
                out[p + "self_attn.o_proj.bias"] = (H,)
        else:
            assert attn["n_heads_in_group"] is None
        if not ffn["no_op"]:
            inter = int(2 * ffn["ffn_mult"] * H / 3)
            inter = inter if inter % 256 == 0 else inter + 256 - inter % 256
            out[p + "post_attention_layernorm.weight"] = (H,)
            out[p + "mlp.gate_proj.weight"] = (inter, H)
            out[p + "mlp.up_proj.weight"] = (inter, H)
            out[p + "mlp.down_proj.weight"] = (H, inter)
        else:
            assert ffn["ffn_mult"] is None
    return out


@pytest.mark.parametrize("family", [*FAMILIES, "mistral"])
def test_engines_reading_the_raw_config_build_exactly_the_weights(tmp_path, family):
    pm = serve_model(family)
    out = tmp_path / "nas"
    export(pm, out)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["DeciLMForCausalLM"] and config["model_type"] == "nemotron-nas"
    assert config["auto_map"]["AutoConfig"] == "configuration_finercut_nas.DeciLMConfig"
    expected = engine_expected_tensors(config)
    assert tensors(out) == expected  # every tensor built, none left over, shapes equal
    # vLLM's arch-config reader: KV heads from the first kept attention block; SGLang: one GQA group size
    groups = {
        b["attention"]["n_heads_in_group"] for b in config["block_configs"] if not b["attention"]["no_op"]
    }
    assert len(groups) == 1
    assert config["num_attention_heads"] // groups.pop() == pm.config.num_key_value_heads
    # the FFN size every reader derives equals the source's
    for b in config["block_configs"]:
        if not b["ffn"]["no_op"]:
            assert ffn_mult_to_intermediate_size(b["ffn"]["ffn_mult"], config["hidden_size"]) == 256
    # removed sublayers and their norms are absent, not zeroed: 0.attn, 1.mlp, block 2, 3.attn, 5.mlp
    kinds = [
        (
            "self_attn.q_proj.weight" in " ".join(k for k in expected if k.startswith(f"model.layers.{i}.")),
            "mlp.up_proj.weight" in " ".join(k for k in expected if k.startswith(f"model.layers.{i}.")),
        )
        for i in range(config["num_hidden_layers"])
    ]
    assert kinds == [(False, True), (True, False), (False, True), (True, True), (True, False)]
    if family == "qwen2":  # q/k/v biases as attention_bias with a zero o_proj bias
        assert config["attention_bias"] is True
        with safe_open(str(out / "model.safetensors"), "pt") as f:
            assert torch.count_nonzero(f.get_tensor("model.layers.1.self_attn.o_proj.bias")) == 0
    card = (out / "PRUNING.md").read_text()
    assert "vllm serve DIR --trust-remote-code" in card and "trust_remote_code=True" in card


@pytest.mark.parametrize(
    "intermediate,hidden", [(256, 128), (1536, 576), (14336, 4096), (4864, 896), (8192, 2048), (11008, 4096)]
)
def test_ffn_mult_gives_back_the_size_exactly(intermediate, hidden):
    assert ffn_mult_to_intermediate_size(ffn_mult_for(intermediate, hidden), hidden) == intermediate


def test_refusals_are_one_line_and_leave_nothing(tmp_path):
    gemma = PrunableModel(tiny_model("gemma"), tiny_tokenizer())
    out = tmp_path / "out"
    with pytest.raises(FinercutError) as err:
        export(gemma, out, ["1.attn"])
    assert "\n" not in str(err.value) and "--format finercut" in str(err.value)
    assert not out.exists()
    small = PrunableModel(tiny_model("llama"), tiny_tokenizer())  # intermediate_size 128
    with pytest.raises(FinercutError) as err:
        export(small, out, ["1.attn"])
    assert "\n" not in str(err.value) and "ffn_mult" in str(err.value)
    assert not out.exists()
    out.mkdir()
    (out / "keep.txt").write_text("x")
    pm = serve_model("llama")
    with pytest.raises(FinercutError) as err:
        export(pm, out)
    assert "\n" not in str(err.value) and "--force" in str(err.value)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    export(pm, out, force=True)
    assert (out / "model.safetensors").is_file() and pm.removed == frozenset()
