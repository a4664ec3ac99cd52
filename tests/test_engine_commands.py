"""Commands reach a running search between candidate evaluations and do what they say."""

import threading

import torch
from builders import make_engine
from reference import greedy_finercut
from tiny_models import tiny_model

from finercut_tui.domain.evals import EvalRecord
from finercut_tui.domain.events import (
    CandidateScored,
    CandidateStarted,
    EvalFinished,
    Paused,
    PinChanged,
    SearchFinished,
    SublayerRemoved,
    SublayerRestored,
)
from finercut_tui.model.surgery import PrunableModel
from finercut_tui.search.controller import Controller

IDS = torch.randint(3, 128, (2, 16), generator=torch.Generator().manual_seed(3))


def engine(target=4, evaluator=None, **kw):
    ctl = Controller()
    eng = make_engine(
        PrunableModel(tiny_model("llama")),
        IDS,
        target,
        method="finercut",
        controller=ctl,
        evaluator=evaluator,
        **kw,
    )
    return eng, ctl


def removals(events):
    return [(e.sublayer, e.by) for e in events if isinstance(e, SublayerRemoved)]


def test_uninterrupted_order_is_the_reference_order():
    eng, _ = engine(target=4)
    want, _ = greedy_finercut(tiny_model("llama"), IDS, "js", 4)
    assert [s for s, _ in removals(eng.run())] == want


def test_pin_mid_step_excludes_the_candidate_for_good():
    want, scores = greedy_finercut(tiny_model("llama"), IDS, "js", 1)
    eng, ctl = engine(target=3)
    events = []
    for ev in eng.run():
        events.append(ev)
        if isinstance(ev, CandidateScored) and ev.index == 1:
            ctl.pin(want[0])  # the sublayer the search would remove first
    order = [s for s, _ in removals(events)]
    assert want[0] not in order and len(order) == 3
    assert any(isinstance(e, PinChanged) and e.pinned for e in events)
    assert want[0] in eng.pins


def test_force_remove_is_manual_and_the_step_starts_over():
    eng, ctl = engine(target=3)
    events = []
    for ev in eng.run():
        events.append(ev)
        if isinstance(ev, CandidateScored) and ev.step == 1 and ev.index == 2:
            ctl.force_remove("0.attn")
    got = removals(events)
    assert got[0] == ("0.attn", "manual")
    assert [by for _, by in got[1:]] == ["search", "search"]
    want, _ = greedy_finercut(tiny_model("llama"), IDS, "js", 3, start=["0.attn"])
    assert [s for s, _ in got] == want  # the target counts the manual removal


def test_undo_restores_and_is_reported():
    eng, ctl = engine(target=2)
    events = []
    undone = False
    for ev in eng.run():
        events.append(ev)
        if isinstance(ev, SublayerRemoved) and not undone:
            undone = True
            ctl.pin(ev.sublayer)
            ctl.undo()
    restored = [e for e in events if isinstance(e, SublayerRestored)]
    first = removals(events)[0][0]
    assert restored and restored[0].sublayer == first and restored[0].step == 1
    assert first not in eng.order and len(eng.order) == 2
    assert first not in eng.pm.removed


def test_step_pauses_after_exactly_one_removal_then_resume_finishes():
    eng, ctl = engine(target=3)
    ctl.pause()
    events = []

    def consume():
        for ev in eng.run():
            events.append(ev)

    t = threading.Thread(target=consume)
    t.start()
    import time

    deadline = time.time() + 20
    while not any(isinstance(e, Paused) for e in events) and time.time() < deadline:
        time.sleep(0.01)
    assert removals(events) == []
    ctl.step()
    while len(removals(events)) < 1 and time.time() < deadline:
        time.sleep(0.01)
    while sum(isinstance(e, Paused) for e in events) < 2 and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    assert len(removals(events)) == 1 and ctl.paused
    ctl.resume()
    t.join(30)
    assert len(removals(events)) == 3 and isinstance(events[-1], SearchFinished)


def test_evaluate_now_does_not_change_the_order():
    calls = []

    def evaluator(request, step):
        calls.append((request, step))
        torch.manual_seed(1234)  # an evaluation may touch RNG state: the search must not care
        return [EvalRecord(step, results={"fake": 1.0})]

    eng, ctl = engine(target=4, evaluator=evaluator)
    events = []
    for ev in eng.run():
        events.append(ev)
        if isinstance(ev, CandidateScored) and ev.step == 2 and ev.index == 3:
            ctl.evaluate("ppl")
    want, _ = greedy_finercut(tiny_model("llama"), IDS, "js", 4)
    assert [s for s, _ in removals(events)] == want
    assert calls == [("ppl", 1)]
    assert [e.step for e in events if isinstance(e, EvalFinished)] == [1]


def test_cancel_ends_cleanly():
    eng, ctl = engine(target=8)
    events = []
    for ev in eng.run():
        events.append(ev)
        if isinstance(ev, SublayerRemoved):
            ctl.cancel()
    assert isinstance(events[-1], SearchFinished) and events[-1].reason == "cancelled"
    assert len(removals(events)) == 1


def test_unpin_mid_step_makes_the_sublayer_a_candidate_that_can_win():
    want, _ = greedy_finercut(tiny_model("llama"), IDS, "js", 1)
    eng = make_engine(PrunableModel(tiny_model("llama")), IDS, 1, method="finercut", pins={want[0]})
    ctl = eng.controller
    events = []
    for ev in eng.run():
        events.append(ev)
        if isinstance(ev, CandidateScored) and ev.index == 1:
            ctl.unpin(want[0])
    removed = [e for e in events if isinstance(e, SublayerRemoved)]
    assert [e.sublayer for e in removed] == want  # the unconstrained best, now unpinned, wins
    assert removed[0].score == min(removed[0].scores.values())


def test_pinning_everything_scored_then_unpinning_one_does_not_crash():
    model = tiny_model("llama", num_hidden_layers=2)
    eng = make_engine(PrunableModel(model), IDS, 1, method="finercut", pins={"1.mlp"})
    ctl = eng.controller
    events = []
    for ev in eng.run():
        events.append(ev)
        if isinstance(ev, CandidateStarted) and ev.index == 1:
            for sid in ("0.attn", "0.mlp", "1.attn"):
                ctl.pin(sid)
            ctl.unpin("1.mlp")
    assert [e.sublayer for e in events if isinstance(e, SublayerRemoved)] == ["1.mlp"]


def test_a_crashing_evaluation_is_logged_and_the_search_goes_on():
    def evaluator(request, step):
        raise RuntimeError("CUDA out of memory inside lm-eval")

    eng, ctl = engine(target=2, evaluator=evaluator)
    events = []
    for ev in eng.run():
        events.append(ev)
        if isinstance(ev, CandidateScored) and ev.step == 1 and ev.index == 1:
            ctl.evaluate("tasks")
    from finercut_tui.domain.events import EvalFailed, EvalStarted
    from finercut_tui.domain.text import describe_event
    from finercut_tui.layer_map import LayerMap

    failed = [e for e in events if isinstance(e, EvalFailed)]
    assert len(failed) == 1 and failed[0].record.error == "RuntimeError: CUDA out of memory inside lm-eval"
    assert "evaluation at step 0 failed (RuntimeError: CUDA out of memory" in describe_event(failed[0])
    assert len(removals(events)) == 2 and events[-1].reason == "target"
    # a view fed the events leaves "evaluating" at the failure and lists it
    grid = LayerMap(eng.pm.num_blocks)
    for ev in events[: events.index(failed[0])]:
        grid.apply(ev)
    assert isinstance(events[events.index(failed[0]) - 1], EvalStarted) and grid.evaluating
    grid.apply(failed[0])
    assert grid.evaluating is None and grid.evals[-1].failed


def test_after_the_target_the_model_stays_a_workbench(tmp_path):
    """Undo, pin, remove by hand and search on after the search finished; the session follows."""
    from builders import save_tiny_checkpoint

    from finercut_tui.domain.events import PinChanged, SearchFinished, SublayerRestored, TargetChanged
    from finercut_tui.domain.spec import CalibrationSpec, SearchSetup, SearchSpec
    from finercut_tui.model.loading import ModelSpec
    from finercut_tui.search.job import prepare_job, setup_from_session
    from finercut_tui.session import Session

    folder = save_tiny_checkpoint(tmp_path / "m", "llama")
    setup = SearchSetup(
        spec=SearchSpec(target="2"), calibration=CalibrationSpec("tests/data/english.txt", 2, 16)
    )
    path = tmp_path / "s.yaml"
    job = prepare_job(setup, ModelSpec(str(folder), device="cpu"), path, progress=lambda m: None)
    ctl, events, finished = job.controller, [], 0
    for ev in job.events(serve=True):
        events.append(ev)
        if isinstance(ev, SearchFinished):
            finished += 1
            if finished == 1:
                first, second = job.session.removed_at()
                assert Session.load(path).finished
                ctl.undo()  # takes `second` back
                ctl.pin(second)
                by_hand = next(x for x in ("3.mlp", "2.mlp", "1.mlp") if x not in (first, second))
                ctl.force_remove(by_hand)
                ctl.extend(4)
            else:
                ctl.cancel()
    assert finished == 2
    assert [type(e) for e in events if isinstance(e, SublayerRestored | PinChanged | TargetChanged)] == [
        SublayerRestored,
        PinChanged,
        TargetChanged,
    ]
    saved = Session.load(path)
    order = saved.removed_at()
    assert len(order) == 4 and order[0] == first and second not in order
    assert (
        (saved.steps[1].removed, saved.steps[1].by) == (by_hand, "manual")
        and saved.method.target == 4
        and saved.spec.target == "4"
    )
    assert saved.finished and second in saved.pinned and [u.removed for u in saved.undone] == [second]
    # the extended session resumes as finished, and a resume with a higher target searches on from there
    resumed = prepare_job(
        setup_from_session(saved).replace(spec=saved.spec.replace(target="5")),
        ModelSpec(str(folder), device="cpu"),
        path,
        resume=True,
        progress=lambda m: None,
    )
    list(resumed.events())
    assert Session.load(path).removed_at()[:4] == order and len(Session.load(path).steps) == 5


def test_regression_the_controller_is_idle_only_once_a_command_s_events_are_out():
    """The soak found the screen checked before a pin's event arrived: the queue was empty (the engine
    had taken the command) but nothing was emitted yet. `idle` waits for the events themselves."""
    eng, ctl = engine(target=2)
    assert ctl.idle
    seen_idle_before_the_pin = []
    for ev in eng.run():
        if isinstance(ev, CandidateScored) and ev.index == 1 and not eng.pins:
            ctl.pin("3.mlp")
            assert not ctl.idle
        if isinstance(ev, PinChanged):
            seen_idle_before_the_pin.append(ctl.idle)  # the engine marks it applied after this yield
    assert seen_idle_before_the_pin == [False] and ctl.idle
