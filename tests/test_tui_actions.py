"""The action table: the keys of each screen, the command palette and the help screen all come from it,
and a key whose action cannot run now says why in one line, in every state (no model needed)."""

from __future__ import annotations

import asyncio

from data.sessions_fixture import live_script, session_30
from rich.console import Console
from test_tui_live import record_notifications, wait_for

from finercut_tui.tui import actions
from finercut_tui.tui.app import WorkbenchApp
from finercut_tui.tui.grid import LayerGrid
from finercut_tui.tui.live_screen import LiveScreen
from finercut_tui.tui.replay_screen import ReplayScreen
from finercut_tui.tui.screens import HelpScreen, help_text


def test_bindings_palette_and_help_come_from_one_table():
    for screen in (LiveScreen, ReplayScreen):
        offered = actions.offered(screen.KIND)
        assert [b.action for b in screen.BINDINGS] == [a.name for a in offered]
        for action in offered:
            assert callable(getattr(screen, f"action_{action.name}")), (screen, action.name)
        checks = [name.removeprefix("why_not_") for name in dir(screen) if name.startswith("why_not_")]
        assert set(checks) <= {a.name for a in offered}, (screen, checks)  # no check for a stray action
    console = Console(width=200, record=True)
    console.print(help_text())
    shown = console.export_text()
    for action in actions.ACTIONS:
        assert action.help in shown and (action.help_keys or action.shown_key) in shown
    assert len(actions.BY_KEY) == sum(len(a.keys.split(",")) for a in actions.ACTIONS)  # one action a key


def run(app: WorkbenchApp, body) -> None:
    async def go() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            await body(app, pilot)

    asyncio.run(go())


def test_replay_says_why_a_key_does_nothing():
    async def body(app, pilot) -> None:
        screen, grid = app.workbench, app.query_one(LayerGrid)
        said = record_notifications(app)

        await pilot.press("x")  # a live key
        assert said[-1].startswith("remove cell now needs a running search") and "step 3" in said[-1]

        await pilot.press("end", "right")  # at the last step: says so, and the cursor stays put
        assert app.replay_step == len(app.session.steps) and "the last step" in said[-1]
        assert grid.cursor_sid == "0.attn"
        await pilot.press("home", "left_square_bracket")
        assert app.replay_step == 0 and "step 0, the unpruned model" in said[-1]
        titles = [c.title for c in screen.palette_commands()]
        assert "Next step" in titles and "Previous step" not in titles  # the palette hides it

        screen.loading_from = 0  # as after `c`, while the model loads
        count = len(said)
        await pilot.press("c", "space")
        assert len(said) == count + 2
        assert "the model is loading to continue from step 0" in said[-2] and "loading" in said[-1]
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)  # help and q always act
        await pilot.press("escape", "q")
        await wait_for(pilot, lambda: not app.is_running, "the app to exit")

    run(WorkbenchApp(session_30(), "sessions/s30.yaml", replay_step=3), body)


def test_scripted_live_view_says_why_it_cannot_steer():
    session = session_30()

    async def body(app, pilot) -> None:
        assert isinstance(app.workbench, LiveScreen)
        said = record_notifications(app)
        await pilot.press("space", "n", "p", "x", "u", "e", "s")
        assert len(said) == 7
        assert all("scripted events" in line for line in said), said
        await pilot.press("c", "right_square_bracket")  # replay keys
        assert "is for replays" in said[-1] and "finercut-tui replay sessions/s30.yaml" in said[-1]
        await pilot.press("right")  # on the live screen the arrows move the cursor: no complaint
        assert app.query_one(LayerGrid).cursor_sid == "0.mlp" and len(said) == 9
        # nothing to steer; looking at the curves and the help still works
        assert [c.title for c in app.workbench.palette_commands()] == ["Curves / ranking", "Help"]

    run(WorkbenchApp(session, "sessions/s30.yaml", events=live_script(session, scored=20)), body)
