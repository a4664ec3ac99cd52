"""Replay: a saved session opens with no model and no torch, and shows at every step exactly the
removed set the session recorded."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from data.sessions_fixture import session_30
from test_tui_live import record_notifications, wait_for

from finercut_tui.domain.sublayers import KINDS, expand
from finercut_tui.layer_map import CellState
from finercut_tui.session import Session

DATA = Path(__file__).parent / "data"

# A fresh interpreter: record who imports torch / transformers first, build the replay app through
# the CLI's own parser, render its first frame headless, report what got imported.
PROBE = r"""
import importlib.abc, json, sys, traceback
culprits = {}

class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in ("torch", "transformers") and name not in culprits:
            chain = [f.filename for f in traceback.extract_stack() if "finercut_tui" in f.filename]
            culprits[name] = [p.split("finercut_tui", 1)[1] for p in chain]
        return None

sys.meta_path.insert(0, Watch())
from finercut_tui.cli import build_parser
args = build_parser().parse_args(["replay", sys.argv[1]])
from finercut_tui.commands.replay import build_app
app = build_app(args.session, args.step)

import asyncio
async def first_frame():
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        return app.map.removed_units
removed = asyncio.run(first_frame())
print(json.dumps({"culprits": culprits,
                  "modules": sorted(m for m in ("torch", "transformers") if m in sys.modules),
                  "removed": removed}))
"""


def test_replay_never_imports_torch_or_a_model():
    path = DATA / "sessions_fixture_30.yaml"
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, timeout=600, check=True
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["removed"] == Session.load(path).removed_at()
    # on failure, `culprits` is the chain of finercut_tui modules through which torch got imported
    assert report["modules"] == [], report["culprits"]


def test_replay_shows_the_recorded_removed_set_at_every_step():
    from finercut_tui.tui.app import WorkbenchApp

    session = Session.load(DATA / "sessions_fixture_30.yaml")

    def removed_on_screen(app) -> set[str]:
        return {
            f"{b}.{k}"
            for b in range(session.num_blocks)
            for k in KINDS
            if app.map.cell(b, k).state is CellState.REMOVED
        }

    async def walk() -> None:
        app = WorkbenchApp(session, DATA / "sessions_fixture_30.yaml")
        async with app.run_test(size=(80, 24)) as pilot:
            assert app.replay_step == len(session.steps)  # opens at the end
            await pilot.press("home")
            for k in range(len(session.steps) + 1):
                assert app.replay_step == k
                assert app.map.removed_units == session.removed_at(k)
                assert removed_on_screen(app) == set(expand(session.removed_at(k)))
                if k < len(session.steps):
                    scores = session.steps[k].scores
                    if scores:  # the ranking on screen is what step k+1 chose from
                        assert app.map.ranking()[0][0] == min(scores, key=lambda u: (scores[u], u))
                        assert app.map.next_unit == session.steps[k].removed
                await pilot.press("right" if k % 2 else "right_square_bracket")
            assert app.replay_step == len(session.steps)
            await pilot.press("left", "left_square_bracket")
            assert app.replay_step == len(session.steps) - 2
            await pilot.press("end")
            assert app.replay_step == len(session.steps)
            # live-only keys act on nothing in replay, and say so; the file is untouched
            before = (DATA / "sessions_fixture_30.yaml").read_text()
            said = record_notifications(app)
            await pilot.press("x", "p", "u", "space", "s", "n", "e")
            assert len(said) == 7 and all("c continues the search from step" in line for line in said)
            assert (DATA / "sessions_fixture_30.yaml").read_text() == before
            await pilot.press("q")
        assert app.return_code == 0

    asyncio.run(walk())


def test_fixture_files_match_their_builder():
    """The committed YAML fixtures are what tests/data/sessions_fixture.py builds."""
    built = session_30()
    saved = Session.load(DATA / "sessions_fixture_30.yaml")
    assert saved.removed_at() == built.removed_at()
    assert [s.scores for s in saved.steps] == [s.scores for s in built.steps]


def test_replay_rejects_a_bad_step(tmp_path):
    from finercut_tui.cli import main

    assert main(["replay", str(DATA / "sessions_fixture_30.yaml"), "--step", "99"]) == 2
    assert main(["replay", str(tmp_path / "missing.yaml")]) == 2


def test_command_palette_runs_the_replay_actions():
    from textual.command import CommandList, CommandPalette

    from finercut_tui.tui.app import WorkbenchApp

    async def go() -> int:
        app = WorkbenchApp(session_30(), "sessions/s30.yaml", replay_step=3)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("ctrl+p")
            await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette), "the palette")
            await pilot.press(*"previous step")
            hits = app.screen.query_one(CommandList)
            await wait_for(pilot, lambda: hits.option_count == 1, "the one hit")
            assert "Previous step" in str(hits.get_option_at_index(0).prompt)
            await pilot.press("enter")
            await wait_for(pilot, lambda: app.replay_step != 3, "the command to run")
            return app.replay_step

    assert asyncio.run(go()) == 2


def test_no_color_flag_is_set_before_the_app_exists(monkeypatch):
    import os

    from finercut_tui.cli import build_parser
    from finercut_tui.commands.replay import build_app
    from finercut_tui.commands.tui import apply_terminal_args

    monkeypatch.setenv("NO_COLOR", "")
    monkeypatch.delenv("NO_COLOR")
    path = str(DATA / "sessions_fixture_30.yaml")
    assert not build_app(path).no_color
    args = build_parser().parse_args(["replay", path, "--no-color"])
    apply_terminal_args(args)
    assert "NO_COLOR" in os.environ
    assert build_app(path).no_color


def test_mouse_click_moves_the_cursor():
    from finercut_tui.tui.app import WorkbenchApp
    from finercut_tui.tui.grid import LayerGrid

    async def go() -> tuple[str, str]:
        app = WorkbenchApp(session_30(), "sessions/s30.yaml")
        async with app.run_test(size=(80, 24)) as pilot:
            grid = app.query_one(LayerGrid)
            x, y = grid.cell_origin(17, 1)  # 17.mlp, in the second column of blocks
            await pilot.click(LayerGrid, offset=(x + 1 + 1, y))  # +1: the grid's left padding
            first = grid.cursor_sid
            x, y = grid.cell_origin(3, 0)
            await pilot.click(LayerGrid, offset=(x + 1, y))
            return first, grid.cursor_sid

    assert asyncio.run(go()) == ("17.mlp", "3.attn")
