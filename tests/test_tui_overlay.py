"""The replay's overlay of a second session, the side panel's curves and the heals beside the evaluations
(pilot tests on the sessions recorded on SmolLM2-135M in sessions/; no model needed)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from test_tui_live import record_notifications, wait_for
from textual.widgets import Input

from finercut_tui.compare import removed_set
from finercut_tui.session import Session
from finercut_tui.tui.app import WorkbenchApp
from finercut_tui.tui.grid import CELL_WIDTH, ONLY_HERE, ONLY_THERE, LayerGrid
from finercut_tui.tui.panels import CurvesPlot, EvalTable, Legend, RankingTable
from finercut_tui.tui.screens import OverlayScreen

SESSIONS = Path(__file__).parent.parent / "sessions"
FINERCUT = SESSIONS / "smollm2-finercut-all.yaml"
JOINT = SESSIONS / "smollm2-joint-drop.yaml"
HEAL = SESSIONS / "smollm2-finercut-heal.yaml"


def run(app: WorkbenchApp, body, size: tuple[int, int] = (100, 30)) -> None:
    async def go() -> None:
        async with app.run_test(size=size) as pilot:
            await body(app, pilot)

    asyncio.run(go())


def replay(path: Path, step: int | None = None) -> WorkbenchApp:
    return WorkbenchApp(Session.load(path), str(path), replay_step=step)


def marked(grid: LayerGrid) -> dict[str, tuple[bool, str]]:
    """sid -> (removed here, the cell as drawn) for every cell the grid draws with an overlay mark."""
    out = {}
    for block in range(grid.layer_map.num_blocks):
        for k, kind in enumerate(("attn", "mlp")):
            x, y = grid.cell_origin(block, k)
            line = "".join(segment.text for segment in grid._row(y - 1))
            text = line[x : x + CELL_WIDTH]
            if text.startswith(ONLY_THERE) or text.rstrip().endswith(ONLY_HERE):
                out[f"{block}.{kind}"] = (text.startswith("×"), text)
    return out


def test_overlay_marks_where_two_sessions_differ_at_the_shown_step():
    here, there = Session.load(FINERCUT), Session.load(JOINT)

    async def body(app, pilot) -> None:
        screen, grid = app.workbench, app.query_one(LayerGrid)
        said = record_notifications(app)
        await pilot.press("o")
        await wait_for(pilot, lambda: isinstance(app.screen, OverlayScreen), "the overlay dialog")
        app.screen.query_one(Input).value = str(JOINT)
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen.overlay is not None and grid.overlay, "the overlay to be drawn")
        for step in (10, 11, 25, 0):
            screen.show_step(step)
            await wait_for(pilot, lambda step=step: app.replay_step == step, f"step {step}")
            a, b = removed_set(here, step), removed_set(there, step)
            cells = marked(grid)
            assert {sid for sid, (mine, _) in cells.items() if mine} == a - b
            assert {sid for sid, (mine, _) in cells.items() if not mine} == b - a
            # without colour: "×k≠" removed here only, "⊘k" removed there only
            assert all(text.startswith("×") and text.endswith("≠") for mine, text in cells.values() if mine)
            assert all(text.startswith("⊘") for mine, text in cells.values() if not mine)
            assert f"{len(a ^ b)} differ" in screen.device_text()
        assert step == 0 and not grid.overlay  # the unpruned models do not differ
        screen.show_step(10)
        await pilot.pause()
        legend = str(app.query_one(Legend).render())
        assert "removed here only" in legend and f"removed in {JOINT.name} only" in legend
        await pilot.press("o")  # again: cleared
        await wait_for(pilot, lambda: screen.overlay is None and not grid.overlay, "the overlay to clear")
        assert "removed here only" not in str(app.query_one(Legend).render())
        assert not said  # nothing to complain about

    run(replay(FINERCUT, 10), body)


def test_overlay_of_another_model_says_why_in_one_line(tmp_path):
    other = tmp_path / "other.yaml"
    text = JOINT.read_text()  # same size, another model
    other.write_text(text.replace("architecture: LlamaForCausalLM", "architecture: MistralForCausalLM", 1))

    async def body(app, pilot) -> None:
        screen = app.workbench
        said = record_notifications(app)
        assert not screen.set_overlay(other)
        assert not screen.set_overlay(tmp_path / "missing.yaml")
        assert len(said) == 2 and "another model" in said[0] and "cannot overlay" in said[1]
        assert all("\n" not in line for line in said)
        assert screen.overlay is None and not app.query_one(LayerGrid).overlay
        await pilot.press("g", "g")  # the live/replay keys still act
        await pilot.press("space")
        assert "needs a running search" in said[-1]

    run(replay(FINERCUT, 5), body)


def test_curves_toggle_cycles_the_side_panel():
    async def body(app, pilot) -> None:
        screen = app.workbench
        ranking, plot = app.query_one(RankingTable), app.query_one(CurvesPlot)
        assert ranking.display and not plot.display
        seen = []
        for _ in range(3):
            await pilot.press("g")
            await wait_for(pilot, lambda: plot.display and screen.curves not in seen, "the next curve")
            seen.append(screen.curves)
            assert not ranking.display and plot.size.height >= 5
        assert seen == [
            "retained % of the unpruned model",
            "evaluation results",
            "winning score per step (lower = more removable)",
        ]
        assert "(g: next)" in str(app.query_one("#ranking-title").render())
        await pilot.press("g")
        await wait_for(pilot, lambda: ranking.display and not plot.display, "the ranking again")
        assert screen.curves is None

    run(replay(FINERCUT, 10), body, size=(80, 24))


def test_curves_key_says_why_when_there_is_nothing_to_draw(tmp_path):
    session = Session.load(JOINT)
    session.evals = []
    for step in session.steps:
        step.score = None
    path = tmp_path / "bare.yaml"
    session.save(path)

    async def body(app, pilot) -> None:
        said = record_notifications(app)
        await pilot.press("g")
        assert app.workbench.curves is None and said and "no curves yet" in said[-1]

    run(replay(path), body)


def test_heals_are_listed_beside_the_unhealed_evaluations():
    async def body(app, pilot) -> None:
        table = app.query_one(EvalTable)
        rows = [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]
        heal = next(r for r in rows if r[0].startswith("heal@"))
        assert heal[0] == "heal@10" and "->" in heal[1] and "ppl:pydoc" in heal[2] and "->" in heal[2]
        assert rows.index(heal) == 1 + next(i for i, r in enumerate(rows) if r[0] == "10")
        app.workbench.show_step(9)  # before the healed step: not shown
        await pilot.pause()
        assert not any(str(table.get_row_at(i)[0]).startswith("heal@") for i in range(table.row_count))

    run(replay(HEAL), body)


def test_repairs_are_listed_after_the_heals_of_their_step(tmp_path):
    from finercut_tui.domain.repairs import PatchRecord, RepairRecord

    session = Session.load(HEAL)
    heal = session.heals[0]
    patch = PatchRecord(run=("7.attn",), sublayer="6.mlp", error_before=0.5, error_after=0.3)
    session.repairs = [
        RepairRecord(step=heal.step, ridge=0.1, patches=(patch,), before=heal.before, after=heal.after)
    ]
    path = tmp_path / "repaired.yaml"
    session.save(path)

    async def body(app, pilot) -> None:
        table = app.query_one(EvalTable)
        rows = [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]
        repair = next(r for r in rows if r[0].startswith("repair@"))
        assert repair[0] == f"repair@{heal.step}" and "->" in repair[1] and "ppl:pydoc" in repair[2]
        assert rows.index(repair) == 1 + next(i for i, r in enumerate(rows) if r[0].startswith("heal@"))
        app.workbench.show_step(heal.step - 1)
        await pilot.pause()
        assert not any(str(table.get_row_at(i)[0]).startswith("repair@") for i in range(table.row_count))

    run(replay(path), body)
