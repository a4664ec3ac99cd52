"""FinerCut with the angular, l2 and nll distances, through `run` and the scorer (prefix cache, batches),
against the slow reference greedy loop (a full forward of the unmodified model per candidate)."""

import pytest
import yaml
from builders import save_tiny_checkpoint
from reference import greedy_finercut

from finercut_tui.cli import main

TEXT = "tests/data/english.txt"
SAMPLES, SEQ_LEN = 3, 24


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models-metrics")
    return {name: save_tiny_checkpoint(root / name, name) for name in ("llama", "gemma2")}


def calibration_ids(path):
    from transformers import AutoTokenizer

    from finercut_tui.data.calibration import build_calibration

    return build_calibration(AutoTokenizer.from_pretrained(path), TEXT, SAMPLES, SEQ_LEN).input_ids


@pytest.mark.parametrize("name", ["llama", "gemma2"])
@pytest.mark.parametrize("metric", ["angular", "l2", "nll"])
def test_search_with_metric_matches_the_reference_greedy_loop(name, metric, saved_models, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    session = tmp_path / "s.yaml"
    argv = ["run", "--model", str(saved_models[name]), "--session", str(session), "--quiet"]
    argv += (
        f"--metric {metric} --target all --calib {TEXT} --calib-samples {SAMPLES} --seq-len {SEQ_LEN}".split()
    )
    code = main([*argv, "--batch-size", "2"])  # batches of 2 and 1, prefix cache on
    assert code == 0, capsys.readouterr().err
    data = yaml.safe_load(session.read_text())
    assert data["method"]["metric"] == metric

    model = AutoModelForCausalLM.from_pretrained(saved_models[name]).eval()
    want_order, want_scores = greedy_finercut(model, calibration_ids(saved_models[name]), metric, target=8)
    assert [s["removed"] for s in data["steps"]] == want_order
    got_scores = data["steps"][0]["scores"]
    assert set(got_scores) == set(want_scores)
    for sid, value in want_scores.items():
        assert got_scores[sid] == pytest.approx(value, rel=1e-5, abs=1e-9), sid
    assert data["steps"][0]["score"] == min(got_scores.values())
