"""Snapshot tests of the workbench (pytest-textual-snapshot), driven by fixed sessions and scripted
event sequences so they are deterministic. Accept changes with `pytest --snapshot-update` after
looking at the SVGs (a failing run writes a side-by-side report)."""

from __future__ import annotations

from data.sessions_fixture import live_script, session_30, session_80

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
