"""Every recorded session in sessions/ validates, replays step by step, and `show` prints its map."""

import asyncio
import shlex
from pathlib import Path

import pytest

from finercut_tui.cli import build_parser, main
from finercut_tui.domain.sublayers import expand
from finercut_tui.session import Session

SESSIONS = sorted((Path(__file__).parents[1] / "sessions").glob("*.yaml"))


def test_the_three_recorded_sessions_are_there():
    methods = {Session.load(p).spec.method for p in SESSIONS}
    assert {"finercut", "attn-drop", "joint-drop"} <= methods


@pytest.mark.parametrize("path", SESSIONS, ids=lambda p: p.name)
def test_session_validates_and_records_its_command(path):
    session = Session.load(path)
    assert session.model.name_or_path == "smollm2-135m" and session.num_blocks == 30
    assert session.finished and len(session.steps) == session.method.target
    assert session.command.startswith("finercut-tui run ")
    build_parser().parse_args(shlex.split(session.command)[1:])  # the recorded command still parses
    evals = session.evals
    assert evals and evals[0].step == 0 and any(e.step > 0 and e.retained for e in evals)


@pytest.mark.parametrize("path", SESSIONS, ids=lambda p: p.name)
def test_show_prints_the_map(path, capsys):
    session = Session.load(path)
    assert main(["show", str(path), "--step", str(len(session.steps) // 2)]) == 0
    out = capsys.readouterr().out
    assert "block" in out and "attn" in out and f"{session.num_blocks - 1}" in out


@pytest.mark.parametrize("path", SESSIONS, ids=lambda p: p.name)
def test_replay_shows_the_recorded_removals_at_every_step(path):
    from finercut_tui.tui.app import WorkbenchApp

    session = Session.load(path)

    async def walk() -> None:
        app = WorkbenchApp(session, path)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("home")
            for k in range(len(session.steps) + 1):
                assert app.replay_step == k
                assert set(expand(app.map.removed_units)) == set(expand(session.removed_at(k)))
                await pilot.press("right")
            await pilot.press("q")

    asyncio.run(walk())


BAKEOFF = sorted((Path(__file__).parents[1] / "sessions" / "bakeoff-smollm2").glob("*.yaml"))
SHIPPED = SESSIONS + BAKEOFF + sorted((Path(__file__).parent / "data").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_session_loads_and_saves_back_byte_for_byte(path, tmp_path):
    Session.load(path).save(tmp_path / "again.yaml")
    assert (tmp_path / "again.yaml").read_bytes() == path.read_bytes()


def test_the_committed_bake_off_has_every_method_and_its_table_evaluations():
    """README's comparison of methods comes from these sessions: each method, each target evaluated."""
    from finercut_tui.bakeoff import DEFAULT_METHODS

    methods = {Session.load(p).spec.method for p in BAKEOFF}
    assert methods == set(DEFAULT_METHODS)
    for path in BAKEOFF:
        session = Session.load(path)
        assert session.finished and any(e.step == 0 for e in session.evals)
        assert all(not e.failed for e in session.evals)
