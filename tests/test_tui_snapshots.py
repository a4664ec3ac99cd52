"""Snapshot tests of the workbench (pytest-textual-snapshot), driven by fixed sessions and scripted
event sequences so they are deterministic. Accept changes with `pytest --snapshot-update` after
looking at the SVGs (a failing run writes a side-by-side report)."""

from __future__ import annotations

from pathlib import Path

import pytest
from data.sessions_fixture import live_script, session_30, session_80

from finercut_tui.session import Session
from finercut_tui.tui.app import WorkbenchApp


def live_30_blocks() -> WorkbenchApp:
    session = session_30()
    return WorkbenchApp(
        session,
        "sessions/llama-2-7b.yaml",
        events=live_script(session, scored=20),
        clock=lambda: 1000.0,
        device="cuda:0 · 13.2/80 GiB",
    )


def test_grid_30_blocks_mid_search_fits_80x24(snap_compare):
    assert snap_compare(live_30_blocks(), terminal_size=(80, 24))


def test_replay_80_blocks_folds_into_columns_at_120x40(snap_compare):
    app = WorkbenchApp(session_80(), "sessions/big-80.yaml", replay_step=24)
    # one step forward and the cursor moved: the grid, ranking and cell details follow
    assert snap_compare(app, press=["right", "down", "down", "l"], terminal_size=(120, 40))


def test_no_color_mode_reads_from_glyphs(snap_compare, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")  # read when the App is created
    app = live_30_blocks()
    assert app.no_color
    assert snap_compare(app, terminal_size=(80, 24))


# -- the recorded SmolLM2-135M sessions: FinerCut with joint drop laid over it, and the curves ---------
REPO = Path(__file__).parent.parent
FINERCUT = "sessions/smollm2-finercut-all.yaml"  # relative, as the screen shows them
JOINT = "sessions/smollm2-joint-drop.yaml"


def finercut_replay(monkeypatch, step: int = 10) -> WorkbenchApp:
    monkeypatch.chdir(REPO)
    return WorkbenchApp(Session.load(FINERCUT), FINERCUT, replay_step=step)


async def overlay_joint_drop(pilot) -> None:
    assert pilot.app.workbench.set_overlay(JOINT)
    await pilot.pause()


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_replay_overlay_marks_where_joint_drop_differs(snap_compare, monkeypatch, size):
    app = finercut_replay(monkeypatch)
    assert snap_compare(app, run_before=overlay_joint_drop, terminal_size=size)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_curves_in_the_side_panel(snap_compare, monkeypatch, size):
    app = finercut_replay(monkeypatch, step=20)
    assert snap_compare(app, press=["g"], terminal_size=size)
