"""`compare`: overlaps of removed sets against a hand count, where orders part, evals side by side."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from builders import session_from

from finercut_tui.cli import main
from finercut_tui.compare import compare, render_markdown, render_text
from finercut_tui.errors import FinercutError
from finercut_tui.session import Step

SESSIONS = Path(__file__).parents[1] / "sessions"
MODEL = {"num_blocks": 4, "architecture": "LlamaForCausalLM", "name_or_path": "tiny"}


def two_sessions():
    a = session_from(
        MODEL,
        steps=[Step("1.attn"), Step("2.mlp"), Step("0.block"), Step("3.attn")],
        evals=[
            {"step": 2, "results": {"ppl:x": 12.0}, "retained": {"ppl:x": 90.0}, "retained_average": 90.0}
        ],
    )
    b = session_from(
        MODEL,
        method={"name": "joint-drop", "metric": "cosine", "iterative": False},
        steps=[Step("1.attn"), Step("3.attn"), Step("0.attn"), Step("2.mlp"), Step("1.mlp")],
        evals=[
            {"step": 2, "results": {"ppl:x": 15.0}, "retained": {"ppl:x": 72.0}, "retained_average": 72.0}
        ],
    )
    return a, b


def test_overlaps_against_a_hand_count():
    a, b = two_sessions()
    c = compare([a, b], ["a.yaml", "b.yaml"])
    (pair,) = c.pairs
    # by hand, removed sublayers after k steps (0.block is 0.attn and 0.mlp):
    # k=1  A {1a}            B {1a}                 shared 1, union 1
    # k=2  A {1a,2m}         B {1a,3a}              shared 1, union 3
    # k=3  A {1a,2m,0a,0m}   B {1a,3a,0a}           shared 2, union 5
    # k=4  A {1a,2m,0a,0m,3a} B {1a,3a,0a,2m}       shared 4, union 5
    assert [(o.k, o.shared, o.union) for o in pair.overlaps] == [(1, 1, 1), (2, 1, 3), (3, 2, 5), (4, 4, 5)]
    assert [round(o.jaccard, 2) for o in pair.overlaps] == [1.0, 0.33, 0.4, 0.8]
    assert pair.first_difference == 2
    assert pair.only_a == ("0.mlp",) and pair.only_b == ()
    text = render_text(c, curves=False)
    assert "A vs B: orders part at step 2 (A removed 2.mlp, B removed 3.attn)" in text
    assert "removed by A only: 0.mlp" in text
    assert "     2 A  ppl:x 12 (90.0%)" in text and "     2 B  ppl:x 15 (72.0%)" in text
    md = render_markdown(c)
    assert "| 3 | 2 | 0.40 |" in md and "| 2 | ppl:x 12 (90.0%) | ppl:x 15 (72.0%) |" in md


def test_a_prefix_never_parts_and_other_models_are_refused():
    a, _ = two_sessions()
    short = session_from(MODEL, steps=[Step("1.attn"), Step("2.mlp")])
    assert compare([a, short], ["a", "s"]).pairs[0].first_difference is None
    other = session_from({**MODEL, "num_blocks": 6}, steps=[Step("1.attn")])
    with pytest.raises(FinercutError, match="another model"):
        compare([a, other], ["a", "o"])
    with pytest.raises(FinercutError, match="two or more sessions"):
        compare([a], ["a"])


def test_compare_the_recorded_smollm2_sessions(capsys, tmp_path):
    finercut, joint = SESSIONS / "smollm2-finercut-all.yaml", SESSIONS / "smollm2-joint-drop.yaml"
    assert main(["compare", str(finercut), str(joint)]) == 0
    out = capsys.readouterr().out
    assert "A vs B: orders part at step 2 (A removed 7.attn, B removed 26.attn)" in out
    assert " 1    1    1.00" in out  # both removed 25.attn first
    assert "retained % of the unpruned model" in out and "winning score per step" in out
    svg = tmp_path / "c.svg"
    assert main(["compare", str(finercut), str(joint), "--format", "svg", "--out", str(svg)]) == 0
    root = ET.fromstring(svg.read_text())
    assert root.tag.endswith("svg") and "Jaccard" in svg.read_text()
