"""`run` and sessions: bad input gets one line and leaves the session untouched; resume is exact."""

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from builders import save_tiny_checkpoint, session_from

from finercut_tui.cli import main
from finercut_tui.errors import SessionError
from finercut_tui.session import Session

TEXT = "tests/data/english.txt"


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    save_tiny_checkpoint(path, "llama")
    return path


def run(capsys, *argv):
    code = main(["run", *argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("finercut-tui: error:")]
    return code, (errors[0] if errors else "")


def base(llama_dir, session, *extra):
    return [
        "--model",
        str(llama_dir),
        "--calib",
        TEXT,
        "--calib-samples",
        "2",
        "--seq-len",
        "16",
        "--session",
        str(session),
        "--quiet",
        *extra,
    ]


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--method", "magic"], "unknown method 'magic': choose one of finercut, attn-drop"),
        (["--metric", "cosine"], "unknown metric 'cosine': choose one of js, js-ref, kl, angular, l2, nll"),
        (["--target", "0"], "--target 0 is out of range"),
        (["--target", "1.5"], "--target 1.5 is out of range"),
        (["--target", "9"], "--target 9 is more than there are candidates: finercut can remove 8 sublayers"),
        (["--target", "8", "--pin", "1.attn"], "can remove 7 sublayers (1 pinned)"),
        (["--pin", "7.attn"], "sublayer id '7.attn' is out of range: this model has blocks 0..3"),
        (["--pin", "2.ffn"], "bad sublayer id '2.ffn'"),
        (["--exclude-front", "1.0"], "--exclude-front 1.0 is out of range"),
        (["--calib", "missing.txt"], "text file not found: missing.txt"),
        (["--seq-len", "100000"], "too little calibration text: it has"),
        (["--eval-every", "2"], "--eval-every needs something to evaluate"),
    ],
)
def test_bad_inputs_one_line_and_no_session(capsys, llama_dir, tmp_path, extra, message):
    session = tmp_path / "s.yaml"
    code, line = run(capsys, *base(llama_dir, session, "--target", "2"), *extra)
    assert code == 2
    assert message in line, line
    assert not session.exists()


def test_existing_session_is_not_overwritten_without_resume(capsys, llama_dir, tmp_path):
    session = tmp_path / "s.yaml"
    session.write_text("precious: true\n")
    code, line = run(capsys, *base(llama_dir, session, "--target", "2"))
    assert code == 2 and "already exists: pass --resume" in line
    assert session.read_text() == "precious: true\n"


def make_session(capsys, llama_dir, tmp_path, target="3"):
    session = tmp_path / "s.yaml"
    code, _ = run(capsys, *base(llama_dir, session, "--target", target))
    assert code == 0
    return session


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda text: text + "\n  - : [unclosed\n", "is not valid YAML"),
        (
            lambda text: text.replace("schema_version: 1", "schema_version: 2"),
            "uses session schema 2, newer than",
        ),
        (lambda text: "just a string\n", "is not a finercut session"),
        (lambda text: text.replace("removed: ", "removed: 99.", 1), "is corrupt"),
    ],
)
def test_resume_refuses_bad_sessions_and_leaves_them_untouched(capsys, llama_dir, tmp_path, mutate, message):
    session = make_session(capsys, llama_dir, tmp_path)
    session.write_text(mutate(session.read_text()))
    before = session.read_bytes()
    code, line = run(capsys, *base(llama_dir, session, "--resume", "--target", "5"))
    assert code == 2 and message in line, line
    assert session.read_bytes() == before


def test_resume_with_other_model_or_calibration_is_refused(capsys, llama_dir, tmp_path):
    session = make_session(capsys, llama_dir, tmp_path)
    before = session.read_bytes()
    other = tmp_path / "other"
    save_tiny_checkpoint(other, "llama", num_hidden_layers=3)
    code, line = run(capsys, *base(other, session, "--resume"))
    assert code == 2 and "was recorded on" in line and "num_blocks 4" in line
    code, line = run(
        capsys,
        "--model",
        str(llama_dir),
        "--calib",
        TEXT,
        "--calib-samples",
        "3",
        "--seq-len",
        "16",
        "--session",
        str(session),
        "--resume",
        "--quiet",
    )
    assert code == 2 and "scored on other calibration tokens" in line
    assert session.read_bytes() == before


def test_resume_continues_to_a_larger_target_with_the_same_order(capsys, llama_dir, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    whole = make_session(capsys, llama_dir, full, target="6")
    part = make_session(capsys, llama_dir, tmp_path, target="2")
    code, _ = run(
        capsys, "--session", str(part), "--resume", "--target", "6", "--quiet"
    )  # model from the session
    assert code == 0
    assert Session.load(part).removed_at() == Session.load(whole).removed_at()


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    s = session_from(model={"num_blocks": 2}, calibration={}, method={"name": "finercut"})
    path = tmp_path / "s.yaml"
    s.save(path)
    before = path.read_bytes()
    s.notes = "changed"

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        s.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["s.yaml"]  # no temp file left behind


def test_saved_sessions_get_normal_file_permissions(tmp_path):
    s = session_from(model={"num_blocks": 2}, calibration={}, method={"name": "finercut"})
    old = os.umask(0o022)
    try:
        s.save(tmp_path / "new.yaml")
    finally:
        os.umask(old)
    assert (tmp_path / "new.yaml").stat().st_mode & 0o777 == 0o644
    (tmp_path / "new.yaml").chmod(0o640)
    s.save(tmp_path / "new.yaml")
    assert (tmp_path / "new.yaml").stat().st_mode & 0o777 == 0o640


def test_session_round_trip_keeps_scores_exactly(tmp_path):
    from finercut_tui.session import Step

    scores = {"0.attn": 0.1 + 0.2, "1.mlp": 1e-12 / 3}
    s = session_from(
        model={"num_blocks": 2},
        calibration={},
        method={"name": "finercut"},
        steps=[Step("1.mlp", score=scores["1.mlp"], scores=scores)],
    )
    s.save(tmp_path / "s.yaml")
    assert Session.load(tmp_path / "s.yaml").steps[0].scores == scores
    with pytest.raises(SessionError, match="session file not found"):
        Session.load(tmp_path / "missing.yaml")


@pytest.fixture(scope="module")
def bigger_llama(tmp_path_factory):
    """Big enough that a step takes a little while, so a kill lands mid-step."""
    path = tmp_path_factory.mktemp("llama8")
    save_tiny_checkpoint(path, "llama", num_hidden_layers=8, hidden_size=128, intermediate_size=384)
    return path


def run_argv(model, session, *extra):
    return [
        sys.executable,
        "-m",
        "finercut_tui.cli",
        "run",
        "--model",
        str(model),
        "--calib",
        TEXT,
        "--calib-samples",
        "4",
        "--seq-len",
        "64",
        "--target",
        "all",
        "--session",
        str(session),
        "--quiet",
        "--batch-size",
        "1",
        "--prefix-cache",
        "off",
        *extra,
    ]


def test_sigkill_mid_step_then_resume_gives_the_uninterrupted_order(bigger_llama, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    reference = tmp_path / "reference.yaml"
    subprocess.run(run_argv(bigger_llama, reference), check=True, env=env, capture_output=True, timeout=600)
    want = Session.load(reference).removed_at()
    assert len(want) == 16

    killed = tmp_path / "killed.yaml"
    proc = subprocess.Popen(
        run_argv(bigger_llama, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    steps = 0
    while time.time() < deadline and proc.poll() is None:
        if killed.exists():
            data = yaml.safe_load(killed.read_text()) or {}
            steps = len(data.get("steps") or [])
            if steps >= 3:
                break
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted = Session.load(killed)  # parses after the kill
    assert 3 <= len(interrupted.steps) < 16
    assert interrupted.removed_at() == want[: len(interrupted.steps)]
    subprocess.run(
        run_argv(bigger_llama, killed, "--resume"), check=True, env=env, capture_output=True, timeout=600
    )
    assert Session.load(killed).removed_at() == want


def test_resume_refuses_changed_search_options_and_records_a_new_target(capsys, llama_dir, tmp_path):
    session = make_session(capsys, llama_dir, tmp_path, target="2")
    before = session.read_bytes()
    for extra, key in ((["--metric", "kl"], "metric"), (["--exclude-front", "0.5"], "exclude_front")):
        code, line = run(capsys, "--session", str(session), "--resume", "--target", "4", "--quiet", *extra)
        assert code == 2 and f"was searched with {key}" in line, line
        assert session.read_bytes() == before
    code, _ = run(capsys, "--session", str(session), "--resume", "--target", "4", "--quiet")
    assert code == 0
    resumed = Session.load(session)
    assert len(resumed.steps) == 4 and resumed.method.target == 4 and resumed.spec.metric == "js"


def test_undo_and_pin_from_the_controller_are_recorded_in_the_session(llama_dir, tmp_path):
    from finercut_tui.domain.events import PinChanged, SublayerRemoved, SublayerRestored
    from finercut_tui.domain.spec import CalibrationSpec, SearchSetup, SearchSpec
    from finercut_tui.model.loading import ModelSpec
    from finercut_tui.search.job import prepare_job

    path = tmp_path / "s.yaml"
    setup = SearchSetup(spec=SearchSpec(target="3"), calibration=CalibrationSpec(str(TEXT), 2, 16))
    job = prepare_job(setup, ModelSpec(str(llama_dir), device="cpu"), path, progress=lambda m: None)
    seen = []
    for event in job.events():
        seen.append(event)
        if (
            isinstance(event, SublayerRemoved)
            and event.step == 1
            and not any(isinstance(e, SublayerRestored) for e in seen)
        ):
            job.controller.pin(event.sublayer)
            job.controller.undo()
            first = event.sublayer
    on_disk = Session.load(path)
    assert [u.removed for u in on_disk.undone] == [first] and on_disk.undone[0].undone_at_step == 1
    assert first in on_disk.pinned and first not in on_disk.removed_at()
    assert len(on_disk.steps) == 3 and on_disk.finished
    assert any(isinstance(e, PinChanged) for e in seen)


def test_setup_from_a_session_keeps_its_batch_size_after_an_oom_fallback():
    from finercut_tui.search.job import setup_from_session

    s = Session.from_yaml_dict(
        {
            "schema_version": 1,
            "model": {"num_blocks": 4},
            "calibration": {"source": "x.txt", "samples": 3, "seq_len": 16},
            "method": {"name": "finercut", "metric": "kl", "target": 5, "target_spec": "5", "batch_size": 2},
            "steps": [],
        }
    )
    setup = setup_from_session(s)
    spec = setup.spec.replace(target="7")
    assert (setup.scoring.batch_size, spec.metric, spec.target, setup.calibration.samples) == (
        2,
        "kl",
        "7",
        3,
    )
