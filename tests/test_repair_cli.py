"""The `repair` command end to end on tiny models, offline: folder, evaluations, session record, show,
compare; and its refusals (one line, nothing written)."""

import json

import pytest
import torch
from builders import save_tiny_checkpoint, session_from
from conftest import DATA
from tiny_models import tiny_inputs

from finercut_tui import load_pruned
from finercut_tui.cli import main
from finercut_tui.domain.repairs import PatchRecord, RepairRecord
from finercut_tui.session import Session, Step

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXT = DATA / "english.txt"
ARCH_CLASS = {"llama": "LlamaForCausalLM", "gemma2": "Gemma2ForCausalLM"}


def write_session(
    path, model_path, arch="llama", removed=("1.attn", "2.mlp", "3.block"), samples=8, seq_len=32
):
    session_from(
        model={
            "name_or_path": str(model_path),
            "architecture": ARCH_CLASS[arch],
            "num_blocks": 4,
            "dtype": "float32",
        },
        calibration={"source": str(TEXT), "samples": samples, "seq_len": seq_len},
        method={"name": "finercut", "metric": "js", "target": len(removed), "target_spec": str(len(removed))},
        steps=[Step(sid, score=0.01 * i) for i, sid in enumerate(removed)],
        command="finercut-tui run --model x --session s.yaml",
    ).save(path)
    return path


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


EVAL = ["--ppl", TEXT, "--ppl-seq-len", "32", "--ppl-max-tokens", "256"]


def test_repair_command_writes_the_folder_evaluates_and_records(tmp_path, capsys):
    model = save_tiny_checkpoint(tmp_path / "model", "llama")
    session_path = write_session(tmp_path / "s.yaml", model)
    out = tmp_path / "repaired"
    code, stdout, err = run_cli(capsys, "repair", session_path, "--step", "2", "--out", out, *EVAL)
    assert code == 0, err
    assert "repaired step 2: 2 patches" in stdout
    before_line = next(x for x in stdout.splitlines() if x.startswith("before:"))
    after_line = next(x for x in stdout.splitlines() if x.startswith("after:"))
    assert "%" in before_line and "retained" in after_line

    session = Session.load(session_path)
    assert [e.step for e in session.evals] == [0]  # the unpruned baseline
    (repair,) = session.repairs
    assert repair.step == 2 and repair.objective == "lstsq" and repair.ridge == 0.1
    assert repair.out == str(out) and repair.seconds > 0 and repair.command.startswith("finercut-tui")
    assert repair.calibration["tokens"] == 256 and repair.calibration["fingerprint"].startswith("sha256:")
    assert [(p.sublayer, p.run) for p in repair.patches] == [("0.mlp", ("1.attn",)), ("2.attn", ("2.mlp",))]
    assert all(0 < p.error_after < p.error_before for p in repair.patches)
    name = f"ppl:{TEXT}"
    for record in (repair.before, repair.after):
        assert record.step == 2 and record.what == session.evals[0].what
        assert record.retained[name] == pytest.approx(
            100 * session.evals[0].results[name] / record.results[name]
        )
    assert repair.after.results[name] != repair.before.results[name]
    text = session_path.read_text()
    assert "repairs:" in text and Session.load(session_path).dumps() == text  # round-trips
    assert RepairRecord.from_dict(repair.to_dict()) == repair

    # the folder: load_pruned gives the repaired logits; the card and config.json say so
    loaded, _ = load_pruned(out)
    info = json.loads((out / "config.json").read_text())["finercut"]
    assert info["repaired"]["patches"] == {"0.mlp": ["1.attn"], "2.attn": ["2.mlp"]}
    assert info["removed"] == ["1.attn", "2.mlp"]
    card = (out / "PRUNING.md").read_text()
    assert "## Repair" in card and "`0.mlp`" in card and "after the repair" in card

    from tiny_models import tiny_model
    from tiny_tokenizer import tiny_tokenizer

    from finercut_tui.data.calibration import build_calibration
    from finercut_tui.model.surgery import PrunableModel
    from finercut_tui.repair import repair_model

    pm = PrunableModel(tiny_model("llama"), tiny_tokenizer())
    cal = build_calibration(pm.tokenizer, str(TEXT), 8, 32)
    assert cal.fingerprint == repair.calibration["fingerprint"]
    repair_model(pm, cal.input_ids, ["1.attn", "2.mlp"])
    x = tiny_inputs(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(x, use_cache=False).logits, pm.model(x, use_cache=False).logits, rtol=0, atol=2e-5
        )

    # show and compare list it beside the unrepaired results
    code, shown, _ = run_cli(capsys, "show", session_path)
    assert code == 0 and "repairs" in shown
    lines = shown.splitlines()
    line = lines[next(i for i, x in enumerate(lines) if x.startswith("repairs ")) + 1]
    assert line.split()[:3] == ["2", "0.1", "2"]
    assert f"{repair.before.retained_average:.1f}% -> {repair.after.retained_average:.1f}%" in line
    code, md, _ = run_cli(capsys, "show", session_path, "--format", "markdown")
    assert "| repair at step |" in md
    other = tmp_path / "t.yaml"
    other.write_text(text)
    code, compared, _ = run_cli(capsys, "compare", session_path, other)
    assert code == 0 and "repaired (least squares) at equal removals" in compared

    # a whole-block cut and a ridge of 0 (256 tokens >= hidden size 64); the same --out needs --force
    code, _, err = run_cli(capsys, "repair", session_path, "--step", "3", "--out", out, "--ridge", "0")
    assert code == 2 and "not empty" in err
    code, stdout, err = run_cli(
        capsys, "repair", session_path, "--step", "3", "--out", out, "--ridge", "0", "--force"
    )
    assert code == 0, err
    repair3 = Session.load(session_path).repairs[-1]
    assert repair3.ridge == 0 and repair3.before is None
    assert [(p.sublayer, p.run) for p in repair3.patches] == [
        ("0.mlp", ("1.attn",)),
        ("2.attn", ("2.mlp", "3.attn", "3.mlp")),  # 2.mlp and block 3 are one run
    ]


def test_session_records_round_trip_and_old_files_stay_byte_for_byte(tmp_path):
    fixture = DATA / "sessions_fixture_small.yaml"
    text = fixture.read_text()
    assert Session.load(fixture).dumps() == text  # no repairs: no `repairs:` key
    patch = PatchRecord(run=("1.attn",), sublayer="0.mlp", error_before=0.5, error_after=0.25, extra={"x": 1})
    assert patch.relative_error == 0.5 and PatchRecord.from_dict(patch.to_dict()) == patch
    record = RepairRecord(step=1, ridge=0.01, patches=(patch,), extra={"future": True})
    data = record.to_dict()
    assert data == {
        "step": 1,
        "objective": "lstsq",
        "ridge": 0.01,
        "patches": [
            {
                "sublayer": "0.mlp",
                "run": ["1.attn"],
                "error_before": 0.5,
                "error_after": 0.25,
                "relative_error": 0.5,
                "x": 1,
            }
        ],
        "future": True,
    }
    assert RepairRecord.from_dict(data) == record
    session = Session.load(fixture)
    session.repairs.append(RepairRecord(step=1))
    session.repairs.append(RepairRecord(step=len(session.steps)))
    assert [r.step for r in session.continued_from(1, "x").repairs] == [1]


def test_repair_refusals_are_one_line_and_write_nothing(tmp_path, capsys):
    model = save_tiny_checkpoint(tmp_path / "model", "llama")
    session_path = write_session(tmp_path / "s.yaml", model)
    small = write_session(tmp_path / "small.yaml", model, samples=2, seq_len=16)
    gemma = write_session(
        tmp_path / "g.yaml", save_tiny_checkpoint(tmp_path / "gemma", "gemma2"), arch="gemma2"
    )
    out = tmp_path / "o"

    def error(session, *argv):
        before = session.read_text()
        code, stdout, err = run_cli(capsys, "repair", session, "--out", out, *argv)
        lines = [x for x in err.splitlines() if x.startswith("finercut-tui: error:")]
        assert code == 2 and len(lines) == 1, err
        assert not out.exists() and session.read_text() == before
        return lines[0]

    assert "removes nothing" in error(session_path, "--step", "0")
    assert "out of range" in error(session_path, "--step", "9")
    assert "--ridge" in error(session_path, "--step", "1", "--ridge", "-1")
    message = error(small, "--step", "1")
    assert "32 tokens" in message and "at least 64 tokens" in message and "--ridge" in message
    assert "at least 64" in error(session_path, "--step", "1", "--calib-samples", "1")
    assert "not supported for gemma2" in error(gemma, "--step", "1")
    # with an explicit ridge the small calibration set is fitted
    code, _, err = run_cli(capsys, "repair", small, "--step", "1", "--out", out, "--ridge", "0.1")
    assert code == 0, err


def test_heal_with_repair_patches_first_then_trains_on_the_patched_weights(tmp_path, capsys):
    """`heal --repair`: the session gets the repair and the heal; LoRA starts from the patched model."""
    model = save_tiny_checkpoint(tmp_path / "model", "llama")
    session_path = write_session(tmp_path / "s.yaml", model)
    common = ["--data", str(TEXT), "--steps", "2", "--batch-size", "2", "--seq-len", "16", "--quiet"]
    evals = ["--ppl", str(TEXT), "--ppl-seq-len", "16", "--ppl-max-tokens", "64"]
    argv = ["heal", str(session_path), "--step", "3", "--out", str(tmp_path / "healed"), "--repair", *common]
    assert main([*argv, *evals]) == 0, capsys.readouterr().err
    session = Session.load(session_path)
    (heal,) = session.heals
    (repair,) = session.repairs
    assert repair.step == heal.step == 3 and repair.patches and repair.out == str(tmp_path / "healed")
    assert heal.training["repaired_first"] is True
    assert repair.before is not None and repair.before.results == heal.before.results  # the unrepaired model
    assert Session.load(session_path).dumps() == session_path.read_text()

    # the same heal without the repair trains other weights: the patch was in place before LoRA
    plain = write_session(tmp_path / "plain.yaml", model)
    argv = ["heal", str(plain), "--step", "3", "--out", str(tmp_path / "plain-healed"), *common]
    assert main(argv) == 0, capsys.readouterr().err
    repaired_w = load_pruned(tmp_path / "healed").model.state_dict()
    plain_w = load_pruned(tmp_path / "plain-healed").model.state_dict()
    assert any(not torch.equal(repaired_w[k], plain_w[k]) for k in plain_w)
    assert not Session.load(plain).repairs
