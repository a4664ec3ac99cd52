"""FinerCut greedy search: the removal order and scores equal a slow reference; speed options change nothing."""

import pytest
import torch
import yaml
from builders import make_engine, save_tiny_checkpoint
from reference import greedy_finercut
from tiny_models import tiny_model

from finercut_tui.cli import main
from finercut_tui.data.calibration import build_calibration
from finercut_tui.domain.events import SublayerRemoved
from finercut_tui.model.surgery import PrunableModel
from finercut_tui.search.scoring import Scorer

CALIB = ["--calib-samples", "3", "--seq-len", "24"]


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    paths = {}
    for name in ("llama", "gpt_neox"):
        save_tiny_checkpoint(root / name, name, add_bos=(name == "llama"))
        paths[name] = root / name
    return paths


def calibration_ids(path, text_path, samples=3, seq_len=24):
    from transformers import AutoTokenizer

    return build_calibration(AutoTokenizer.from_pretrained(path), str(text_path), samples, seq_len).input_ids


@pytest.mark.parametrize("name", ["llama", "gpt_neox"])
@pytest.mark.parametrize("metric", ["js", "js-ref", "kl"])
def test_run_target_all_matches_slow_reference(name, metric, saved_models, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    text = "tests/data/english.txt"
    session = tmp_path / "s.yaml"
    code = main(
        [
            "run",
            "--model",
            str(saved_models[name]),
            "--method",
            "finercut",
            "--metric",
            metric,
            "--target",
            "all",
            "--calib",
            text,
            *CALIB,
            "--session",
            str(session),
            "--quiet",
        ]
    )
    assert code == 0
    data = yaml.safe_load(session.read_text())
    order = [s["removed"] for s in data["steps"]]

    model = AutoModelForCausalLM.from_pretrained(saved_models[name]).eval()
    ids = calibration_ids(saved_models[name], text)
    want_order, want_scores = greedy_finercut(model, ids, metric, target=8)
    assert order == want_order
    got_scores = data["steps"][0]["scores"]
    assert set(got_scores) == set(want_scores)
    for sid, value in want_scores.items():
        assert got_scores[sid] == pytest.approx(value, rel=1e-5, abs=1e-9), sid


def _engine_run(pm, ids, target, **config):
    engine = make_engine(pm, ids, target, **config)
    events = list(engine.run())
    removed = [e for e in events if isinstance(e, SublayerRemoved)]
    return [e.sublayer for e in removed], removed[0].scores


@pytest.mark.parametrize("name", ["llama", "gemma2", "gpt_neox", "opt"])
def test_prefix_cache_on_off_and_offloaded_agree(name):
    torch.manual_seed(0)
    ids = torch.randint(3, 128, (3, 20))
    results = {}
    for mode in ("off", "gpu", "cpu"):
        pm = PrunableModel(tiny_model(name))
        results[mode] = _engine_run(pm, ids, 8, method="finercut", prefix_cache=mode, batch_size=2)
    order_off, scores_off = results["off"]
    for mode in ("gpu", "cpu"):
        order, scores = results[mode]
        assert order == order_off, mode
        for sid, value in scores_off.items():
            assert scores[sid] == pytest.approx(value, rel=1e-5, abs=1e-9), (mode, sid)


@pytest.mark.parametrize("name", ["llama", "gemma2", "gpt2"])
def test_prefix_cache_follows_any_change_of_the_model(name):
    """Removals, restores and removals out of block order (undo, force-remove) between scores:
    the cached block inputs are refreshed from the first changed block and scores stay exact."""
    torch.manual_seed(0)
    ids = torch.randint(3, 128, (3, 20))
    pm = PrunableModel(tiny_model(name))
    cached, plain = Scorer(pm, ids, prefix_cache="gpu", batch_size=2), Scorer(pm, ids, prefix_cache="off")
    states = [[], ["2.mlp"], ["2.mlp", "0.attn"], ["0.attn"], ["0.attn", "3.attn"], ["1.mlp", "3.attn"], []]
    for removed in states:
        pm.set_removed(removed)
        for sid in ("0.mlp", "1.attn", "2.attn", "3.mlp"):
            if sid not in removed:
                assert cached.score(sid) == pytest.approx(plain.score(sid), rel=1e-5, abs=1e-9), (
                    removed,
                    sid,
                )


def test_recapture_runs_only_from_the_changed_block_and_never_the_head():
    torch.manual_seed(0)
    ids = torch.randint(3, 128, (2, 16))
    model = tiny_model("llama")
    pm = PrunableModel(model)
    scorer = Scorer(pm, ids)
    scorer.begin_step()
    calls = []
    handles = [
        block.register_forward_pre_hook(lambda m, a, i=i: calls.append(i))
        for i, block in enumerate(pm.blocks)
    ]
    handles.append(model.lm_head.register_forward_pre_hook(lambda m, a: calls.append("head")))
    pm.set_removed(["2.attn"])
    scorer.begin_step()
    assert calls == [2, 3]  # block 2 runs (its input is current), block 3's input is captured
    calls.clear()
    scorer.begin_step()
    assert calls == []  # nothing changed
    for h in handles:
        h.remove()


def test_pins_are_never_removed_and_front_exclusion_holds_back(tmp_path):
    torch.manual_seed(0)
    ids = torch.randint(3, 128, (2, 16))
    model = tiny_model("llama", num_hidden_layers=6)
    pm = PrunableModel(model)
    engine = make_engine(pm, ids, 10, method="finercut", exclude_front=0.4, pins={"0.attn", "5.mlp"})
    events = list(engine.run())
    order = [e.sublayer for e in events if isinstance(e, SublayerRemoved)]
    assert "0.attn" not in order and "5.mlp" not in order and len(order) == 10
    # L=6, X=0.4: blocks 0..int(2.4) wait until int(2*6*0.4)+1 = 5 sublayers are removed
    assert all(int(sid.split(".")[0]) >= 3 for sid in order[:5])
    from finercut_tui.domain.events import StepStarted

    steps = [e for e in events if isinstance(e, StepStarted)]
    assert set(steps[0].held_back) == {"0.mlp", "1.attn", "1.mlp", "2.attn", "2.mlp"}
    assert steps[4].held_back and steps[5].held_back == ()
    want, _ = greedy_finercut(
        tiny_model("llama", num_hidden_layers=6), ids, "js", 10, pinned={"0.attn", "5.mlp"}, exclude_front=0.4
    )
    assert order == want
