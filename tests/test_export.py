"""Export: removed modules are physically absent; whole blocks give a plain transformers checkpoint,
single sublayers a folder that `finercut_tui.load_pruned` rebuilds with the same logits and cache."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from builders import save_tiny_checkpoint, session_from
from safetensors import safe_open
from tiny_models import tiny_inputs, tiny_model
from tiny_tokenizer import tiny_tokenizer

from finercut_tui import load_pruned
from finercut_tui.cli import main
from finercut_tui.domain.steps import resolve_step
from finercut_tui.domain.sublayers import expand
from finercut_tui.errors import FinercutError
from finercut_tui.export.folder import export_pruned
from finercut_tui.model.surgery import PrunableModel
from finercut_tui.session import Step

ARCH_CLASS = {
    "llama": "LlamaForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gpt_neox": "GPTNeoXForCausalLM",
    "gpt2": "GPT2LMHeadModel",
}
# written out here, independently of the adapter table: the modules each sublayer owns
MODULES = {
    "llama": (
        "model.layers",
        {"attn": ["input_layernorm", "self_attn"], "mlp": ["post_attention_layernorm", "mlp"]},
    ),
    "gemma2": (
        "model.layers",
        {
            "attn": ["input_layernorm", "self_attn", "post_attention_layernorm"],
            "mlp": ["pre_feedforward_layernorm", "mlp", "post_feedforward_layernorm"],
        },
    ),
    "gpt_neox": (
        "gpt_neox.layers",
        {"attn": ["input_layernorm", "attention"], "mlp": ["post_attention_layernorm", "mlp"]},
    ),
}


def make_checkpoint(folder, name="llama"):
    return save_tiny_checkpoint(folder, name)


def write_session(path, model_path, name="llama", removed=("1.attn", "2.block", "3.mlp"), **fields):
    model = {
        "name_or_path": str(model_path),
        "architecture": ARCH_CLASS[name],
        "num_blocks": 4,
        "dtype": "float32",
    }
    model.update(fields.pop("model", {}))
    session_from(
        model=model,
        calibration={"source": "english.txt", "fingerprint": "sha256:abc"},
        method={"name": "finercut", "metric": "js", "target": 2, "target_spec": "0.25"},
        steps=[Step(sid, score=0.01 * i) for i, sid in enumerate(removed)],
        **fields,
    ).save(path)
    return path


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("finercut-tui: error:")]
    assert len(lines) == 1, err
    return lines[0]


def pruned_reference(name, removed):
    """An untouched tiny model with `removed` taken out in memory: what every export must reproduce."""
    pm = PrunableModel(tiny_model(name))
    pm.set_removed(expand(removed))
    return pm.model


def greedy(model, x, n=8):
    with torch.no_grad():
        return model.generate(x, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)


# -- 1. whole blocks: a standard checkpoint plain transformers loads ----------------------------------
PLAIN_LOADER = textwrap.dedent(
    """
    import json, sys, torch
    from transformers import AutoModelForCausalLM
    x = torch.tensor(json.loads(sys.argv[1]))
    results = {}
    for folder in sys.argv[3:]:
        model, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
        model.eval()
        with torch.no_grad():
            logits = model(x, use_cache=False).logits
            tokens = model.generate(x, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
        results[folder] = {
            "logits": logits, "tokens": tokens, "info": {k: list(v) for k, v in info.items()},
            "layers": model.config.num_hidden_layers, "layer_types": getattr(model.config, "layer_types", None),
            "layer_idx": [m.layer_idx for m in model.modules() if hasattr(m, "layer_idx")],
        }
    assert not any(m.startswith("finercut") for m in sys.modules), "project code was imported"
    torch.save(results, sys.argv[2])
    """
)


def test_whole_blocks_export_loads_with_plain_transformers_in_a_clean_process(tmp_path, capsys):
    cases = {  # name: removals that add up to whole blocks only
        "gemma2": ["1.block"],  # kept blocks 0, 2, 3: layer_types sliding, sliding, full
        "gpt_neox": ["0.attn", "2.block", "0.mlp"],  # pairs of single removals make whole blocks too
    }
    outs = {}
    for name, removed in cases.items():
        ckpt = make_checkpoint(tmp_path / f"{name}-ckpt", name)
        session = write_session(tmp_path / f"{name}.yaml", ckpt, name, removed)
        outs[name] = tmp_path / f"{name}-out"
        code, out, err = run_cli(
            capsys, "export", session, "--step", len(removed), "--out", outs[name], "--device", "cpu"
        )
        assert code == 0, err
        assert "blocks format" in out and "AutoModelForCausalLM.from_pretrained" in out
    x = tiny_inputs(2, 12)
    result_file = tmp_path / "plain.pt"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            PLAIN_LOADER,
            json.dumps(x.tolist()),
            str(result_file),
            *map(str, outs.values()),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = torch.load(result_file)
    for name, removed in cases.items():
        got = results[str(outs[name])]
        assert all(not v for v in got["info"].values()), got["info"]  # no missing / unexpected / mismatched
        assert got["layers"] == 4 - len({sid.split(".")[0] for sid in removed})
        assert sorted(got["layer_idx"]) == list(range(got["layers"]))
        reference = pruned_reference(name, removed)
        with torch.no_grad():
            want = reference(x, use_cache=False).logits
        torch.testing.assert_close(got["logits"], want, atol=1e-5, rtol=0)
        assert torch.equal(got["tokens"], greedy(reference, x)), name
    assert results[str(outs["gemma2"])]["layer_types"] == [
        "sliding_attention",
        "sliding_attention",
        "full_attention",
    ]
    config = json.loads((outs["gemma2"] / "config.json").read_text())
    assert config["finercut"]["dropped_blocks"] == [1] and config["finercut"]["removed"] == [
        "1.attn",
        "1.mlp",
    ]
    assert (outs["gemma2"] / "tokenizer.json").is_file() and (
        outs["gemma2"] / "generation_config.json"
    ).is_file()


# -- 2. single sublayers: load_pruned rebuilds the same model ----------------------------------------
MIXED = ["0.attn", "1.mlp", "2.block", "3.attn"]


def removed_prefixes(name, removed):
    blocks, owned = MODULES[name]
    out = []
    for sid in expand(removed):
        b, kind = sid.split(".")
        out += [f"{blocks}.{b}.{module}." for module in owned[kind]]
    return out


def saved_tensors(folder):
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        names = f.keys()
        return {k: f.get_tensor(k) for k in names}


@pytest.mark.parametrize("name", ["llama", "gemma2", "gpt_neox"])
def test_sublayer_export_round_trips_through_load_pruned(name, tmp_path):
    original = tiny_model(name)
    original_state = {k: v.clone() for k, v in original.state_dict().items()}
    params_before = sum(p.numel() for p in original.parameters())
    pm = PrunableModel(original, tiny_tokenizer())
    removed_params = sum(pm.sublayer_parameters(sid) for sid in expand(MIXED))
    result = export_pruned(pm, tmp_path / "out", MIXED, source_model="tiny", progress=lambda m: None)
    assert result.format == "sublayers" and pm.removed == frozenset()  # the live model is left as it was

    # the files: no tensor of a removed module, every kept tensor with its value
    prefixes = removed_prefixes(name, MIXED)
    saved = saved_tensors(tmp_path / "out")
    assert not [k for k in saved if k.startswith(tuple(prefixes))]
    kept = {k for k in original_state if not k.startswith(tuple(prefixes))}
    tied = json.loads((tmp_path / "out" / "config.json").read_text())["finercut"]["tied"]
    assert set(saved) | set(tied) == kept and not set(saved) & set(tied)
    for key, tensor in saved.items():
        assert torch.equal(tensor, original_state[key]), key

    model, tokenizer = load_pruned(tmp_path / "out")
    assert tokenizer is not None and tokenizer("hi").input_ids == tiny_tokenizer()("hi").input_ids
    params_after = sum(p.numel() for p in model.parameters())
    removed_numel = sum(v.numel() for k, v in original_state.items() if k.startswith(tuple(prefixes)))
    assert params_after == params_before - removed_params == params_before - removed_numel
    assert result.params_before == params_before and result.params_after == params_after

    reference = pruned_reference(name, MIXED)
    x = tiny_inputs(2, 12)
    with torch.no_grad():
        torch.testing.assert_close(
            model(x, use_cache=False).logits, reference(x, use_cache=False).logits, atol=1e-5, rtol=0
        )
    assert torch.equal(greedy(model, x), greedy(reference, x))


# -- 3. the KV cache of a loaded model holds only the kept attention layers --------------------------
def test_loaded_model_caches_only_kept_attention(tmp_path):
    pm = PrunableModel(tiny_model("llama"))
    removed = ["0.attn", "2.attn", "1.mlp"]  # attention removed in k=2 of L=4 blocks
    export_pruned(pm, tmp_path / "out", removed, source_model="tiny", max_shard_size="100KB", progress=print)
    assert len(list((tmp_path / "out").glob("model-0000*-of-0000*.safetensors"))) > 1  # sharded + index
    model, _ = load_pruned(tmp_path / "out")
    batch, prompt, new = 2, 7, 5
    x = tiny_inputs(batch, prompt)
    with torch.no_grad():
        out = model.generate(
            x,
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            pad_token_id=0,
            return_dict_in_generate=True,
        )
    cache = out["cache"] if "cache" in out else out["past_key_values"]
    assert len(cache.layers) == 4 - 2
    seq = prompt + new - 1  # the last token is sampled, never fed back
    kv_heads, head_dim, itemsize = 2, 64 // 4, 4
    nbytes = sum(t.nbytes for layer in cache.layers for t in (layer.keys, layer.values))
    assert nbytes == (4 - 2) * 2 * batch * kv_heads * seq * head_dim * itemsize
    assert torch.equal(out.sequences, greedy(pruned_reference("llama", removed), x, new))


# -- the export command: model card, config section, ratio ------------------------------------------
def test_export_command_writes_card_and_removal_list(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "ckpt")
    evals = [
        {
            "step": 0,
            "results": {"ppl:english": 31.5},
            "retained": {"ppl:english": 100.0},
            "retained_average": 100.0,
        },
        {
            "step": 2,
            "results": {"ppl:english": 40.25},
            "retained": {"ppl:english": 78.26},
            "retained_average": 78.26,
        },
    ]
    session = write_session(tmp_path / "s.yaml", ckpt, evals=evals)
    code, out, err = run_cli(
        capsys, "export", session, "--ratio", "0.3", "--out", tmp_path / "out", "--device", "cpu"
    )
    assert code == 0, err
    # 0.3 of 8 sublayers = 2.4: step 1 removes 1, step 2 (a whole block) brings it to 3
    assert "step 2 of 3" in out and "sublayers format" in out
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["finercut"]["removed"] == ["1.attn", "2.attn", "2.mlp"]
    assert config["finercut"]["source_model"] == str(ckpt) and config["finercut"]["session"] == str(session)
    assert config["num_hidden_layers"] == 4
    card = (tmp_path / "out" / "PRUNING.md").read_text()
    pm = PrunableModel(tiny_model("llama"))
    before = sum(p.numel() for p in pm.model.parameters())
    after = before - sum(pm.sublayer_parameters(s) for s in ["1.attn", "2.attn", "2.mlp"])
    for expected in [
        f"`{ckpt}`",
        "step 2 of 3",
        "name=finercut, target=2, target_spec=0.25, metric=js",
        "| attention sublayers | 2 | 4 |",
        "| MLP sublayers | 1 | 4 |",
        "| whole blocks (both sublayers) | 1 | 4 |",
        "In removal order: 1.attn, 2.block",
        f"- before: {before:,}",
        f"- after: {after:,}",
        "- step 0: ppl:english 31.5 (100.0%); retained 100.0%",
        "- step 2: ppl:english 40.25 (78.3%); retained 78.3%",
        "finercut_tui.load_pruned(DIR)",
    ]:
        assert expected in card, expected
    model, tokenizer = load_pruned(tmp_path / "out")
    assert sum(p.numel() for p in model.parameters()) == after
    assert model.generation_config.pad_token_id == 0


def test_ratio_picks_the_shortest_prefix():
    session = session_from(
        model={"num_blocks": 4},
        calibration={},
        method={},
        steps=[Step("1.attn"), Step("2.block"), Step("3.mlp")],
    )
    # cumulative sublayers removed: 1, 3, 4 of 8
    assert [resolve_step(session, ratio=r) for r in (0.1, 0.125, 0.13, 0.375, 0.4, 0.5)] == [1, 1, 2, 2, 3, 3]
    with pytest.raises(FinercutError, match=r"not reached: the session removes 4 of 8 sublayers"):
        resolve_step(session, ratio=0.6)


# -- 5. bad inputs: one line, no traceback ------------------------------------------------------------
def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "ckpt")
    session = write_session(tmp_path / "s.yaml", ckpt)
    out = tmp_path / "out"
    for argv, message in [
        (["--step", "4"], "--step 4 is out of range: this session has steps 1..3"),
        (["--step", "0"], "--step 0 is out of range: this session has steps 1..3"),
        (["--ratio", "0"], "--ratio 0.0 must be between 0 and 1"),
        (["--ratio", "1"], "--ratio 1.0 must be between 0 and 1"),
        (["--ratio", "1.5"], "--ratio 1.5 must be between 0 and 1"),
        (["--ratio", "0.9"], "--ratio 0.9 is not reached"),
    ]:
        code, _, err = run_cli(capsys, "export", session, *argv, "--out", out)
        assert code == 2 and message in error_line(err), err
    assert not out.exists()

    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, err = run_cli(capsys, "export", session, "--step", "1", "--out", out)
    assert code == 2 and f"output folder {out} is not empty" in error_line(err) and "--force" in err
    (out / "model-00001-of-00002.safetensors").write_text("stale shard of an older export")
    code, _, err = run_cli(
        capsys, "export", session, "--step", "1", "--out", out, "--force", "--device", "cpu"
    )
    assert code == 0, err
    assert (out / "notes.txt").read_text() == "mine" and not (
        out / "model-00001-of-00002.safetensors"
    ).exists()
    model, _ = load_pruned(out)
    assert json.loads((out / "config.json").read_text())["finercut"]["removed"] == ["1.attn"]

    for name, fields in [
        ("blocks", {"model": {"num_blocks": 6}}),
        ("arch", {"model": {"architecture": "GPT2LMHeadModel"}}),
    ]:
        other = write_session(tmp_path / f"{name}.yaml", ckpt, **fields)
        code, _, err = run_cli(
            capsys, "export", other, "--step", "1", "--out", tmp_path / name, "--device", "cpu"
        )
        assert code == 2 and "was recorded on" in error_line(err) and "not on this model" in err
        assert not (tmp_path / name).exists()

    code, _, err = run_cli(
        capsys, "export", session, "--step", "1", "--out", ckpt, "--force", "--device", "cpu"
    )
    assert code == 2 and "is the source model's folder" in error_line(err)
    code, _, err = run_cli(
        capsys, "export", tmp_path / "missing.yaml", "--step", "1", "--out", tmp_path / "x"
    )
    assert code == 2 and "session file not found" in error_line(err)
    with pytest.raises(FinercutError, match="not a model folder"):
        load_pruned(tmp_path / "nowhere")
