"""Issue 17: FinerCut's front exclusion as its reference code applies -x, presets, and old sessions."""

from __future__ import annotations

import argparse

import pytest
from data.sessions_fixture import make_session

from finercut_tui.domain.methods import front_held_blocks
from finercut_tui.domain.pins import Pins
from finercut_tui.domain.spec import SearchSpec
from finercut_tui.errors import FinercutError
from finercut_tui.layer_map import LayerMap
from finercut_tui.session import Session


def reference_target_layers(num_blocks: int, x: float, removed: int) -> list[int]:
    """Re-statement of llm_dissect's get_target_layers + prune_layer.py: the rate applies to the 2L
    sublayers, and while no more than int(2L*x) are removed the first int(L*x)+1 blocks are not
    targets."""
    num_sublayers = 2 * num_blocks
    if removed > int(num_sublayers * x):
        return list(range(num_blocks))
    first_kept_back = int(num_blocks * x) + 1
    return [b for b in range(num_blocks) if b >= first_kept_back]


@pytest.mark.parametrize("num_blocks", [4, 6, 12, 30, 32, 80])
@pytest.mark.parametrize("x", [0.0, 0.1, 0.25, 0.4, 0.5, 0.75])
def test_exclusion_matches_the_reference_rule(num_blocks, x):
    for removed in range(2 * num_blocks):
        held = front_held_blocks(num_blocks, x, removed, "reference")
        assert sorted(set(range(num_blocks)) - held) == reference_target_layers(num_blocks, x, removed)


def test_exclusion_on_llama3_8b_shape_and_at_zero():
    assert front_held_blocks(32, 0.4, 0, "reference") == set(range(13))  # blocks 0-12
    assert front_held_blocks(32, 0.4, 25, "reference") == set(range(13))
    assert front_held_blocks(32, 0.4, 26, "reference") == set()  # until 26 removals
    assert front_held_blocks(32, 0.0, 0, "reference") == {0}  # -x 0 holds block 0 for the first removal
    assert front_held_blocks(32, 0.0, 1, "reference") == set()
    assert front_held_blocks(32, None, 0, "reference") == set()  # no option: nothing held
    # the rule of older sessions: blocks 0..int(L*X/2) until int(L*X)+1 removals, nothing at 0
    assert front_held_blocks(32, 0.4, 12, "halved") == set(range(7))
    assert front_held_blocks(32, 0.4, 13, "halved") == set()
    assert front_held_blocks(32, 0.0, 0, "halved") == set()


def test_spec_candidates_hold_back_the_front_blocks():
    spec = SearchSpec(exclude_front=0.4)  # L=6: blocks 0..2 until 5 removals
    free, held = spec.candidates(6, set(), Pins())
    assert held == [f"{b}.{k}" for b in range(3) for k in ("attn", "mlp")]
    assert free == [f"{b}.{k}" for b in range(3, 6) for k in ("attn", "mlp")]
    free, held = spec.candidates(
        6, {f"{b}.{k}" for b in range(3, 5) for k in ("attn", "mlp")} | {"5.mlp"}, Pins()
    )
    assert held == [] and free[0] == "0.attn"  # 5 removed: released
    assert SearchSpec(method="joint-drop", exclude_front=0.4).candidates(6, set(), Pins())[1] == []


def test_sessions_recorded_with_the_old_rule_replay_and_save_as_recorded(tmp_path):
    old = make_session(8, 3, exclude_front=0.5)  # written before the rule was fixed: no rule key
    text = old.dumps()
    assert "exclude_front: 0.5\n" in text and "exclude_front_rule" not in text
    path = tmp_path / "old.yaml"
    path.write_text(text)
    loaded = Session.load(path)
    assert loaded.spec.front_rule == "halved" and loaded.dumps() == text  # byte for byte
    # the map at step 0 holds blocks 0..int(8*0.5/2) = 0..2, as the recorded search did
    grid = LayerMap.from_session(loaded, 0)
    assert {u for u in grid.held_back} == {f"{b}.{k}" for b in range(3) for k in ("attn", "mlp")}
    # a new session with the option records which rule it used
    new = SearchSpec(exclude_front=0.5).record_fields()
    assert new["exclude_front_rule"] == "reference"


def _args(**kw):
    base = dict(
        resume=False,
        reproduce=None,
        session="s.yaml",
        method=None,
        target=None,
        metric=None,
        iterative=None,
        exclude_front=None,
        block_metric=None,
        seed=None,
        calib=None,
        calib_samples=None,
        seq_len=None,
        calib_layout=None,
        batch_size=None,
        prefix_cache="gpu",
        eval_every=0,
        ppl=None,
        tasks=None,
        pin=[],
    )
    base["distance_dtype"] = None
    base.update(kw)
    return argparse.Namespace(**base)


def test_presets_set_what_the_papers_ran_and_explicit_options_win():
    from finercut_tui.commands.run import setup_from_args

    setup = setup_from_args(_args(reproduce="finercut"))
    assert (setup.spec.method, setup.spec.metric, setup.spec.distance_dtype) == (
        "finercut",
        "js-ref",
        "model",
    )
    cal = setup.calibration
    assert (cal.source, cal.samples, cal.seq_len, cal.layout) == ("wikitext2", 10, 256, "finercut")
    assert setup_from_args(_args(reproduce="finercut", calib_samples=4, metric="js")).calibration.samples == 4
    assert setup_from_args(_args(reproduce="finercut", metric="js")).spec.metric == "js"
    drop = setup_from_args(_args(reproduce="llm-drop"))
    assert drop.spec.method == "attn-drop" and not drop.spec.iterative
    cal = drop.calibration
    assert (cal.source, cal.samples, cal.seq_len, cal.layout) == ("c4", 256, 2048, "llm-drop")
    it = setup_from_args(_args(reproduce="llm-drop", method="joint-drop", iterative=True))
    assert it.spec.method == "joint-drop" and it.calibration.samples == 128
    with pytest.raises(FinercutError, match="covers attn-drop"):
        setup_from_args(_args(reproduce="llm-drop", method="finercut"))
    with pytest.raises(FinercutError, match="drop it with --resume"):
        setup_from_args(_args(reproduce="finercut", resume=True))


def test_the_layout_is_recorded_and_a_resume_on_another_layout_is_refused(tmp_path, capsys):
    from builders import save_tiny_checkpoint

    from finercut_tui.cli import main

    model = save_tiny_checkpoint(tmp_path / "llama", "llama")
    common = ["run", "--model", str(model), "--calib", "tests/data/english.txt", "--calib-samples", "2"]
    common += ["--seq-len", "16", "--target", "1", "--quiet"]
    assert main([*common, "--session", str(tmp_path / "a.yaml")]) == 0
    assert main([*common, "--calib-layout", "finercut", "--session", str(tmp_path / "b.yaml")]) == 0
    a, b = Session.load(tmp_path / "a.yaml"), Session.load(tmp_path / "b.yaml")
    assert a.calibration.layout == "per-row-bos" and "  layout:" not in (tmp_path / "a.yaml").read_text()
    assert b.calibration.layout == "finercut" and "  layout: finercut\n" in (tmp_path / "b.yaml").read_text()
    assert a.calibration.fingerprint != b.calibration.fingerprint
    before = (tmp_path / "b.yaml").read_bytes()
    capsys.readouterr()
    code = main(
        [
            *common,
            "--calib-layout",
            "per-row-bos",
            "--target",
            "2",
            "--session",
            str(tmp_path / "b.yaml"),
            "--resume",
        ]
    )
    err = capsys.readouterr().err
    assert code != 0 and "other calibration tokens" in err and "Traceback" not in err
    assert (tmp_path / "b.yaml").read_bytes() == before
    assert main([*common, "--target", "2", "--session", str(tmp_path / "b.yaml"), "--resume"]) == 0
    assert len(Session.load(tmp_path / "b.yaml").steps) == 2


def test_distance_in_the_model_dtype(monkeypatch):
    import torch
    from reference import js_by_hand
    from tiny_models import tiny_model

    from finercut_tui.model.surgery import PrunableModel
    from finercut_tui.search import metrics
    from finercut_tui.search.scoring import Scorer

    # the metric computes in the dtype it is given: bf16 maths, close to the float64 value
    g = torch.Generator().manual_seed(0)
    p, q = torch.randn(2, 6, 50, generator=g), torch.randn(2, 6, 50, generator=g)
    got = metrics.js(metrics.prepare_reference(p.bfloat16(), "js"), q.bfloat16(), None)
    assert got.dtype == torch.bfloat16 and got.double().mean().item() == pytest.approx(
        js_by_hand(p, q), rel=0.05
    )
    # the scorer hands the metric the logits in the distance dtype
    seen = []
    real = metrics.METRICS["js"]
    ids = torch.randint(3, 128, (2, 12), generator=torch.Generator().manual_seed(1))
    pm = PrunableModel(tiny_model("llama").to(torch.bfloat16))
    for dtype, want in ((torch.float32, torch.float32), (None, torch.bfloat16)):
        scorer = Scorer(pm, ids, metric="js", distance_dtype=dtype)
        scorer.metric = lambda ref, out, ids_, real=real: (
            seen.append((ref.p.dtype, out.dtype)) or real(ref, out, ids_)
        )
        scorer.score("1.mlp")
        assert set(seen) == {(want, want)}
        seen.clear()
    assert SearchSpec(distance_dtype="model").record_fields()["distance_dtype"] == "model"
    assert "distance_dtype" not in SearchSpec().record_fields()  # the default leaves old files as they are
    with pytest.raises(FinercutError, match="unknown --distance-dtype"):
        SearchSpec(distance_dtype="fp8").validate()


def test_a_session_of_the_old_rule_resumes_with_it(tmp_path, capsys):
    """A session written before the rule was fixed (no exclude_front_rule key) continues under the
    halved rule: its order equals an uninterrupted run under that rule, not under the new one."""
    import yaml
    from builders import save_tiny_checkpoint

    from finercut_tui.cli import main

    model = save_tiny_checkpoint(tmp_path / "llama", "llama", num_hidden_layers=6)
    common = ["run", "--model", str(model), "--calib", "tests/data/english.txt", "--calib-samples", "2"]
    common += ["--seq-len", "16", "--exclude-front", "0.5", "--quiet"]

    def as_old(path):  # what an older finercut-tui wrote: the same mapping without the rule key
        data = yaml.safe_load(path.read_text())
        del data["method"]["exclude_front_rule"]
        path.write_text(yaml.safe_dump(data, sort_keys=False, width=120))

    halved = SearchSpec(exclude_front=0.5, front_rule="halved")
    # L=6, X=0.5, halved rule: blocks 0..1 wait until 4 removals; the reference rule holds 0..3 until 7
    assert halved.held_blocks(6, 0) == {0, 1} and SearchSpec(exclude_front=0.5).held_blocks(6, 0) == {
        0,
        1,
        2,
        3,
    }
    whole, part = tmp_path / "whole.yaml", tmp_path / "part.yaml"
    assert main([*common, "--target", "1", "--session", str(whole)]) == 0
    as_old(whole)
    assert main([*common, "--target", "6", "--session", str(whole), "--resume"]) == 0
    assert main([*common, "--target", "1", "--session", str(part)]) == 0
    as_old(part)
    assert main([*common, "--target", "3", "--session", str(part), "--resume"]) == 0
    assert main([*common, "--target", "6", "--session", str(part), "--resume"]) == 0
    order = Session.load(whole).removed_at()
    assert Session.load(part).removed_at() == order
    assert all(int(s.split(".")[0]) >= 2 for s in order[:4])  # the halved rule held blocks 0..1
    assert "exclude_front_rule" not in part.read_text()  # still written as recorded
    held = set(LayerMap.from_session(Session.load(part), 1).held_back)
    assert held == {"0.attn", "0.mlp", "1.attn", "1.mlp"}  # the halved rule, not blocks 0..3
