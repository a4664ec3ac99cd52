"""Export round trips for OPT, GPT-2 and Mixtral through the `export` command: the reloaded model's logits
(and greedy tokens) equal the in-memory pruned model's, and no weight of a removed module is written."""

import json

import pytest
import torch
import yaml
from builders import save_tiny_checkpoint
from reference import logits_with_zeroed
from safetensors import safe_open
from tiny_models import tiny_inputs

from finercut_tui import load_pruned
from finercut_tui.cli import main
from finercut_tui.domain.sublayers import expand
from finercut_tui.model.surgery import PrunableModel

TEXT = "tests/data/english.txt"
# written out here, independently of the adapter table: where the blocks are, the modules of each sublayer
MODULES = {
    "opt": (
        "model.decoder.layers",
        {"attn": ["self_attn_layer_norm", "self_attn"], "mlp": ["final_layer_norm", "fc1", "fc2"]},
    ),
    "gpt2": ("transformer.h", {"attn": ["ln_1", "attn"], "mlp": ["ln_2", "mlp"]}),
    "mixtral": (
        "model.layers",
        {"attn": ["input_layernorm", "self_attn"], "mlp": ["post_attention_layernorm", "mlp"]},
    ),
}
SUBLAYERS = ["0.attn", "1.mlp", "2.block", "3.attn"]  # single sublayers: load_pruned
BLOCKS = ["1.block", "3.attn", "3.mlp"]  # whole blocks only: plain transformers


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("export-ckpts")
    return {name: save_tiny_checkpoint(root / name, name) for name in MODULES}


def session_with(path, checkpoint, removed, capsys):
    """A real session from `run`, its steps replaced by `removed` (each step shaped like a real one)."""
    argv = ["run", "--model", str(checkpoint), "--session", str(path), "--quiet", "--device", "cpu"]
    code = main([*argv, *f"--calib {TEXT} --calib-samples 2 --seq-len 16 --target 1".split()])
    assert code == 0, capsys.readouterr().err
    data = yaml.safe_load(path.read_text())
    template = data["steps"][0]
    data["steps"] = [{**template, "removed": sid} for sid in removed]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def saved_tensors(folder):
    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            tensors.update({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118
    return tensors


def removed_prefixes(name, removed):
    blocks, owned = MODULES[name]
    out = []
    for sid in expand(removed):
        b, kind = sid.split(".")
        out += [f"{blocks}.{b}.{module}." for module in owned[kind]]
    return tuple(out)


def original_state(checkpoint):
    """Every tensor of the source model under its module name (tied ones included)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(checkpoint).state_dict()


def in_memory_pruned(checkpoint, removed):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    pm = PrunableModel(model)
    pm.set_removed(expand(removed))
    return pm.model


def greedy(model, x, n=6):
    with torch.no_grad():
        return model.generate(x, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)


def export(capsys, session, k, out):
    code = main(["export", str(session), "--step", str(k), "--out", str(out), "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Traceback" not in captured.err
    return captured.out


def check_same_model(loaded, checkpoint, removed):
    from transformers import AutoModelForCausalLM

    x = tiny_inputs(2, 12)
    reference = in_memory_pruned(checkpoint, removed)
    with torch.no_grad():
        got = loaded(x, use_cache=False).logits
        torch.testing.assert_close(got, reference(x, use_cache=False).logits, atol=1e-5, rtol=0)
    # and the unmodified model with the removed sublayers' outputs zeroed by hooks
    untouched = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    torch.testing.assert_close(got, logits_with_zeroed(untouched, x, expand(removed)), atol=1e-5, rtol=0)
    assert torch.equal(greedy(loaded, x), greedy(reference, x))


@pytest.mark.parametrize("name", list(MODULES))
def test_sublayer_export_round_trips(name, checkpoints, tmp_path, capsys):
    ckpt = checkpoints[name]
    session = session_with(tmp_path / "s.yaml", ckpt, SUBLAYERS, capsys)
    out = tmp_path / "out"
    assert "sublayers format" in export(capsys, session, len(SUBLAYERS), out)

    config = json.loads((out / "config.json").read_text())
    assert sorted(config["finercut"]["removed"]) == sorted(expand(SUBLAYERS))
    original = original_state(ckpt)
    saved = saved_tensors(out)
    prefixes = removed_prefixes(name, SUBLAYERS)
    gone = {k for k in original if k.startswith(prefixes)}
    assert gone and not (set(saved) & gone)  # no tensor of a removed module
    tied = set(config["finercut"].get("tied") or [])
    assert set(saved) | tied == set(original) - gone
    for key, tensor in saved.items():
        assert torch.equal(tensor, original[key]), key

    model, tokenizer = load_pruned(out)
    assert tokenizer is not None
    names = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    assert not any(n.startswith(prefixes) for n in names)  # never allocated in the loaded model
    kept = sum(t.numel() for k, t in original.items() if k not in gone and k not in tied)
    assert sum(p.numel() for p in model.parameters()) == kept
    check_same_model(model.eval(), ckpt, SUBLAYERS)


@pytest.mark.parametrize("name", list(MODULES))
def test_whole_block_export_round_trips_with_plain_transformers(name, checkpoints, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    ckpt = checkpoints[name]
    session = session_with(tmp_path / "s.yaml", ckpt, BLOCKS, capsys)
    out = tmp_path / "out"
    assert "blocks format" in export(capsys, session, len(BLOCKS), out)

    blocks, _ = MODULES[name]
    in_files = {
        int(k[len(blocks) + 1 :].split(".")[0]) for k in saved_tensors(out) if k.startswith(blocks + ".")
    }
    assert in_files == {0, 1}  # blocks 0 and 2 kept and renumbered; nothing of blocks 1 and 3 written

    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert all(not v for v in info.values()), info  # nothing missing, unexpected or mismatched
    assert model.config.num_hidden_layers == 2
    state, original = model.state_dict(), original_state(ckpt)
    renamed = {f"{blocks}.0.": f"{blocks}.0.", f"{blocks}.2.": f"{blocks}.1."}
    want = {}
    for key, tensor in original.items():
        if not key.startswith(blocks + "."):
            want[key] = tensor
        for old, new in renamed.items():
            if key.startswith(old):
                want[new + key[len(old) :]] = tensor
    assert set(state) == set(want)
    for key, tensor in want.items():
        assert torch.equal(state[key], tensor), key
    check_same_model(model.eval(), ckpt, BLOCKS)
