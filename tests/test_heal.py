"""heal: LoRA on the kept sublayers of a pruned tiny model, merged, exported, resumable, recorded.

Two architectures: a Llama with a whole block removed (the export is a plain transformers checkpoint)
and a GPT-2 (Conv1D linears) with single sublayers removed (the export loads with `load_pruned`).
"""

import json

import pytest
import torch
from builders import save_tiny_checkpoint, session_from
from tiny_models import tiny_inputs, tiny_model
from tiny_tokenizer import tiny_tokenizer

from finercut_tui import load_pruned
from finercut_tui.cli import main
from finercut_tui.domain.records import HealRecord
from finercut_tui.domain.sublayers import expand
from finercut_tui.errors import FinercutError
from finercut_tui.export.folder import export_pruned
from finercut_tui.heal.data import IGNORE_INDEX, alpaca_prompt, load_records, tokenize
from finercut_tui.heal.train import (
    HealConfig,
    attach_lora,
    lora_targets,
    merge,
    train_lora,
    trainable_state,
)
from finercut_tui.model.checkpoint import count_parameters
from finercut_tui.model.surgery import PrunableModel
from finercut_tui.session import Session, Step

CASES = {  # arch: (removed, export format)
    "llama": (["1.block"], "blocks"),
    "gpt2": (["1.attn", "2.mlp"], "sublayers"),
}
ARCH_CLASS = {"llama": "LlamaForCausalLM", "gpt2": "GPT2LMHeadModel"}

RECORDS = [
    {"instruction": "Say hi.", "input": "", "output": "hi hi hi"},
    {"instruction": "Repeat.", "input": "abc", "output": "abc abc"},
    {"instruction": "Count.", "input": "", "output": "1 2 3 4"},
    {"instruction": "Spell.", "input": "cat", "output": "c a t"},
    {"instruction": "Echo.", "input": "xyz", "output": "xyz"},
    {"instruction": "Say bye.", "input": "", "output": "bye bye"},
]
TEXT = "the cat sat on the mat. the dog sat on the log. " * 12


@pytest.fixture
def alpaca_file(tmp_path):
    path = tmp_path / "alpaca.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS), encoding="utf-8")
    return path


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def pruned(arch):
    pm = PrunableModel(tiny_model(arch), tiny_tokenizer())
    pm.set_removed(expand(CASES[arch][0]))
    return pm


def heal_in_memory(pm, data, config, **kwargs):
    peft_model = attach_lora(pm, config, lora_targets(pm))
    return peft_model, train_lora(peft_model, data, config, **kwargs)


def snapshot(pm, sid):
    """The weights of a sublayer's own modules (also when it is removed and out of the model)."""
    return {
        f"{name}.{key}": tensor.clone()
        for name, module in pm.original_modules(sid).items()
        for key, tensor in module.state_dict().items()
    }


def logits(model, x):
    with torch.no_grad():
        return model(x, use_cache=False).logits


# -- data -------------------------------------------------------------------------------------------
def test_alpaca_examples_have_loss_on_the_response_only(alpaca_file):
    tok = tiny_tokenizer()
    data = tokenize(load_records(str(alpaca_file)), tok, seq_len=512)
    assert data.kind == "alpaca" and len(data.examples) == len(RECORDS)
    ids, labels = data.examples[1]
    prompt = tok(alpaca_prompt("Repeat.", "abc"), add_special_tokens=True)["input_ids"]
    assert "### Input:\nabc" in alpaca_prompt("Repeat.", "abc")
    assert labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    assert ids[len(prompt) :] == labels[len(prompt) :]
    assert tok.decode(ids[len(prompt) : -1]) == "abc abc" and ids[-1] == tok.eos_token_id
    again = tokenize(load_records(str(alpaca_file)), tok, seq_len=512)
    assert again.fingerprint == data.fingerprint and data.fingerprint.startswith("sha256:")


# -- 1. training, merge, export ---------------------------------------------------------------------
@pytest.mark.parametrize("arch", list(CASES))
def test_heal_lowers_the_loss_and_the_merged_export_gives_the_same_logits(arch, text_file, tmp_path):
    removed, fmt = CASES[arch]
    pm = pruned(arch)
    untouched = {sid: snapshot(pm, sid) for sid in expand(removed)}
    params_pruned = count_parameters(pm.model)
    targets = lora_targets(pm)
    gone = {f"{b}.{kind}" for b, kind in (s.split(".") for s in expand(removed))}
    # no adapter on a removed sublayer: its modules are not in the model
    assert not any(f".{s.split('.')[0]}.{s.split('.')[1]}." in t for s in gone for t in targets)
    data = tokenize(load_records(str(text_file)), pm.tokenizer, seq_len=48)
    config = HealConfig(steps=24, lr=5e-3, batch_size=4, seq_len=48, lora_dropout=0.0, warmup_steps=0)
    peft_model, outcome = heal_in_memory(pm, data, config)
    first, last = sum(outcome.losses[:4]) / 4, sum(outcome.losses[-4:]) / 4
    assert last < 0.8 * first, outcome.losses
    merge(peft_model, pm)
    # the removed sublayers are untouched and still absent; the merged model has no extra parameters
    assert count_parameters(pm.model) == params_pruned
    for sid, state in untouched.items():
        after = snapshot(pm, sid)
        assert after.keys() == state.keys() and all(torch.equal(after[k], v) for k, v in state.items())
    x = tiny_inputs(2, 16)
    healed = logits(pm.model, x)

    result = export_pruned(pm, tmp_path / "out", removed, source_model=arch, progress=lambda m: None)
    assert result.format == fmt
    if fmt == "blocks":
        from transformers import AutoModelForCausalLM

        loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
        assert loaded.config.num_hidden_layers == 3
    else:
        loaded, _ = load_pruned(tmp_path / "out")
        keys = set(loaded.state_dict())
        assert not any(k.startswith(("transformer.h.1.attn.", "transformer.h.2.mlp.")) for k in keys)
    assert count_parameters(loaded) == params_pruned < count_parameters(tiny_model(arch))
    torch.testing.assert_close(logits(loaded, x), healed, rtol=0, atol=2e-5)


# -- 2. resume after a kill -------------------------------------------------------------------------
class Killed(Exception):
    pass


def test_a_killed_heal_resumes_to_the_same_weights(alpaca_file, tmp_path):
    arch = "gpt2"  # dropout in the model and in LoRA: the RNG state must be restored too
    data = tokenize(load_records(str(alpaca_file)), tiny_tokenizer(), seq_len=256)
    config = HealConfig(steps=6, lr=1e-3, batch_size=2, grad_accum=2, lora_dropout=0.1, save_every=2)
    plan = {"data": data.fingerprint}

    pm = pruned(arch)
    whole, outcome = heal_in_memory(pm, data, config, checkpoint_dir=tmp_path / "a", plan=plan)
    reference = trainable_state(whole)

    def kill(step):
        if step == 4:
            raise Killed

    pm = pruned(arch)
    with pytest.raises(Killed):
        heal_in_memory(pm, data, config, checkpoint_dir=tmp_path / "b", plan=plan, on_checkpoint=kill)
    pm = pruned(arch)
    resumed, again = heal_in_memory(pm, data, config, checkpoint_dir=tmp_path / "b", plan=plan, resume=True)
    assert again.resumed_from == 4 and again.losses == outcome.losses
    state = trainable_state(resumed)
    assert state.keys() == reference.keys()
    assert all(torch.equal(state[k], reference[k]) for k in reference)

    pm = pruned(arch)
    with pytest.raises(FinercutError, match="other settings"):
        heal_in_memory(pm, data, config, checkpoint_dir=tmp_path / "b", plan={"data": "x"}, resume=True)


# -- 3. the command: session record, evaluations, card ----------------------------------------------
def write_session(path, model_path, arch="llama", removed=("1.block", "3.attn")):
    session_from(
        model={
            "name_or_path": str(model_path),
            "architecture": ARCH_CLASS[arch],
            "num_blocks": 4,
            "dtype": "float32",
        },
        calibration={"source": "english.txt", "fingerprint": "sha256:abc"},
        method={"name": "finercut", "metric": "js", "target": 2, "target_spec": "2"},
        steps=[Step(sid, score=0.01 * i) for i, sid in enumerate(removed)],
        command="finercut-tui run --model x --session s.yaml",
    ).save(path)
    return path


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


def test_heal_command_records_the_heal_and_both_evaluations(tmp_path, alpaca_file, text_file, capsys):
    model = save_tiny_checkpoint(tmp_path / "model", "llama")
    session_path = write_session(tmp_path / "s.yaml", model)
    out = tmp_path / "healed"
    common = ["--data", alpaca_file, "--steps", "4", "--lr", "5e-3", "--batch-size", "2", "--quiet"]
    evals = ["--ppl", text_file, "--ppl-seq-len", "32", "--ppl-max-tokens", "128"]
    code, stdout, err = run_cli(capsys, "heal", session_path, "--step", "1", "--out", out, *common, *evals)
    assert code == 0, err
    assert "healed step 1" in stdout and "before:" in stdout and "after:" in stdout

    session = Session.load(session_path)
    assert [e.step for e in session.evals] == [0]  # the unpruned baseline, shared with `eval`
    (heal,) = session.heals
    assert heal.step == 1 and heal.steps == 4 and heal.out == str(out)
    assert heal.data["format"] == "alpaca" and heal.data["fingerprint"].startswith("sha256:")
    assert heal.lora["rank"] == 8 and heal.training["lr"] == 5e-3 and heal.seconds > 0
    assert heal.first_loss > 0 and heal.final_loss > 0
    name = f"ppl:{text_file}"
    for record in (heal.before, heal.after):
        assert record.step == 1 and record.what == session.evals[0].what
        assert record.retained[name] == pytest.approx(
            100 * session.evals[0].results[name] / record.results[name]
        )
    assert heal.before.results != heal.after.results
    text = session_path.read_text()
    assert Session.load(session_path).dumps() == text  # round-trips
    assert HealRecord.from_dict(heal.to_dict()) == heal

    # the export: plain transformers (whole block), the adapter alone, the card and config say so
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert loaded.config.num_hidden_layers == 3
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert not (out / "heal-checkpoint").exists()
    card = (out / "PRUNING.md").read_text()
    assert "## Healing" in card and "before healing" in card and "after healing" in card
    assert json.loads((out / "config.json").read_text())["finercut"]["healed"]["steps"] == 4

    # show puts the healed results beside the unhealed ones
    code, shown, _ = run_cli(capsys, "show", session_path)
    assert code == 0 and "heals" in shown and " -> " in shown
    line = next(x for x in shown.splitlines() if x.strip().startswith("1 ") and "r8" in x)
    assert f"{heal.before.retained_average:.1f}% -> {heal.after.retained_average:.1f}%" in line
    code, md, _ = run_cli(capsys, "show", session_path, "--format", "markdown")
    assert "| heal at step |" in md


def test_heal_errors_are_one_line(tmp_path, capsys, alpaca_file):
    model = save_tiny_checkpoint(tmp_path / "model", "llama")
    session_path = write_session(tmp_path / "s.yaml", model)

    def error(*argv):
        code, _, err = run_cli(capsys, "heal", session_path, "--out", tmp_path / "o", *argv)
        lines = [x for x in err.splitlines() if x.startswith("finercut-tui: error:")]
        assert code != 0 and len(lines) == 1, err
        return lines[0]

    assert "data file not found" in error("--step", "1", "--data", tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a"}\n', encoding="utf-8")
    assert "no usable records" in error("--step", "1", "--data", bad)
    assert "removes nothing" in error("--step", "0", "--data", alpaca_file)
    (tmp_path / "o").mkdir()
    assert "--resume" in error("--step", "1", "--data", alpaca_file, "--resume")


def test_out_of_memory_names_the_knobs(tmp_path, capsys, alpaca_file, monkeypatch):
    import finercut_tui.heal.train as T

    def oom(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(T, "_collate", oom)
    model = save_tiny_checkpoint(tmp_path / "model", "llama")
    session_path = write_session(tmp_path / "s.yaml", model)
    code, _, err = run_cli(
        capsys, "heal", session_path, "--step", "1", "--out", tmp_path / "o", "--data", alpaca_file, "--quiet"
    )
    assert code == 2 and "out of memory while healing" in err
    assert "--batch-size" in err and "--gradient-checkpointing" in err and "--seq-len" in err
