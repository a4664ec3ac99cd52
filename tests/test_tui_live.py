"""Pilot tests of the live workbench on a tiny Llama: every key, checked against the engine and the
session file on disk. The model is built and loaded once per module; each test gets a fresh job."""

from __future__ import annotations

import asyncio
import functools
import time
from pathlib import Path

import pytest

from finercut_tui.layer_map import CellState
from finercut_tui.session import Session

DATA = Path(__file__).parent / "data"
ENGLISH = str(DATA / "english.txt")


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """The app leaves a core to the UI on CPU (torch.set_num_threads): undo it for other tests."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    from builders import save_tiny_checkpoint

    path = tmp_path_factory.mktemp("tiny-llama")
    save_tiny_checkpoint(path, "llama")
    return path


@pytest.fixture(scope="module")
def loaded(tiny_dir):
    from finercut_tui.model.loading import ModelSpec, load_model

    return load_model(ModelSpec(str(tiny_dir), dtype="float32", device="cpu"), progress=lambda m: None)


def make_job(tmp_path: Path, loaded, target: str = "3", resume: bool = False, **options):
    from finercut_tui.domain.spec import CalibrationSpec, SearchSetup, SearchSpec
    from finercut_tui.model.loading import ModelSpec
    from finercut_tui.search.job import prepare_job

    opts = SearchSetup(spec=SearchSpec(target=target, **options), calibration=CalibrationSpec(ENGLISH, 2, 16))
    spec = ModelSpec(str(loaded.spec.name_or_path), dtype="float32", device="cpu")
    return prepare_job(opts, spec, tmp_path / "s.yaml", resume=resume, loaded=loaded, progress=lambda m: None)


async def wait_for(pilot, predicate, what: str, ceiling: float = 120.0) -> None:
    """Poll until `predicate()` holds; the ceiling only catches a condition that never comes (a loaded
    machine is slow, never wrong), so no test here makes a timing claim. Before a key that depends on
    what the screen shows, wait on the screen (app.map) too: it follows the session a little later."""
    deadline = time.monotonic() + ceiling
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} never happened")
        await pilot.pause(0.02)


async def evaluate_perplexity(pilot, app, max_tokens: str = "64") -> None:
    """e, then the dialog filled with perplexity on tests/data/english.txt, then enter."""
    from textual.widgets import Input

    from finercut_tui.tui.screens import EvalScreen

    await pilot.press("e")
    await wait_for(pilot, lambda: isinstance(app.screen, EvalScreen), "the eval dialog")
    app.screen.query_one("#ppl", Input).value = ENGLISH
    app.screen.query_one("#ppl_max_tokens", Input).value = max_tokens
    app.screen.query_one("#ppl", Input).focus()
    await pilot.press("enter")


def record_notifications(app) -> list[str]:
    """Every notification the app shows from now on (still shown)."""
    seen: list[str] = []
    show = app.notify

    def notify(message, **kwargs):
        seen.append(str(message))
        return show(message, **kwargs)

    app.notify = notify
    return seen


def run_async(test):
    """Run an async test body with asyncio (no pytest async plugin needed)."""

    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        asyncio.run(test(*args, **kwargs))

    return wrapper


def on_disk(job) -> Session:
    return Session.load(job.session_path)


@run_async
async def test_every_key_on_a_tiny_model(tmp_path, loaded):

    from finercut_tui.tui.app import WorkbenchApp
    from finercut_tui.tui.grid import LayerGrid
    from finercut_tui.tui.screens import HelpScreen

    job = make_job(tmp_path, loaded, target="3")
    job.controller.pause()  # start paused, so every key below acts at a known point
    app = WorkbenchApp(job.session, job.session_path, job=job)
    async with app.run_test(size=(100, 30)) as pilot:
        grid = app.query_one(LayerGrid)
        await wait_for(pilot, lambda: app.workbench.state() == "paused", "the search to pause")
        assert job.session.steps == []

        # n: exactly one removal, then paused again
        await pilot.press("n")
        # the UI applies events in order: a pause seen after the removal is the pause that follows it
        await wait_for(pilot, lambda: len(app.map.removals) == 1 and app.map.paused, "one step, then a pause")
        assert len(job.session.steps) == 1 and job.controller.paused
        first = job.session.steps[0]
        assert (
            first.by == "search" and first.scores and first.removed == min(first.scores, key=first.scores.get)
        )
        assert on_disk(job).removed_at() == [first.removed]
        assert app.map.cell(*_split(first.removed)).state is CellState.REMOVED

        # the cursor: arrows and hjkl
        await pilot.press("j", "down", "l")
        assert grid.cursor_sid == "2.mlp"
        await pilot.press("k", "h", "up", "right")
        assert grid.cursor_sid == "0.mlp"

        # p: pin the best remaining candidate; the engine and the file know
        best_next = min((u for u in first.scores if u != first.removed), key=first.scores.get)
        grid.move_cursor(*_grid_pos(best_next))
        await pilot.press("p")
        await wait_for(
            pilot, lambda: best_next in job.session.pinned and app.map.is_pinned(best_next), "the pin"
        )
        assert best_next in on_disk(job).pinned
        assert best_next in job.engine.pins
        assert app.map.cell(*_split(best_next)).state is CellState.PINNED

        # x: remove the cell under the cursor now, recorded as manual
        victim = "0.mlp"
        grid.move_cursor(*_grid_pos(victim))
        await pilot.press("x")
        await wait_for(
            pilot, lambda: len(job.session.steps) == len(app.map.removals) == 2, "the manual removal"
        )
        assert job.session.steps[-1].removed == victim and job.session.steps[-1].by == "manual"
        assert on_disk(job).steps[-1].by == "manual"
        assert victim in job.pm.removed

        # u: undo restores it and records the undo
        await pilot.press("u")
        await wait_for(pilot, lambda: len(job.session.steps) == len(app.map.removals) == 1, "the undo")
        assert victim not in job.pm.removed
        saved = on_disk(job)
        assert saved.removed_at() == [first.removed]
        assert saved.undone and saved.undone[-1].removed == victim
        assert app.map.cell(0, "mlp").state is not CellState.REMOVED

        # e: evaluate now (perplexity on a local text), the result lands in the session
        await evaluate_perplexity(pilot, app)
        await wait_for(
            pilot, lambda: len(job.session.evals) >= 2 and len(app.map.evals) >= 2, "the eval records"
        )
        steps_evaluated = [e.step for e in on_disk(job).evals]
        assert steps_evaluated == [0, 1]  # the unpruned baseline, then the current model
        assert job.session.evals[-1].retained
        assert len(app.map.evals) == 2

        # s: save
        job.session.notes = "saved by the test"
        await pilot.press("s")
        await wait_for(pilot, lambda: on_disk(job).notes == "saved by the test", "the save")

        # ?: help, then back
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)

        # space: resume until the target; the pin is respected
        await pilot.press("space")
        await wait_for(pilot, lambda: app.map.finished is not None, "the search to finish")
        await wait_for(pilot, lambda: on_disk(job).finished, "the finished session")
        final = on_disk(job)
        assert final.finished and len(final.steps) == 3
        assert best_next not in final.removed_at()
        assert app.workbench.state() == "finished"

        # q: quits (saves)
        await pilot.press("q")
        await wait_for(pilot, lambda: not app.is_running, "the app to exit")
    assert app.return_code == 0


@run_async
async def test_quit_mid_search_returns_within_one_candidate(tmp_path, loaded):
    from finercut_tui.tui.app import WorkbenchApp

    job = make_job(tmp_path, loaded, target="all")
    scorer = job.engine.scorer
    real_score = scorer.score
    begun_after_q = []

    def slow_score(uid):
        if job.controller.cancelled:
            begun_after_q.append(uid)
        time.sleep(0.05)  # a slower model: q lands while a candidate is being scored
        return real_score(uid)

    scorer.score = slow_score
    app = WorkbenchApp(job.session, job.session_path, job=job)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: len(job.session.steps) >= 1, "the first removal")
        await pilot.press("q")
        await wait_for(pilot, lambda: not app.is_running, "the app to exit")
    assert app.return_code == 0
    assert job.controller.cancelled
    # the search stops between candidates: at most one (cancelled as it began) starts after q
    assert len(begun_after_q) <= 1, begun_after_q
    saved = on_disk(job)
    assert 1 <= len(saved.steps) < 8 and not saved.finished
    assert saved.removed_at() == job.session.removed_at()

    # --resume in the app picks up where the quit left off and reaches the target
    done = saved.removed_at()
    resumed = make_job(tmp_path, loaded, target="all", resume=True)
    app = WorkbenchApp(resumed.session, resumed.session_path, job=resumed)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.map.finished, "the resumed search")
        assert [r.unit for r in app.map.removals[: len(done)]] == done
        await pilot.press("q")
    final = on_disk(resumed)
    assert final.removed_at()[: len(done)] == done and len(final.steps) == 8 and final.finished


@run_async
async def test_worker_error_shows_one_line_and_keeps_the_session(tmp_path, loaded):
    from textual.widgets import Log

    from finercut_tui.tui.app import WorkbenchApp

    job = make_job(tmp_path, loaded, target="all")
    scorer = job.engine.scorer
    real_score = scorer.score
    calls = {"n": 0}

    def failing_score(uid):
        calls["n"] += 1
        if calls["n"] > 10:  # after the first step (8 candidates) went through
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB\nmore details")
        return real_score(uid)

    scorer.score = failing_score
    app = WorkbenchApp(job.session, job.session_path, job=job)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.workbench.error is not None, "the error")
        await wait_for(pilot, lambda: not app.search_running, "the worker to end")
        error = app.workbench.error
        assert "out of GPU memory" in error and "\n" not in error

        def log_text() -> str:
            return "\n".join(str(line) for line in app.query_one(Log).lines)

        await wait_for(pilot, lambda: "error: out of GPU memory" in log_text(), "the error in the log")
        assert app.workbench.state() == "error"
        assert len(on_disk(job).steps) == 1  # the finished step is on disk, intact
        said = record_notifications(app)
        await pilot.press("x")  # the search is gone: x says so
        assert said and "stopped on an error" in said[-1]
        await pilot.press("s")
        await pilot.press("q")
        await wait_for(pilot, lambda: not app.is_running, "the app to exit")
    assert app.return_code == 0
    assert on_disk(job).removed_at() == job.session.removed_at()


@run_async
async def test_replay_continue_from_a_step_resumes_in_a_new_session(tmp_path, loaded):
    """`c` in replay writes the first K steps to <name>-from-K.yaml, loads the model and resumes."""
    from finercut_tui.tui.app import WorkbenchApp
    from finercut_tui.tui.live_screen import LiveScreen
    from finercut_tui.tui.screens import ConfirmScreen

    job = make_job(tmp_path, loaded, target="3")
    for _ in job.events():
        pass
    original = on_disk(job)
    assert len(original.steps) == 3

    app = WorkbenchApp(original, job.session_path, replay_step=3)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("left", "left")
        assert app.replay_step == 1
        await pilot.press("c")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the question")
        await pilot.press("y")
        new_path = tmp_path / "s-from-1.yaml"
        await wait_for(
            pilot, lambda: isinstance(app.workbench, LiveScreen) or app.workbench.error, "the model to load"
        )
        assert app.workbench.error is None, app.workbench.error
        await wait_for(pilot, lambda: app.map.finished is not None, "the continued search")
        await wait_for(pilot, lambda: Session.load(new_path).finished, "the continued session")
        log = app.workbench.log_history()
        assert any(line.startswith("wrote ") for line in log)  # the replay's log goes on in the live screen
        assert any("model loaded: continuing s-from-1.yaml" in line for line in log)
        await pilot.press("q")
        await wait_for(pilot, lambda: not app.is_running, "the app to exit")
    continued = Session.load(new_path)
    assert continued.removed_at()[:1] == original.removed_at()[:1]
    assert len(continued.steps) == 3 and continued.finished
    assert "continued from s.yaml at step 1" in continued.notes
    assert on_disk(job).removed_at() == original.removed_at()  # the replayed file is untouched


def _split(sid: str) -> tuple[int, str]:
    block, kind = sid.split(".")
    return int(block), kind


def _grid_pos(sid: str) -> tuple[int, int]:
    block, kind = _split(sid)
    return block, 0 if kind == "attn" else 1


class BlockingJob:
    """A stand-in job (no model): starts an evaluation and holds it until cancelled."""

    def __init__(self, session_path: Path) -> None:
        from data.sessions_fixture import make_session

        from finercut_tui.domain.spec import SearchSetup
        from finercut_tui.search.controller import Controller

        self.session = make_session(8, 2)
        self.session_path = session_path
        self.setup = SearchSetup()
        self.controller = Controller()
        self.loaded = None
        self.saves = 0

    def events(self, serve: bool = False):
        from finercut_tui.domain import events as E

        yield E.SearchStarted("finercut", "js", 8, 4, "sublayer", tuple(self.session.removed_at()), ())
        yield E.EvalStarted(2, "ppl wikitext2 (seq 2048)")
        while not self.controller.cancelled:
            time.sleep(0.01)
        yield E.SearchFinished("cancelled", tuple(self.session.removed_at()))

    def save(self) -> None:
        self.saves += 1
        self.session.save(self.session_path)


@run_async
async def test_quit_asks_only_while_an_evaluation_runs(tmp_path):
    from finercut_tui.tui.app import WorkbenchApp
    from finercut_tui.tui.screens import ConfirmScreen

    job = BlockingJob(tmp_path / "b.yaml")
    app = WorkbenchApp(job.session, job.session_path, job=job)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.map.evaluating is not None, "the evaluation to start")
        assert app.workbench.state() == "evaluating"
        await pilot.press("q")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")  # stay
        assert not isinstance(app.screen, ConfirmScreen) and app.is_running
        assert not job.controller.cancelled
        await pilot.press("q")
        await pilot.press("y")
        await wait_for(pilot, lambda: not app.is_running, "the app to exit")
    assert job.controller.cancelled and job.saves >= 1
    assert Session.load(job.session_path).removed_at() == job.session.removed_at()


@run_async
async def test_a_finished_search_stays_a_workbench(tmp_path, loaded):
    """After the target: u, x, p, e and n act on the model and the session as mid-run, space searches
    on to a typed target, and a resumed finished session behaves the same."""
    from textual.widgets import Input

    from finercut_tui.tui.app import WorkbenchApp
    from finercut_tui.tui.grid import LayerGrid
    from finercut_tui.tui.screens import TargetScreen

    job = make_job(tmp_path, loaded, target="2")
    app = WorkbenchApp(job.session, job.session_path, job=job)
    async with app.run_test(size=(100, 30)) as pilot:
        grid = app.query_one(LayerGrid)
        await wait_for(pilot, lambda: app.workbench.state() == "finished", "the target")
        first, second = on_disk(job).removed_at()

        # u: the last removal comes back (the session is below its target again)
        await pilot.press("u")
        await wait_for(
            pilot, lambda: on_disk(job).removed_at() == [first] and len(app.map.removals) == 1, "the undo"
        )
        assert not on_disk(job).finished and [u.removed for u in on_disk(job).undone] == [second]

        # p on the restored sublayer: pinned in the session
        grid.move_cursor(*_grid_pos(second))
        await pilot.press("p")
        await wait_for(pilot, lambda: second in on_disk(job).pinned and app.map.is_pinned(second), "the pin")

        # x on another kept sublayer: removed by hand
        other = next(s for s in ("3.mlp", "2.mlp", "1.mlp", "0.mlp") if s not in (first, second))
        grid.move_cursor(*_grid_pos(other))
        await pilot.press("x")
        await wait_for(
            pilot, lambda: len(on_disk(job).steps) == len(app.map.removals) == 2, "the manual removal"
        )
        assert on_disk(job).steps[1].removed == other and on_disk(job).steps[1].by == "manual"

        # e: evaluates the current model
        await evaluate_perplexity(pilot, app)
        evaluated = lambda: any(e.step == 2 for e in app.map.evals) and not app.map.evaluating  # noqa: E731
        await wait_for(pilot, lambda: evaluated() and on_disk(job).evals[-1].step == 2, "the evaluation")

        # n: one more removal by the search, the target raised and recorded
        await pilot.press("n")
        more = lambda: len(app.map.removals) == 3 and app.workbench.state() == "finished"  # noqa: E731
        await wait_for(pilot, lambda: more() and on_disk(job).finished, "one more")
        saved = on_disk(job)
        assert saved.steps[2].by == "search" and saved.method.target == 3 and second not in saved.removed_at()

        # space: asks for a target, then searches on to it
        await pilot.press("space")
        await wait_for(pilot, lambda: isinstance(app.screen, TargetScreen), "the target dialog")
        app.screen.query_one("#target", Input).value = "5"
        await pilot.press("enter")
        await wait_for(
            pilot, lambda: len(on_disk(job).steps) == 5 and on_disk(job).finished, "the new target"
        )
        assert on_disk(job).method.target == 5
        await pilot.press("q")
        await wait_for(pilot, lambda: not app.is_running, "the app to exit")
    done = on_disk(job).removed_at()

    # the same session opened again with --resume: finished, and still a workbench
    resumed = make_job(tmp_path, loaded, target="5", resume=True)
    app = WorkbenchApp(resumed.session, resumed.session_path, job=resumed)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.workbench.state() == "finished", "the resumed session")
        await pilot.press("n")
        await wait_for(pilot, lambda: len(on_disk(resumed).steps) == 6, "a removal after resume")
        await pilot.press("q")
        await wait_for(pilot, lambda: not app.is_running, "the app to exit")
    assert on_disk(resumed).removed_at()[:5] == done


def test_leaving_the_app_any_way_ends_the_serving_search(tmp_path, loaded):
    """After its target the search thread serves commands; an exit that skips q must still end it
    (else the app never exits: the test runs it in a daemon thread to fail instead of hanging)."""
    import threading

    from finercut_tui.tui.app import WorkbenchApp

    job = make_job(tmp_path, loaded, target="1")
    app = WorkbenchApp(job.session, job.session_path, job=job)
    seen = {}

    async def body():
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: app.workbench.state() == "finished", "the target")
            seen["serving"] = app.search_running and not job.controller.cancelled
            app.exit(0)  # not through q

    runner = threading.Thread(target=lambda: asyncio.run(body()), daemon=True)
    runner.start()
    runner.join(timeout=180)
    assert not runner.is_alive(), "the app did not exit: the serving search thread was never cancelled"
    assert seen["serving"] and job.controller.cancelled


@run_async
async def test_a_failed_evaluation_leaves_evaluating_and_is_shown(tmp_path, loaded):
    """The evaluation raises: the header leaves 'evaluating', the failure is in the panel, the
    notifications and the session, and q quits without asking about a running evaluation."""
    from textual.widgets import Input

    from finercut_tui.tui.app import WorkbenchApp
    from finercut_tui.tui.panels import EvalTable
    from finercut_tui.tui.screens import ConfirmScreen, EvalScreen

    job = make_job(tmp_path, loaded, target="3")

    def broken(request, step):
        raise RuntimeError("the disk with the eval text vanished")

    job.engine.evaluator = broken
    job.controller.pause()
    app = WorkbenchApp(job.session, job.session_path, job=job)
    said = record_notifications(app)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.workbench.state() == "paused", "the pause")
        await pilot.press("e")
        await wait_for(pilot, lambda: isinstance(app.screen, EvalScreen), "the eval dialog")
        app.screen.query_one("#ppl", Input).value = ENGLISH
        app.screen.query_one("#ppl", Input).focus()
        await pilot.press("enter")
        await wait_for(pilot, lambda: any(e.failed for e in on_disk(job).evals), "the failure in the session")
        await wait_for(pilot, lambda: app.workbench.state() == "paused", "the header back to paused")
        assert on_disk(job).evals[-1].error == "RuntimeError: the disk with the eval text vanished"
        assert any("evaluation at step 0 failed" in line for line in said)
        table = app.workbench.query_one(EvalTable)
        cells = [str(c) for row in range(table.row_count) for c in table.get_row_at(row)]
        assert any("failed: RuntimeError: the disk with the eval text vanished" in c for c in cells)
        await pilot.press("q")
        await wait_for(pilot, lambda: not app.is_running or isinstance(app.screen, ConfirmScreen), "q")
        assert not isinstance(app.screen, ConfirmScreen)
        await wait_for(pilot, lambda: not app.is_running, "the app to exit")


def test_the_eval_form_offers_text_the_run_can_reach():
    from finercut_tui.eval.request import EvalRequest
    from finercut_tui.tui.screens import EvalForm

    assert EvalForm.first_for(None, "pydoc").ppl == "pydoc"  # the offline demo: pydoc's held-out half
    assert EvalForm.first_for(None, "wikitext2").ppl == "wikitext2"
    asked = EvalRequest(ppl="my.txt", tasks="arc_easy")
    assert (EvalForm.first_for(asked, "pydoc").ppl, EvalForm.first_for(asked, "pydoc").tasks) == (
        "my.txt",
        "arc_easy",
    )


@run_async
async def test_the_repair_what_if_evaluates_repaired_beside_unrepaired_and_changes_nothing(tmp_path, loaded):
    """e with a ridge: the model is evaluated as it is and repaired; the repair is recorded, every
    weight is given back, and the search goes on to the same order as without the what-if."""
    from textual.widgets import Input

    from finercut_tui.tui.app import WorkbenchApp
    from finercut_tui.tui.screens import EvalScreen

    plain = make_job(tmp_path / "plain", loaded, target="3")
    for _ in plain.events():
        pass
    want = plain.session.removed_at()

    job = make_job(tmp_path, loaded, target="3")
    job.controller.pause()
    weights = {k: v.clone() for k, v in job.pm.model.state_dict().items()}
    app = WorkbenchApp(job.session, job.session_path, job=job)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.workbench.state() == "paused", "the search to pause")
        await pilot.press("n")
        await wait_for(pilot, lambda: len(app.map.removals) == 1 and app.map.paused, "one removal")
        await pilot.press("e")
        await wait_for(pilot, lambda: isinstance(app.screen, EvalScreen), "the eval dialog")
        app.screen.query_one("#ppl", Input).value = ENGLISH
        app.screen.query_one("#ppl_max_tokens", Input).value = "64"
        app.screen.query_one("#repair_ridge", Input).value = "0.1"
        app.screen.query_one("#ppl", Input).focus()
        await pilot.press("enter")
        await wait_for(pilot, lambda: len(job.session.repairs) == 1, "the repaired what-if")
        (repair,) = on_disk(job).repairs
        unrepaired = job.session.evals[-1]
        assert repair.step == unrepaired.step == 1 and repair.out is None and repair.ridge == 0.1
        assert repair.before.results == unrepaired.results and repair.after.results != unrepaired.results
        assert all(torch_equal(weights[k], v) for k, v in job.pm.model.state_dict().items() if k in weights)
        await pilot.press("space")
        await wait_for(pilot, lambda: app.map.finished is not None, "the search to finish")
        await pilot.press("q")
        await wait_for(pilot, lambda: not app.is_running, "the app to exit")
    assert on_disk(job).removed_at() == want


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)


@run_async
async def test_regression_home_and_end_move_the_cursor_in_a_live_search(tmp_path, loaded):
    """The soak found home / end (a replay's first / last step) silent in a live search: they now
    move the grid's cursor to the first / last block."""
    from finercut_tui.tui.app import WorkbenchApp
    from finercut_tui.tui.grid import LayerGrid

    job = make_job(tmp_path, loaded, target="2")
    job.controller.pause()
    app = WorkbenchApp(job.session, job.session_path, job=job)
    async with app.run_test(size=(100, 30)) as pilot:
        grid = app.query_one(LayerGrid)
        await pilot.press("end")
        assert grid.cursor_position[0] == app.map.num_blocks - 1
        await pilot.press("home")
        assert grid.cursor_position[0] == 0
        await pilot.press("q")
