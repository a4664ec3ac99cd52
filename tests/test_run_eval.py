"""Evaluation inside a search: --eval-every records, and evaluate-now leaves the order unchanged."""

from pathlib import Path

import torch
import yaml
from builders import make_engine, save_tiny_checkpoint
from tiny_models import tiny_model
from tiny_tokenizer import tiny_tokenizer

from finercut_tui.cli import main
from finercut_tui.domain.events import CandidateScored, EvalFinished, SublayerRemoved
from finercut_tui.eval.request import EvalRequest
from finercut_tui.eval.runner import run_eval
from finercut_tui.model.surgery import PrunableModel
from finercut_tui.search.controller import Controller


def test_eval_every_records_steps_0_2_4_and_the_end(tmp_path, capsys):
    model_dir = tmp_path / "m"
    save_tiny_checkpoint(model_dir, "llama")
    heldout = tmp_path / "heldout.txt"
    heldout.write_text(Path("tests/data/english.txt").read_text()[-3000:])
    session = tmp_path / "s.yaml"
    code = main(
        [
            "run",
            "--model",
            str(model_dir),
            "--calib",
            "tests/data/english.txt",
            "--calib-samples",
            "2",
            "--seq-len",
            "16",
            "--target",
            "5",
            "--session",
            str(session),
            "--eval-every",
            "2",
            "--ppl",
            str(heldout),
            "--ppl-seq-len",
            "64",
            "--quiet",
        ]
    )
    assert code == 0, capsys.readouterr().err
    data = yaml.safe_load(session.read_text())
    assert [e["step"] for e in data["evals"]] == [0, 2, 4, 5]
    key = f"ppl:{heldout}"
    baseline = data["evals"][0]["results"][key]
    for record in data["evals"][1:]:
        want = 100.0 * baseline / record["results"][key]
        assert abs(record["retained"][key] - want) < 1e-6 * want


def test_evaluate_now_with_real_perplexity_keeps_the_removal_order(tmp_path):
    ids = torch.randint(3, 128, (2, 16), generator=torch.Generator().manual_seed(9))
    text = tmp_path / "t.txt"
    text.write_text(Path("tests/data/english.txt").read_text()[:2000])

    def order(with_eval: bool):
        pm = PrunableModel(tiny_model("llama"), tiny_tokenizer())
        evals: list = []
        ctl = Controller()
        engine = make_engine(
            pm,
            ids,
            4,
            method="finercut",
            controller=ctl,
            evaluator=lambda req, step: run_eval(pm, req, step, evals),
        )
        events = []
        for ev in engine.run():
            events.append(ev)
            if isinstance(ev, EvalFinished):
                evals.append(ev.record)
            if with_eval and isinstance(ev, CandidateScored) and ev.step in (1, 3) and ev.index == 2:
                ctl.evaluate(EvalRequest(ppl=str(text), ppl_seq_len=32))
        got = [e.sublayer for e in events if isinstance(e, SublayerRemoved)]
        return got, [e.step for e in events if isinstance(e, EvalFinished)]

    plain, _ = order(False)
    evaluated, eval_steps = order(True)
    assert evaluated == plain
    assert eval_steps == [0, 2]  # the request at step 0 is the baseline itself


def test_a_failed_evaluation_is_in_the_session_and_the_search_goes_on(tmp_path, capsys, monkeypatch):
    from builders import save_tiny_checkpoint

    from finercut_tui.cli import main
    from finercut_tui.eval import runner
    from finercut_tui.session import Session

    model = save_tiny_checkpoint(tmp_path / "m", "llama")
    text = tmp_path / "t.txt"
    text.write_text(Path("tests/data/english.txt").read_text()[:3000])
    argv = ["run", "--model", str(model), "--calib", str(text), "--calib-samples", "2", "--seq-len", "16"]
    argv += ["--eval-every", "1", "--ppl", str(text), "--ppl-seq-len", "32", "--quiet"]
    real = runner.run_eval

    def broken(pm, request, step, *a, **k):
        if step == 1:
            raise RuntimeError("disk vanished")
        return real(pm, request, step, *a, **k)

    monkeypatch.setattr(runner, "run_eval", broken)
    assert main([*argv, "--target", "1", "--session", str(tmp_path / "s.yaml")]) == 0
    session = Session.load(tmp_path / "s.yaml")
    assert [(e.step, e.error) for e in session.evals] == [(0, None), (1, "RuntimeError: disk vanished")]
    assert "- step: 1\n  error: 'RuntimeError: disk vanished'\n" in (tmp_path / "s.yaml").read_text()
    monkeypatch.setattr(runner, "run_eval", real)
    assert main([*argv, "--target", "2", "--session", str(tmp_path / "s.yaml"), "--resume"]) == 0
    steps = [(e.step, e.failed) for e in Session.load(tmp_path / "s.yaml").evals]
    assert steps == [(0, False), (1, True), (2, False)]
