"""`finercut-tui show`: the pruned-layer map and summary of a fixed session, as text, markdown, SVG."""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from finercut_tui.cli import main
from finercut_tui.domain.sublayers import expand
from finercut_tui.layer_map import LayerMap, score_levels
from finercut_tui.report import quarters
from finercut_tui.session import Session

DATA = Path(__file__).parent / "data"
SMALL = "sessions_fixture_small.yaml"


@pytest.fixture
def in_data(monkeypatch):
    monkeypatch.chdir(DATA)  # the session path printed in the header is relative, as a user types it


def test_text_matches_the_committed_expected_output(in_data, capsys):
    assert main(["show", SMALL]) == 0
    assert capsys.readouterr().out == (DATA / "show_expected_small.txt").read_text(encoding="utf-8")


def test_markdown_matches_the_committed_expected_output(in_data, capsys):
    assert main(["show", SMALL, "--format", "markdown", "--step", "2"]) == 0
    expected = (DATA / "show_expected_small_markdown_step2.txt").read_text(encoding="utf-8")
    assert capsys.readouterr().out == expected


def test_step_k_shows_the_first_k_removals(in_data, capsys):
    session = Session.load(SMALL)
    for k in range(len(session.steps) + 1):
        assert main(["show", SMALL, "--step", str(k)]) == 0
        out = capsys.readouterr().out
        assert f"steps    {k} of {len(session.steps)} shown" in out
        for i, sid in enumerate(session.removed_at(), 1):
            assert (f"{i}     {sid}" in out) == (i <= k)


def test_svg_is_valid_xml_with_one_removed_cell_per_removed_sublayer(in_data, tmp_path):
    out = tmp_path / "map.svg"
    assert main(["show", SMALL, "--format", "svg", "--out", str(out)]) == 0
    root = ET.parse(out).getroot()
    ns = "{http://www.w3.org/2000/svg}"
    assert root.tag == f"{ns}svg"
    titles = [t.text for t in root.iter(f"{ns}title")]
    session = Session.load(SMALL)
    removed = [t for t in titles if t and "removed at step" in t]
    assert len(removed) == len(expand(session.removed_at()))
    assert any(t == "0.mlp: removed at step 3 (manual)" for t in titles)
    assert any(t == "5.attn: pinned" for t in titles)


def test_svg_of_a_big_session_is_valid(tmp_path):
    out = tmp_path / "big.svg"
    assert main(["show", str(DATA / "sessions_fixture_80.yaml"), "--format", "svg", "--out", str(out)]) == 0
    root = ET.parse(out).getroot()
    assert float(root.get("width")) > 80 * 8


def test_bad_step_and_missing_file_are_one_line_errors(in_data, capsys):
    assert main(["show", SMALL, "--step", "9"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["show", "nope.yaml"]) == 2
    assert "not found" in capsys.readouterr().err


def test_quarters_cover_every_block_once():
    for n in (1, 4, 6, 30, 32, 80):
        blocks = [b for q in quarters(n) for b in q]
        assert blocks == list(range(n))


def test_score_levels_span_lowest_to_highest():
    levels = score_levels({"a": 0.001, "b": 0.01, "c": 1.0})  # > 20x apart: log scale
    assert levels == {"a": 0, "b": 2, "c": 7}
    assert score_levels({"a": 1.0, "b": 2.0, "c": 3.0}) == {"a": 0, "b": 4, "c": 7}
    assert score_levels({"a": 5.0}) == {"a": 0}


def test_layer_map_of_a_block_method_marks_both_sublayers():
    from data.sessions_fixture import make_session

    session = make_session(4, 0)
    session.method = dataclasses.replace(session.method, spec=session.spec.replace(method="block-drop"))
    session.steps = []
    from finercut_tui.session import Step

    session.steps = [
        Step("2.block", score=0.1, scores={"0.block": 0.5, "1.block": 0.3, "2.block": 0.1, "3.block": 0.2})
    ]
    lm = LayerMap.from_session(session, 1)
    assert lm.cell(2, "attn").state.value == "removed" and lm.cell(2, "mlp").state.value == "removed"
    assert lm.cell(1, "attn").unit == "1.block"


def test_show_loads_no_torch(in_data):
    import json
    import subprocess
    import sys

    probe = (
        "import json, sys\n"
        "from finercut_tui.cli import main\n"
        "code = main(['show', sys.argv[1], '--format', 'markdown'])\n"
        "print(json.dumps([code, sorted(m for m in ('torch', 'transformers') if m in sys.modules)]))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe, SMALL], capture_output=True, text=True, timeout=120)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [0, []]
