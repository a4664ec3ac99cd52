"""Out of memory while scoring, caused on purpose with the FINERCUT_FAULT_OOM_AT seam of the scorer:
the batch halves, the step restarts at the new size, the order is the one of a run without the fault,
the session records the smaller batch and a resume keeps it; at batch size 1 the run ends with the
one-line advice and a session that resumes to the same order."""

import pytest
import yaml
from builders import save_tiny_checkpoint

from finercut_tui.cli import main
from finercut_tui.search.faults import FAULT_OOM_ENV
from finercut_tui.search.scoring import Scorer

TEXT = "tests/data/english.txt"
SAMPLES = 4
L = 4  # blocks of the tiny model: 8 candidates in step 1


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama-oom")
    save_tiny_checkpoint(path, "llama", num_hidden_layers=L)
    return path


@pytest.fixture
def score_calls(monkeypatch):
    """Every Scorer.score call: (removed before it, candidate, batch size before, batch size after)."""
    calls = []
    real = Scorer.score

    def spy(self, sid):
        before, removed = self.batch_size, self.pm.removed
        try:
            return real(self, sid)
        finally:
            calls.append((removed, sid, before, self.batch_size))

    monkeypatch.setattr(Scorer, "score", spy)
    return calls


def run(capsys, model, session, *extra, fault=None, monkeypatch=None):
    """`finercut-tui run` in this process, with FINERCUT_FAULT_OOM_AT set to `fault` (or unset)."""
    if fault is None:
        monkeypatch.delenv(FAULT_OOM_ENV, raising=False)
    else:
        monkeypatch.setenv(FAULT_OOM_ENV, fault)
    argv = [
        "run",
        "--session",
        str(session),
        *f"--calib {TEXT} --calib-samples {SAMPLES} --seq-len 24".split(),
    ]
    if model is not None:
        argv += ["--model", str(model)]
    code = main([*argv, *extra])
    captured = capsys.readouterr()
    monkeypatch.delenv(FAULT_OOM_ENV, raising=False)
    assert "Traceback" not in captured.err, captured.err
    return code, captured.err


def load(session):
    return yaml.safe_load(session.read_text())


def order(data):
    return [s["removed"] for s in data["steps"]]


@pytest.fixture(scope="module")
def uninterrupted(llama_dir, tmp_path_factory):
    """The runs without faults: every step at the full batch (4), the first three at batch 2."""
    out = {}
    mp = pytest.MonkeyPatch()
    try:
        for batch, target in ((4, "all"), (2, "3")):
            session = tmp_path_factory.mktemp(f"clean{batch}") / "s.yaml"
            mp.delenv(FAULT_OOM_ENV, raising=False)
            argv = ["run", "--model", str(llama_dir), "--session", str(session), "--quiet"]
            argv += f"--calib {TEXT} --calib-samples {SAMPLES} --seq-len 24 --target {target}".split()
            assert main([*argv, "--batch-size", str(batch)]) == 0
            out[batch] = load(session)
    finally:
        mp.undo()
    assert len(order(out[4])) == 2 * L and order(out[2]) == order(out[4])[:3]
    return out


def assert_same_steps(got, want, rel=1e-5):
    """`got` holds the first steps of `want`, with the same scores."""
    assert 0 < len(got["steps"]) <= len(want["steps"])
    for mine, theirs in zip(got["steps"], want["steps"], strict=False):
        assert mine["removed"] == theirs["removed"]
        assert mine["score"] == pytest.approx(theirs["score"], rel=rel, abs=1e-9)
        if theirs.get("scores"):
            assert set(mine["scores"]) == set(theirs["scores"])
            for sid, value in theirs["scores"].items():
                assert mine["scores"][sid] == pytest.approx(value, rel=rel, abs=1e-9), sid


# forward 1 is the reference, 2 the prefix capture of step 1, 3.. its candidates (one forward each at
# batch 4); 6 fails the 4th candidate of step 1, after three were scored at batch 4
@pytest.mark.parametrize("fault", ["1", "2", "6"])
def test_a_fault_halves_the_batch_restarts_the_step_and_keeps_the_order(
    fault, llama_dir, tmp_path, capsys, monkeypatch, score_calls, uninterrupted
):
    session = tmp_path / "s.yaml"
    code, err = run(
        capsys, llama_dir, session, "--target", "3", "--batch-size", "4", fault=fault, monkeypatch=monkeypatch
    )
    assert code == 0, err
    assert "out of memory: retrying with --batch-size 2" in err  # the user is told
    data = load(session)
    assert data["method"]["batch_size"] == 2 and data["finished"] is True
    assert len(data["steps"]) == 3
    assert_same_steps(data, uninterrupted[2])
    assert_same_steps(data, uninterrupted[4])

    step1 = [c for c in score_calls if not c[0]]  # scored on the dense model
    halved = [c for c in step1 if c[2] != c[3]]
    clean = [c for c in step1 if c[2] == c[3] == 2]
    assert len(halved) == (1 if fault == "6" else 0)
    # the step is scored again from its first candidate, all at the smaller batch
    assert [c[1] for c in clean] == list(data["steps"][0]["scores"]) and len(clean) == 2 * L
    if fault == "6":
        assert [c[2] for c in step1[:4]] == [4, 4, 4, 4] and halved[0] == step1[3]
        assert [c[1] for c in step1[:3]] == [c[1] for c in clean[:3]]  # scored twice: restarted
    assert all(c[3] == 2 for c in score_calls if c[0])  # every later step at batch 2


def test_resume_continues_with_the_recorded_smaller_batch(
    llama_dir, tmp_path, capsys, monkeypatch, score_calls, uninterrupted
):
    session = tmp_path / "s.yaml"
    # 14: mid step 2 (step 1 took forwards 1-10: the reference, the prefix capture, 8 candidates)
    code, err = run(
        capsys, llama_dir, session, "--target", "3", "--quiet", fault="14", monkeypatch=monkeypatch
    )
    assert code == 0, err
    data = load(session)
    assert data["method"]["batch_size"] == 2 and len(data["steps"]) == 3
    assert any(c[2] == 4 for c in score_calls) and score_calls[-1][3] == 2  # it did start at 4

    score_calls.clear()
    created = []
    real_init = Scorer.__init__

    def init_spy(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        created.append(self.batch_size)

    monkeypatch.setattr(Scorer, "__init__", init_spy)
    code, err = run(capsys, None, session, "--resume", "--target", "all", "--quiet", monkeypatch=monkeypatch)
    assert code == 0, err
    assert created == [2]
    assert score_calls and {c[2] for c in score_calls} == {2}
    resumed = load(session)
    assert resumed["method"]["batch_size"] == 2 and resumed["finished"] is True
    assert len(resumed["steps"]) == 2 * L
    assert_same_steps(resumed, uninterrupted[4])


ADVICE = "finercut-tui: error: out of GPU memory: try"


@pytest.mark.parametrize(
    "batch,fault",
    [
        ("1", "50"),  # batch 1, 4 forwards a pass: step 1 takes 40, so 50 fails in step 2
        ("4", "13+"),  # every forward from the 13th (in step 2) fails: 4 -> 2 -> 1, then the advice
    ],
)
def test_a_fault_at_batch_size_one_ends_with_the_advice_and_the_session_resumes(
    batch, fault, llama_dir, tmp_path, capsys, monkeypatch, uninterrupted
):
    session = tmp_path / "s.yaml"
    code, err = run(
        capsys,
        llama_dir,
        session,
        "--target",
        "all",
        "--batch-size",
        batch,
        fault=fault,
        monkeypatch=monkeypatch,
    )
    assert code == 3
    errors = [line for line in err.splitlines() if line.startswith("finercut-tui: error:")]
    assert len(errors) == 1 and errors[0].startswith(ADVICE), err
    assert "--batch-size 1" in errors[0] and "injected" not in err
    data = load(session)  # parses
    assert data["finished"] is False
    done = len(data["steps"])
    assert done == 1
    assert order(data) == order(uninterrupted[4])[:done]

    code, err = run(capsys, None, session, "--resume", "--quiet", monkeypatch=monkeypatch)
    assert code == 0, err
    resumed = load(session)
    assert resumed["finished"] is True and len(resumed["steps"]) == 2 * L
    assert_same_steps(resumed, uninterrupted[4])


def test_the_seam_is_inert_unless_set_and_refuses_nonsense(llama_dir, tmp_path, capsys, monkeypatch):
    from finercut_tui.search.faults import OomPlan

    monkeypatch.setenv(FAULT_OOM_ENV, "")
    assert OomPlan.from_env() is None
    monkeypatch.delenv(FAULT_OOM_ENV)
    assert OomPlan.from_env() is None
    plan = OomPlan("2,5+")
    outcomes = []
    for _ in range(6):
        try:
            plan.tick()
            outcomes.append(".")
        except RuntimeError as exc:
            from finercut_tui.errors import is_out_of_memory

            assert is_out_of_memory(exc)
            outcomes.append("x")
    assert "".join(outcomes) == ".x..xx"
    code, err = run(
        capsys, llama_dir, tmp_path / "s.yaml", "--target", "1", fault="0", monkeypatch=monkeypatch
    )
    assert code == 2 and f"{FAULT_OOM_ENV}='0': give forward numbers from 1" in err


# -- similarity drop: the same seam counts the forwards of each measurement ---------------------------
@pytest.mark.parametrize("method", [["--method", "joint-drop", "--iterative"], ["--method", "attn-drop"]])
def test_similarity_halves_its_batch_and_keeps_the_order(method, llama_dir, tmp_path, capsys, monkeypatch):
    """Fault 2: the second batch (of 2 samples) of every measurement fails once; the measurement runs
    again at batch 1 and the ranking and scores equal the run without faults."""
    args = [*method, "--target", "4", "--batch-size", "2"]
    clean, faulty = tmp_path / "clean.yaml", tmp_path / "faulty.yaml"
    assert run(capsys, llama_dir, clean, *args, monkeypatch=monkeypatch)[0] == 0
    code, err = run(capsys, llama_dir, faulty, *args, fault="2", monkeypatch=monkeypatch)
    assert code == 0, err
    measurements = 4 if "--iterative" in method else 1
    assert err.count("retrying with batches of 1 samples") == measurements, err
    assert_same_steps(load(faulty), load(clean))
    assert len(load(faulty)["steps"]) == 4


def test_similarity_out_of_memory_at_batch_1_ends_with_the_advice(llama_dir, tmp_path, capsys, monkeypatch):
    session = tmp_path / "s.yaml"
    args = ["--method", "mlp-drop", "--target", "2", "--batch-size", "2", "--quiet"]
    code, err = run(capsys, llama_dir, session, *args, fault="1+", monkeypatch=monkeypatch)
    errors = [line for line in err.splitlines() if line.startswith("finercut-tui: error:")]
    assert code == 3 and len(errors) == 1 and errors[0].startswith(ADVICE), err
    assert load(session)["steps"] == []
