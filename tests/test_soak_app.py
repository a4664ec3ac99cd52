"""The workbench under random keys (issue 25): a property-based soak of the real app on a tiny Llama.

Hypothesis draws a starting state (a live search, a finished one, a `tui --resume`, a replay, a replay
with an overlay) and a sequence of keys: every key of the action table, the cursor keys, the palette,
the dialogs' keys and typed text (targets, evaluation settings, session paths; valid and not). Each
key is pressed through Textual's pilot, and after it, once the search has settled:

- no exception, and the app still answers;
- a key of the action table either acted (something the user can see changed: the grid, the pins,
  the pause state, a dialog, the side panel, the log, the replayed step) or showed a one-line reason;
- the session on disk loads and agrees with the screen: removed cells, pins, step count (a replay
  never writes its file).

At the end the app quits, and `run --resume` of the session, headless, gives the order its recorded
steps imply: the steps as recorded, then FinerCut's greedy continuation from them, computed by the
slow reference in tests/reference.py; with only searching keys, the uninterrupted order.

CI runs `FINERCUT_SOAK` sequences (default 12) with hypothesis' fixed seed; `FINERCUT_SOAK=500
pytest tests/test_soak_app.py` is the long soak. A failing sequence is shrunk to a minimal one.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from reference import greedy_finercut
from test_tui_live import ENGLISH, make_job, record_notifications

from finercut_tui.cli import main
from finercut_tui.domain.events import SublayerRemoved
from finercut_tui.domain.pins import Pins
from finercut_tui.layer_map import LayerMap
from finercut_tui.session import Session

SEQUENCES = int(os.environ.get("FINERCUT_SOAK", "12"))
MAX_KEYS = 14
SETTLE_S = 120.0  # a ceiling for a condition that never comes; a slow machine only waits longer
STATES = ("live", "finished", "resume", "replay", "overlay")
TARGET = 3  # removals of the live searches (the tiny model has 8 sublayers)

SEARCHING = {"space", "n", "e", "s", "g", "q", "question_mark", "escape", "enter", "tab", "y"}
SEARCHING |= {"left", "right", "up", "down", "home", "end", "h", "j", "k", "l"}
SEARCHING |= {"left_square_bracket", "right_square_bracket"}
CHANGING = {"p", "x", "u", "c", "o", "ctrl+p"}  # keys that change the order, or may (the palette)
TYPED = ("type:ppl", "type:missing", "type:3", "type:-1", "type:all", "type:junk", "type:overlay")
KEYS = sorted(SEARCHING | CHANGING) + list(TYPED)


@dataclass
class Soak:
    """What one sequence ran: keys, how many of the action table's keys acted or said why."""

    keys: list[str] = field(default_factory=list)
    acted: int = 0
    refused: int = 0


@pytest.fixture(scope="module")
def world(tmp_path_factory, request):
    """The tiny model on disk and loaded, its calibration ids, the uninterrupted full order, and a
    finished session of TARGET removals (and a different one to lay over it)."""
    from builders import save_tiny_checkpoint
    from transformers import AutoModelForCausalLM

    from finercut_tui.data.calibration import build_calibration
    from finercut_tui.model.loading import ModelSpec, load_model

    root = tmp_path_factory.mktemp("soak")
    tiny = root / "tiny"
    save_tiny_checkpoint(tiny, "llama")
    loaded = load_model(ModelSpec(str(tiny), dtype="float32", device="cpu"), progress=lambda m: None)
    reference = AutoModelForCausalLM.from_pretrained(tiny, dtype="float32").eval()
    ids = build_calibration(loaded.pm.tokenizer, ENGLISH, 2, 16).input_ids
    full, _ = greedy_finercut(reference, ids, "js", 8)
    recorded = root / "recorded"
    recorded.mkdir()
    job = make_job(recorded, loaded, target=str(TARGET))
    for _ in job.events():
        pass
    other_dir = root / "other"
    other_dir.mkdir()
    other = make_job(other_dir, loaded, target="2", method="joint-drop")
    for _ in other.events():
        pass
    return {
        "tiny": tiny,
        "loaded": loaded,
        "reference": reference,
        "ids": ids,
        "full": full,
        "recorded": job.session_path,
        "other": other.session_path,
    }


# -- starting states -----------------------------------------------------------------------------------
def start(state: str, world, folder: Path):
    """(the app, the session file it works on) for a starting state."""
    from finercut_tui.tui.app import WorkbenchApp

    loaded = world["loaded"]
    if state in ("replay", "overlay"):
        path = folder / "replayed.yaml"
        shutil.copy(world["recorded"], path)
        return WorkbenchApp(Session.load(path), path), path
    if state == "resume":  # a session stopped after its first removal, continued as `tui --resume`
        first = make_job(folder, loaded, target=str(TARGET))
        events = first.events()
        for event in events:
            if isinstance(event, SublayerRemoved):
                first.controller.cancel()
        job = make_job(folder, loaded, target=str(TARGET), resume=True)
    else:
        job = make_job(folder, loaded, target="2" if state == "finished" else str(TARGET))
    if state != "finished":
        job.controller.pause()  # every key acts at a known point
    return WorkbenchApp(job.session, job.session_path, job=job), job.session_path


# -- what a user can see -------------------------------------------------------------------------------
def seen(app) -> tuple:
    """Everything a key can change that the user sees (or that the next key acts on)."""
    wb = app.workbench
    m = app.map
    job = getattr(wb, "job", None)
    controller = getattr(job, "controller", None)
    return (
        app.is_running,
        type(app.screen).__name__,
        wb.__class__.__name__,
        app.replay_step,
        app.workbench.query_one("#grid").cursor_position,
        tuple(r.unit for r in m.removals),
        tuple(m.pins.canonical()),
        m.paused,
        m.finished,
        m.target,
        getattr(wb, "curves", None),
        getattr(wb, "overlay_path", None),
        getattr(controller, "paused", None),
        len(m.evals),
        len(wb.log_history()),
        len(app.notes),
    )


def settled(app) -> bool:
    """The search (if any) waits for the user: paused, finished or gone, nothing queued or in flight."""
    from finercut_tui.tui.replay_screen import ReplayScreen

    if not app.is_running:
        return True
    wb = app.workbench
    if isinstance(wb, ReplayScreen):
        return wb.loading_from is None
    job, m = wb.job, wb.map
    if wb.inbox._items or not job.controller.idle or m.evaluating:
        return False
    if not wb.search_alive or m.finished:
        return True
    return job.controller.paused and m.paused


def disagreement(app, path: Path, original: bytes | None) -> str | None:
    """Why the session on disk and the screen disagree (None when they agree)."""
    from finercut_tui.tui.replay_screen import ReplayScreen

    wb = app.workbench
    if isinstance(wb, ReplayScreen):
        if original is not None and path.read_bytes() != original:
            return f"the replay changed {path}"
        want = LayerMap.from_session(wb.session, wb.step)
        if [r.unit for r in want.removals] != [r.unit for r in wb.map.removals]:
            return f"the replay shows other removals than its session at step {wb.step}"
        return None
    disk = Session.load(wb.session_path)  # loads: never half-written
    shown = [r.unit for r in wb.map.removals]
    if disk.removed_at() != shown:
        return f"disk removes {disk.removed_at()}, the screen shows {shown}"
    if list(Pins(disk.pinned).canonical()) != list(wb.map.pins.canonical()):
        return f"disk pins {list(Pins(disk.pinned).canonical())}, the screen {list(wb.map.pins.canonical())}"
    if len(disk.steps) != len(wb.map.removals):
        return f"disk has {len(disk.steps)} steps, the screen {len(wb.map.removals)}"
    return None


async def wait_settled(pilot, app, path: Path, original: bytes | None, after: str) -> None:
    deadline = time.monotonic() + SETTLE_S
    while True:
        await pilot.pause(0.01)
        why = "the search did not settle" if not settled(app) else None
        if why is None and app.is_running:
            why = disagreement(app, path, original)
        if why is None:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"after {after!r}: {why}")


async def press(pilot, app, key: str, world) -> None:
    """Press one drawn key; typed text goes into the focused input (nowhere when none has focus)."""
    from textual.widgets import Input

    if key.startswith("type:"):
        text = {
            "type:ppl": ENGLISH,
            "type:missing": "no/such/file.txt",
            "type:3": "3",
            "type:-1": "-1",
            "type:all": "all",
            "type:junk": "x7;",
            "type:overlay": str(world["other"]),
        }[key]
        focused = app.focused
        if isinstance(focused, Input):
            focused.insert_text_at_cursor(text)
        return
    await pilot.press(key)


def action_key(app, key: str):
    """The action-table entry a key stands for on the workbench now (None: a dialog has the keys)."""
    from finercut_tui.tui import actions

    if app.screen is not app.workbench:
        return None
    action = actions.BY_KEY.get(key)
    if action is None or app.workbench.KIND in action.screens:
        return action
    taken = app.workbench.active_bindings.get(key)  # the other screen's key, a cursor key here (home)
    return None if taken is not None and taken.enabled else action


async def drive(state: str, keys: list[str], world, soak: Soak) -> Path:
    """One sequence: start, press every key with the checks above, quit; returns the session path."""
    folder = Path(tempfile.mkdtemp(prefix="soak-"))
    app, path = start(state, world, folder)
    app.notes = record_notifications(app)  # every notification shown, in order (none expires here)
    original = path.read_bytes() if state in ("replay", "overlay") else None
    async with app.run_test(size=(100, 30)) as pilot:
        if state == "overlay":
            app.workbench.set_overlay(world["other"])
        if state == "finished":
            deadline = time.monotonic() + SETTLE_S
            while not app.map.finished:
                assert time.monotonic() < deadline, "the search never finished"
                await pilot.pause(0.02)
        await wait_settled(pilot, app, path, original, "start")
        for i, key in enumerate(keys):
            if not app.is_running:
                break
            action = action_key(app, key)
            reason = app.workbench.why_not(action.name) if action else None
            before = seen(app)
            notes_before = len(app.notes)
            await press(pilot, app, key, world)
            await wait_settled(pilot, app, path, original, f"key {i + 1} {key}")
            if not app.is_running:  # q
                soak.acted += action is not None
                break
            if app.workbench.__class__.__name__ == "LiveScreen" and state in ("replay", "overlay"):
                path, original = Path(app.workbench.session_path), None  # c continued the replay
            if action is None:
                continue
            new_notes = app.notes[notes_before:]
            assert all("\n" not in n for n in new_notes), f"key {key}: a notification of several lines"
            if reason is not None:
                soak.refused += 1
            assert seen(app) != before, (
                f"key {i + 1} {key!r} did nothing and said nothing (why_not: {reason})"
            )
            soak.acted += 1
        await quit_app(pilot, app)
    return path


async def quit_app(pilot, app) -> None:
    """Close any dialog, then q (answering yes when an evaluation runs), and wait for the exit."""
    deadline = time.monotonic() + SETTLE_S
    while app.is_running:
        assert time.monotonic() < deadline, "the app never quit"
        if app.screen is app.workbench:
            await pilot.press("q")
        elif type(app.screen).__name__ == "ConfirmScreen":
            await pilot.press("y")
        else:
            await pilot.press("escape")
        await pilot.pause(0.05)


def check_resume(path: Path, keys: list[str], world) -> None:
    """`run --resume` headless gives the recorded steps, then the greedy continuation from them."""
    recorded = Session.load(path)
    if recorded.spec.method != "finercut":
        return
    code = main(["run", "--model", str(world["tiny"]), "--session", str(path), "--resume", "--quiet"])
    assert code == 0, f"run --resume of {path} failed"
    resumed = Session.load(path)
    done = recorded.removed_at()
    assert resumed.removed_at()[: len(done)] == done, "resume rewrote the recorded steps"
    assert resumed.finished
    target = resumed.method.target
    want, _ = greedy_finercut(
        world["reference"],
        world["ids"],
        "js",
        target,
        pinned=sorted(Pins(resumed.pinned).sublayers),
        start=done,
    )
    assert resumed.removed_at() == want, f"resumed {resumed.removed_at()}, the recorded steps imply {want}"
    if all(k in SEARCHING or k.startswith("type:") for k in keys):
        assert resumed.removed_at() == world["full"][: len(want)], "not the uninterrupted order"


def run_sequence(state: str, keys: list[str], world) -> Soak:
    soak = Soak(keys=list(keys))
    path = asyncio.run(drive(state, keys, world, soak))
    check_resume(path, keys, world)
    return soak


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


TOTALS = {"sequences": 0, "keys": 0, "acted": 0, "refused": 0}


@settings(
    max_examples=SEQUENCES,
    derandomize=True,  # a fixed seed: CI runs the same sequences every time
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(state=st.sampled_from(STATES), keys=st.lists(st.sampled_from(KEYS), min_size=1, max_size=MAX_KEYS))
def test_random_keys_in_every_state(world, state, keys):
    note(f"state {state}, keys {keys}")
    soak = run_sequence(state, keys, world)
    TOTALS["sequences"] += 1
    TOTALS["keys"] += len(keys)
    TOTALS["acted"] += soak.acted
    TOTALS["refused"] += soak.refused


def test_soak_figures_are_printed(capsys):
    """The soak's counts, for README's Reliability section (`pytest -s tests/test_soak_app.py`)."""
    with capsys.disabled():
        print(f"\nsoak: {TOTALS}")
    assert TOTALS["sequences"] == SEQUENCES or TOTALS["sequences"] == 0


def test_a_key_that_does_nothing_is_caught(world, monkeypatch):
    """A mutation in this test's own setup: `p` does nothing and says nothing. The soak catches it."""
    from finercut_tui.tui.live_screen import LiveScreen

    monkeypatch.setattr(LiveScreen, "action_pin", lambda self: None)
    with pytest.raises(AssertionError, match="'p' did nothing and said nothing"):
        run_sequence("live", ["p"], world)


def test_a_key_that_raises_is_caught(world, monkeypatch):
    """A mutation: `u` raises inside its handler. The soak sees the app fail."""
    from finercut_tui.tui.live_screen import LiveScreen

    def broken(self):
        raise RuntimeError("broken undo")

    monkeypatch.setattr(LiveScreen, "action_undo", broken)
    with pytest.raises(Exception, match="broken undo"):
        run_sequence("live", ["n", "u"], world)
