"""One meaning of a pin for the engine, the saved session, the grid and a resumed run."""

from __future__ import annotations

import pytest
from builders import save_tiny_checkpoint

from finercut_tui.domain.events import CandidateScored, SublayerRemoved
from finercut_tui.domain.pins import Pins
from finercut_tui.domain.spec import CalibrationSpec, SearchSetup, SearchSpec
from finercut_tui.layer_map import CellState, LayerMap
from finercut_tui.model.loading import ModelSpec, load_model
from finercut_tui.search.job import prepare_job, setup_from_session
from finercut_tui.session import Session

TEXT = "tests/data/english.txt"


def test_pins_by_hand():
    pins = Pins(["3.block"])
    assert pins.sublayers == {"3.attn", "3.mlp"} and pins.canonical() == ["3.block"]
    pins = pins.unpin("3.attn")
    assert pins.sublayers == {"3.mlp"} and pins.canonical() == ["3.mlp"]
    assert "3.mlp" in pins and "3.attn" not in pins and "3.block" in pins  # a unit is pinned by any part
    assert Pins(["2.mlp", "0.attn", "2.attn"]).canonical() == ["0.attn", "2.block"]
    assert Pins(["1.attn"]).pin("1.mlp") == Pins(["1.block"])
    assert not Pins(["1.block"]).unpin("1.block")


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    folder = save_tiny_checkpoint(tmp_path_factory.mktemp("llama6"), "llama", num_hidden_layers=6)
    return load_model(ModelSpec(str(folder), dtype="float32", device="cpu"), progress=lambda m: None)


def _setup(pins=()):
    return SearchSetup(
        spec=SearchSpec(target="5"), calibration=CalibrationSpec(TEXT, 2, 16), pins=tuple(pins)
    )


def _run(loaded, path, setup, resume=False, cancel_after=None):
    """Run a job; unpin 3.attn while step 1 is being scored; optionally stop after N removals.
    Returns the job, the order, and a LayerMap fed with every event as the app's grid is."""
    job = prepare_job(
        setup,
        ModelSpec(loaded.spec.name_or_path),
        path,
        resume=resume,
        loaded=loaded,
        progress=lambda m: None,
    )
    grid = LayerMap.from_session(job.session)
    for event in job.events():
        grid.apply(event)
        if isinstance(event, CandidateScored) and event.step == 1 and event.index == 1:
            job.controller.unpin("3.attn")
        if isinstance(event, SublayerRemoved) and cancel_after and len(job.session.steps) >= cancel_after:
            job.controller.cancel()
    return job, job.session.removed_at(), grid


def test_pin_block_then_unpin_one_part_is_the_same_everywhere_and_resumes_exactly(loaded, tmp_path):
    whole, order, grid = _run(loaded, tmp_path / "whole.yaml", _setup(["3.block"]))
    # the engine, the session in memory and on disk, and the live grid all hold 3.mlp alone
    assert whole.engine.pins.sublayers == {"3.mlp"}
    assert whole.session.pinned.canonical() == ["3.mlp"]
    saved = Session.load(tmp_path / "whole.yaml")
    assert saved.pinned.canonical() == ["3.mlp"]
    assert "pinned:\n- 3.mlp\n" in (tmp_path / "whole.yaml").read_text()
    for view in (grid, LayerMap.from_session(saved)):
        assert view.cell(3, "mlp").state is CellState.PINNED
        assert view.cell(3, "attn").state is not CellState.PINNED
    assert "3.mlp" not in order and len(order) == 5

    # the same run stopped after 2 removals and resumed (no --pin) continues with the same pins
    _, first, _ = _run(loaded, tmp_path / "part.yaml", _setup(["3.block"]), cancel_after=2)
    assert first == order[:2]
    part = Session.load(tmp_path / "part.yaml")
    assert part.pinned.canonical() == ["3.mlp"]
    resumed, rest, _ = _run(loaded, tmp_path / "part.yaml", setup_from_session(part), resume=True)
    assert resumed.engine.pins.sublayers == {"3.mlp"}
    assert rest == order
    assert [s.scores for s in Session.load(tmp_path / "part.yaml").steps] == [s.scores for s in saved.steps]
