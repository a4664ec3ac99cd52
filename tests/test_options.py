"""Issue 21: every option is declared once; --help, defaults, the resume rule and the session come from it."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest
from builders import save_tiny_checkpoint

from finercut_tui.cli import build_parser, main
from finercut_tui.domain import spec as spec_module
from finercut_tui.domain.options import Option, format_default, option, options_of
from finercut_tui.domain.spec import CalibrationSpec, ScoringOptions, SearchSetup, SearchSpec
from finercut_tui.domain.steps import PRUNED, StepRule, resolve_step
from finercut_tui.errors import FinercutError
from finercut_tui.eval.request import EvalRequest
from finercut_tui.heal.config import DataOptions, HealConfig

TEXT = "tests/data/english.txt"
DECLARED = ("run", "tui", "heal", "eval", "export")  # every flag of these comes from a declaration


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _actions(command: str) -> list[argparse.Action]:
    sub = _subparsers(build_parser())[command]
    return [a for a in sub._actions if not isinstance(a, argparse._HelpAction)]


def _help(command: str, capsys) -> str:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return capsys.readouterr().out


@pytest.mark.parametrize("command", DECLARED)
def test_every_option_is_a_declaration_and_its_help_and_default_come_from_it(command):
    for action in _actions(command):
        opt = getattr(action, "finercut_option", None)
        assert isinstance(opt, Option), f"{command} {action.option_strings or action.dest} is not declared"
        assert action.help.replace("%%", "%") == opt.help_text()
        if opt.positional:
            continue
        assert action.dest == opt.dest
        resumable = command in ("run", "tui") and opt.field and opt in spec_module.setup_options()
        expected = None if resumable else (list(opt.default) if opt.action == "append" else opt.default)
        assert action.default == expected, (command, opt.flag)
        shown = format_default(opt.default)
        if shown and opt.action != "store_true":
            assert shown in action.help, (command, opt.flag)


def test_the_declared_defaults_are_the_dataclasses_defaults():
    for cls in (SearchSpec, CalibrationSpec, ScoringOptions, HealConfig, DataOptions):
        instance = cls()
        assert options_of(cls), cls.__name__
        for opt in options_of(cls):
            assert getattr(instance, opt.field) == opt.default, (cls.__name__, opt.field)
    request = EvalRequest(ppl="x")
    assert all(getattr(request, o.field) == o.default for o in options_of(EvalRequest) if o.field != "ppl")
    heal = {a.dest: a for a in _actions("heal")}
    assert heal["lora_rank"].default == HealConfig().lora_rank == 8
    assert "(default 8)" in heal["lora_rank"].help and "(default 256)" in heal["seq_len"].help
    assert heal["epochs"].default == HealConfig().epochs
    run = {a.dest: a for a in _actions("run")}
    assert f"(default {CalibrationSpec().samples})" in run["calib_samples"].help
    assert run["calib_samples"].default is None  # left out: the session's on --resume
    assert f"(default {request.ppl_seq_len})" in run["ppl_seq_len"].help
    assert run["eval_batch_size"].option_strings == ["--eval-batch-size"]
    ev = {a.dest: a for a in _actions("eval")}
    assert ev["eval_batch_size"].option_strings == ["--batch-size"] and ev["eval_batch_size"].default == 8


def test_the_eval_form_has_the_labelled_eval_options():
    from finercut_tui.tui.screens import WHAT_IF, EvalForm, form_options

    labelled = [o.field for o in options_of(EvalRequest) if o.label]
    assert [o.field for o in form_options()] == [*labelled, WHAT_IF.field]  # and the repair what-if
    form = EvalForm(ppl="pydoc", ppl_max_tokens="512", limit="0.5")
    assert form.tasks == "" and form.ppl == "pydoc"
    request = form.request(EvalRequest(ppl="wikitext2", tasks="arc_easy"), session=None)
    assert (request.ppl, request.ppl_max_tokens, request.tasks, request.limit) == ("pydoc", 512, (), 0.5)
    with pytest.raises(FinercutError, match="max tokens must be a number"):
        EvalForm(ppl="x", ppl_max_tokens="many").request(EvalRequest(ppl="x"), session=None)
    assert form.repair_ridge() is None and EvalForm(ppl="x", repair_ridge="0.1").repair_ridge() == 0.1
    with pytest.raises(FinercutError, match="ridge must be >= 0"):
        EvalForm(ppl="x", repair_ridge="-1").repair_ridge()


class _Session:
    def __init__(self, removed, num_blocks=4):
        self.steps, self._removed, self.num_blocks = list(removed), list(removed), num_blocks

    def removed_at(self, k=None):
        return self._removed[: len(self._removed) if k is None else k]


def test_one_rule_names_a_step():
    session = _Session(["0.attn", "1.mlp", "2.block"])
    any_step = StepRule(first=0, ratio=False, required=False)
    assert resolve_step(session, rule=any_step) == 3 and resolve_step(session, 0, rule=any_step) == 0
    assert resolve_step(session, 2) == 2 and resolve_step(session, ratio=0.3) == 3
    with pytest.raises(FinercutError, match="this session has 3 steps, so use 0..3"):
        resolve_step(session, 4, rule=any_step)
    with pytest.raises(FinercutError, match=r"steps 1..3 \(step 0 removes nothing\)"):
        resolve_step(session, 0, rule=PRUNED)
    with pytest.raises(FinercutError, match="give --step K or --ratio R"):
        resolve_step(session, rule=PRUNED)
    with pytest.raises(FinercutError, match="no steps yet"):
        resolve_step(_Session([]), 1)
    assert resolve_step(_Session([]), 0, rule=any_step) == 0


@dataclass(frozen=True)
class _DummySpec(SearchSpec):
    dummy_knob: int = option(0, type=int, group="search", help="a knob added by the test")


@pytest.fixture
def dummy_field(monkeypatch):
    """A search spec with one field more, declared as an option: nothing else is edited."""
    monkeypatch.setitem(spec_module.SETUP_PARTS, "spec", _DummySpec)


def test_a_new_spec_field_reaches_help_the_setup_and_the_session(dummy_field, capsys, tmp_path):
    for command in ("run", "tui"):
        text = _help(command, capsys)
        assert "--dummy-knob" in text and "a knob added by the test (default 0)" in text

    model = save_tiny_checkpoint(tmp_path / "llama", "llama")
    session_path = tmp_path / "s.yaml"
    common = ["--model", str(model), "--calib", TEXT, "--calib-samples", "2", "--seq-len", "16"]
    argv = ["run", *common, "--target", "2", "--session", str(session_path), "--quiet"]
    assert main([*argv, "--dummy-knob", "7"]) == 0
    text = session_path.read_text()
    assert "  dummy_knob: 7\n" in text

    from finercut_tui.session import Session

    session = Session.load(session_path)
    assert isinstance(session.spec, _DummySpec) and session.spec.dummy_knob == 7
    assert Session.load(session_path).dumps() == text  # round-trips
    # resume: left out, the session's; given otherwise, refused like any order-defining option
    resumed = ["run", "--model", str(model), "--target", "3", "--session", str(session_path), "--quiet"]
    assert main([*resumed, "--resume"]) == 0
    assert Session.load(session_path).spec.dummy_knob == 7 and len(Session.load(session_path).steps) == 3
    assert main([*resumed, "--resume", "--dummy-knob", "8"]) == 2
    assert "dummy_knob 7" in capsys.readouterr().err


def test_the_default_setup_follows_the_declaration(dummy_field):
    assert isinstance(SearchSetup().spec, _DummySpec)
    args = argparse.Namespace(dummy_knob=3, calib_samples=4, pin=["1.attn"], method=None)
    setup = SearchSetup().given(args)
    assert (setup.spec.dummy_knob, setup.calibration.samples, setup.pins) == (3, 4, ("1.attn",))
    assert setup.spec.method == SearchSpec().method  # left out: kept


def test_one_rule_picks_the_model_of_a_session():
    from builders import session_from

    from finercut_tui.search.job import model_spec_from_session

    session = session_from(
        model={"name_or_path": "org/m", "revision": "abc", "dtype": "bfloat16", "num_blocks": 4},
        method={"name": "finercut"},
    )
    spec = model_spec_from_session(session)
    assert (spec.name_or_path, spec.revision, spec.dtype, spec.device) == ("org/m", "abc", "bfloat16", "auto")
    assert model_spec_from_session(session, dtype="auto", device="cpu").dtype == "bfloat16"  # as chosen in
    assert model_spec_from_session(session, dtype="float32").dtype == "float32"  # asked for: wins
    assert model_spec_from_session(session, model="org/m").revision == "abc"  # the same model
    assert model_spec_from_session(session, model="other/m").revision is None  # another model
    unknown = session_from(model={"name_or_path": "org/m", "dtype_asked": "float16", "num_blocks": 4})
    assert model_spec_from_session(unknown).dtype == "float16"  # not recorded as loaded: as asked
    with pytest.raises(FinercutError, match="records no model"):
        model_spec_from_session(session_from(model={"num_blocks": 4}))


def test_records_are_appended_to_the_session_as_it_is_now(tmp_path):
    from builders import session_from

    from finercut_tui.domain.evals import EvalRecord
    from finercut_tui.search.job import append_records
    from finercut_tui.session import Session, Step

    path = tmp_path / "s.yaml"
    session_from(model={"num_blocks": 4}, steps=[Step("0.attn"), Step("1.mlp")]).save(path)
    append_records(path, 1, ["0.attn"], evals=[EvalRecord(1, results={"x": 1.0})])
    assert [e.step for e in Session.load(path).evals] == [1]
    with pytest.raises(FinercutError, match="changed while healing .*: the model is elsewhere"):
        append_records(path, 1, ["3.mlp"], heals=[], doing="healing", lost="the model is elsewhere")
    assert [e.step for e in Session.load(path).evals] == [1]  # untouched
