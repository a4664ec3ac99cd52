"""`finercut-tui eval`: the session's first K removals, records appended, one-line errors, session untouched."""

from pathlib import Path

import pytest
from builders import local_tasks_dir, save_tiny_checkpoint, session_from

from finercut_tui.cli import main
from finercut_tui.eval import perplexity
from finercut_tui.model.surgery import PrunableModel
from finercut_tui.session import Session, Step

STEPS = ["0.attn", "2.mlp", "1.block", "3.attn"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny_llama")
    save_tiny_checkpoint(path, "llama")
    return path


@pytest.fixture
def text_file(tmp_path, english_text) -> Path:
    path = tmp_path / "heldout.txt"
    path.write_text(english_text[:1200], encoding="utf-8")
    return path


def make_session(
    path: Path, model_dir: Path, num_blocks: int = 4, architecture: str = "LlamaForCausalLM"
) -> Path:
    session = session_from(
        model={"name_or_path": str(model_dir), "architecture": architecture, "num_blocks": num_blocks},
        calibration={"source": "wikitext2", "split": "train", "samples": 10, "seq_len": 256},
        method={"name": "finercut", "metric": "js"},
        steps=[Step(removed=s, score=0.1 * i) for i, s in enumerate(STEPS)],
    )
    session.save(path)
    return path


def base_args(model_dir: Path, text_file: Path) -> list[str]:
    return [
        "eval",
        "--model",
        str(model_dir),
        "--device",
        "cpu",
        "--ppl",
        str(text_file),
        "--ppl-seq-len",
        "64",
    ]


@pytest.fixture
def spy_set_removed(monkeypatch):
    calls = []
    real = PrunableModel.set_removed

    def spy(self, ids):
        ids = list(ids)
        calls.append(frozenset(ids))
        return real(self, ids)

    monkeypatch.setattr(PrunableModel, "set_removed", spy)
    return calls


def hand_ppl(model_dir: Path, text: str, removed: list[str]) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pm = PrunableModel(
        AutoModelForCausalLM.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)
    )
    pm.set_removed(removed)
    return perplexity(pm.model, pm.tokenizer, text, seq_len=64)["ppl"]


def test_step_k_applies_exactly_the_first_k_removals(tmp_path, model_dir, text_file, spy_set_removed, capsys):
    session_path = make_session(tmp_path / "s.yaml", model_dir)
    assert main([*base_args(model_dir, text_file), "--session", str(session_path), "--step", "3"]) == 0
    first_three = frozenset({"0.attn", "2.mlp", "1.attn", "1.mlp"})  # 1.block is both its sublayers
    assert spy_set_removed[0] == first_three
    session = Session.load(session_path)
    assert [e.step for e in session.evals] == [0, 3]
    name = f"ppl:{text_file}"
    text = text_file.read_text(encoding="utf-8")
    assert session.evals[1].results[name] == pytest.approx(
        hand_ppl(model_dir, text, sorted(first_three)), rel=1e-5
    )
    assert session.evals[0].results[name] == pytest.approx(hand_ppl(model_dir, text, []), rel=1e-5)
    out = capsys.readouterr().out
    assert name in out and "retained %" in out
    assert session.evals[0].overlaps_calibration is False  # a file vs wikitext2 train

    # default step: all removals; the baseline is reused, so one record is appended
    spy_set_removed.clear()
    assert main([*base_args(model_dir, text_file), "--session", str(session_path)]) == 0
    assert spy_set_removed[0] == first_three | {"3.attn"}
    session = Session.load(session_path)
    assert [e.step for e in session.evals] == [0, 3, 4]

    # --step 0 is the baseline
    assert main([*base_args(model_dir, text_file), "--session", str(session_path), "--step", "0"]) == 0
    session = Session.load(session_path)
    assert [e.step for e in session.evals] == [0, 3, 4, 0]
    assert session.evals[-1].results == session.evals[0].results


def test_tasks_through_the_cli_and_without_session(tmp_path_factory, model_dir, text_file, capsys):
    tasks_dir = local_tasks_dir(tmp_path_factory.getbasetemp())
    args = [
        *base_args(model_dir, text_file),
        "--tasks",
        "tiny_mc",
        "--tasks-dir",
        str(tasks_dir),
        "--limit",
        "4",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "tiny_mc" in out and "acc_norm" in out and "retained" not in out  # nothing to compare with


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--tasks", "tiny_mcc"], "unknown lm-eval task 'tiny_mcc': did you mean tiny_mc"),
        (["--tasks", "tiny_mc", "--tasks-dir", "{tmp}/missing"], "tasks dir not found"),
        (["--step", "5"], "--step 5 is out of range: this session has 4 steps, so use 0..4"),
        (["--step", "-1"], "out of range"),
        (["--ppl", "{tmp}/nope.txt"], "text file not found"),
        (["--session-blocks", "6"], "was recorded on"),
        (["--session-arch", "GPT2LMHeadModel"], "was recorded on"),
    ],
)
def test_bad_inputs_one_line_error_and_session_untouched(
    tmp_path, tmp_path_factory, model_dir, text_file, capsys, extra, message
):
    tasks_dir = local_tasks_dir(tmp_path_factory.getbasetemp())
    blocks, arch = 4, "LlamaForCausalLM"
    if extra[0] == "--session-blocks":
        blocks, extra = int(extra[1]), []
    elif extra[0] == "--session-arch":
        arch, extra = extra[1], []
    session_path = make_session(tmp_path / "s.yaml", model_dir, num_blocks=blocks, architecture=arch)
    before = session_path.read_bytes()
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    if "--tasks" in extra and "--tasks-dir" not in extra:
        extra += ["--tasks-dir", str(tasks_dir)]
    rc = main([*base_args(model_dir, text_file), "--session", str(session_path), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    ours = [line for line in err if line.startswith("finercut-tui:")]  # (transformers may draw a load bar)
    assert ours == err[-1:] and ours[0].startswith("finercut-tui: error: ") and message in ours[0], err
    assert session_path.read_bytes() == before


def test_usage_errors(model_dir, text_file, capsys):
    assert main(["eval", "--model", str(model_dir), "--device", "cpu"]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err
    assert main([*base_args(model_dir, text_file), "--step", "1"]) == 2
    assert "--step needs --session" in capsys.readouterr().err


def test_steps_written_meanwhile_are_kept(tmp_path, model_dir, text_file, monkeypatch):
    """A search writing the session while we evaluate: we append to the file as it is then."""
    import finercut_tui.eval.runner as runner

    session_path = make_session(tmp_path / "s.yaml", model_dir)
    real = runner.run_eval

    def search_writes_meanwhile(*args, **kwargs):
        records = real(*args, **kwargs)
        session = Session.load(session_path)
        session.steps.append(Step(removed="3.mlp", score=0.5))
        session.save(session_path)
        return records

    monkeypatch.setattr(runner, "run_eval", search_writes_meanwhile)
    assert main([*base_args(model_dir, text_file), "--session", str(session_path), "--step", "1"]) == 0
    session = Session.load(session_path)
    assert session.removed_at() == [*STEPS, "3.mlp"] and [e.step for e in session.evals] == [0, 1]
