"""The newcomer's path: `finercut-tui demo --headless --target 2` on the embedded SmolLM2-135M."""

import pytest

from finercut_tui.cli import main
from finercut_tui.session import Session


@pytest.mark.slow
def test_demo_headless_two_steps(tmp_path, capsys, smollm):  # smollm: the GGUF is converted and cached
    session = tmp_path / "demo.yaml"
    code = main(["demo", "--headless", "--target", "2", "--session", str(session)])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    recorded = Session.load(session)
    assert recorded.model.name_or_path == "smollm2-135m" and recorded.model.num_blocks == 30
    assert recorded.calibration.source == "pydoc" and recorded.calibration.samples == 2
    assert len(recorded.steps) == 2 and all(s.by == "search" for s in recorded.steps)
    assert len(recorded.steps[0].scores) == 60 and len(recorded.steps[1].scores) == 59
    assert recorded.finished and "demo configuration" in recorded.notes
    assert captured.out.split() == recorded.removed_at()
