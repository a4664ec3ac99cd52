"""A search job: model + calibration + session + engine, shared by `run`, `tui` and `demo`.

`Job.events()` runs the search in the calling thread and records every event in the session
(saved atomically after each step) *before* yielding it, so any consumer may die at any moment
and the session on disk is complete up to the last finished step.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from finercut_tui.data.calibration import Calibration, build_calibration
from finercut_tui.domain.evals import EvalRecord
from finercut_tui.domain.events import (
    DONE_REASONS,
    EvalFailed,
    EvalFinished,
    Event,
    LogMessage,
    PinChanged,
    RepairMeasured,
    SearchFinished,
    SublayerRemoved,
    SublayerRestored,
    TargetChanged,
)
from finercut_tui.domain.pins import Pins
from finercut_tui.domain.records import ModelRecord, Step, Undone
from finercut_tui.domain.spec import CalibrationSpec, MethodRecord, ScoringOptions, SearchSetup
from finercut_tui.domain.sublayers import parse_id
from finercut_tui.errors import FinercutError, SessionError
from finercut_tui.model.loading import DTYPES, LoadedModel, ModelSpec, load_model
from finercut_tui.search.controller import Controller
from finercut_tui.search.distributed import SINGLE, World
from finercut_tui.search.engine import SearchEngine
from finercut_tui.session import Session, check_matches


def setup_from_session(session: Session) -> SearchSetup:
    """The setup a session was recorded with, to continue it (callers replace what the user changed)."""
    cal = session.calibration
    return SearchSetup(
        spec=session.spec,
        calibration=CalibrationSpec(cal.source, cal.samples, cal.seq_len, cal.layout),
        scoring=ScoringOptions(batch_size=session.method.batch_size),
    )


def model_spec_from_session(
    session: Session,
    *,
    model: str | None = None,
    gguf_file: str | None = None,
    revision: str | None = None,
    dtype: str | None = None,
    device: str | None = None,
) -> ModelSpec:
    """The model to load for a session: every command that loads one (run/tui --resume, eval,
    export, heal, speed, repair, replay's continue) picks it here, by one rule.

    - model: `model` / `gguf_file` when given, else the session's;
    - revision: `revision` when given, else the session's when the model is the session's;
    - dtype: `dtype` when given and not "auto"; else the dtype the session's removals were chosen
      in (`model.dtype`, as loaded), or what it asked for when that is not recorded;
    - device: `device` when given, else "auto".
    """
    recorded = session.model
    if model or gguf_file:
        name, gguf = model or "", gguf_file
        same = (name or None, gguf) == (recorded.name_or_path, recorded.gguf_file)
    else:
        name, gguf, same = recorded.name_or_path or "", recorded.gguf_file, True
    if not name and not gguf:
        raise FinercutError(
            "the session records no model: pass --model ORG/NAME or a folder (or --gguf-file)"
        )
    if dtype in (None, "auto"):
        dtype = recorded.dtype if recorded.dtype in DTYPES else (recorded.dtype_asked or "auto")
    return ModelSpec(
        name_or_path=name,
        gguf_file=gguf,
        dtype=dtype,
        device=device or "auto",
        revision=revision or (recorded.revision if same else None),
    )


def append_records(
    path: str | Path,
    step: int,
    removed: list[str],
    *,
    doing: str = "evaluating",
    lost: str = "the results above were not saved; rerun the command",
    **records: Iterable,
) -> Session:
    """Append records to the lists of the session file at `path` (`evals=[...]`, `heals=[...]`,
    `repairs=[...]`: any list of `Session`), measured on the model after its first `step` removals
    `removed`. The file is read again first (a search may have written it meanwhile: its new steps
    are kept) and refused when those first removals differ now; `doing` and `lost` complete that
    one-line error. Returns the session as saved."""
    fresh = Session.load(path)
    if fresh.removed_at(step) != list(removed):
        raise FinercutError(f"{path} changed while {doing} (its first {step} removals differ now): {lost}")
    for name, items in records.items():
        target = getattr(fresh, name, None)
        if not isinstance(target, list):
            raise TypeError(f"a session has no list of records called {name!r}")
        target.extend(items)
    fresh.save(path)
    return fresh


@dataclass
class Job:
    loaded: LoadedModel
    session: Session
    session_path: Path
    controller: Controller
    setup: SearchSetup
    calibration: Calibration
    engine: SearchEngine = field(repr=False, default=None)
    world: World = field(repr=False, default_factory=lambda: SINGLE)  # rank 0 alone writes the session

    @property
    def pm(self):
        return self.loaded.pm

    def save(self) -> None:
        if self.world.is_main:
            self.session.save(self.session_path)

    def events(self, serve: bool = False) -> Iterator[Event]:
        """The search's events, each recorded first; with `serve`, the model stays a workbench after
        the search ends (until cancelled), as the app wants."""
        for event in self.engine.run():
            self.record(event)
            yield event
        if serve:
            for event in self.engine.serve():
                self.record(event)
                yield event

    def record(self, event: Event) -> None:
        s = self.session
        if isinstance(event, SublayerRemoved):
            step = Step(event.sublayer, event.by, event.score, event.scores or None, event.seconds)
            if event.by == "search":
                step.world_size, step.gpus_per_replica = self.world.size, self.world.gpus_per_replica
            s.steps.append(step)
        elif isinstance(event, SublayerRestored):
            undone = s.steps.pop()
            s.undone.append(Undone(undone.removed, undone.by, event.step))
            s.finished = False  # below its target again: a resume searches on
        elif isinstance(event, TargetChanged):
            spec = dataclasses.replace(s.spec, target=str(event.target))
            s.method = dataclasses.replace(s.method, spec=spec, target=event.target)
            s.finished = False
        elif isinstance(event, PinChanged):
            s.pinned = Pins(event.pins)
        elif isinstance(event, EvalFinished | EvalFailed):
            s.evals.append(event.record)
        elif isinstance(event, RepairMeasured):
            s.repairs.append(event.record)
        elif isinstance(event, SearchFinished):
            s.finished = event.reason in DONE_REASONS
        elif isinstance(event, LogMessage) and self._batch_size_changed():
            # resume scores at the size an out-of-memory fallback shrank to
            s.method = dataclasses.replace(s.method, batch_size=self.engine.scorer.batch_size)
        else:
            return
        self.save()

    def _batch_size_changed(self) -> bool:
        scorer = self.engine.scorer
        if scorer is None:
            return False
        recorded = self.session.method.batch_size
        started = self.setup.scoring.batch_size or int(scorer.input_ids.shape[0])  # None: all samples
        return scorer.batch_size != (started if recorded is None else recorded)

    def identity(self) -> dict:
        """What every rank of one search must share, in the order a difference is reported."""
        cal = self.calibration.record()
        return {
            "calibration": f"{cal.samples} x {cal.seq_len} tokens of {cal.source} "
            f"(fingerprint {str(cal.fingerprint)[:12]})",
            "model architecture": self.session.model.architecture,
            "blocks": self.pm.num_blocks,
            "dtype": self.loaded.dtype,
            "search": repr(self.setup.spec),
            "scoring batch size": self.setup.scoring.batch_size,
            "removed": " ".join(self.session.removed_at()),
            "pins": " ".join(self.session.pinned.canonical()),
        }

    def evaluate(self, request, step: int) -> list[EvalRecord]:
        """The engine's evaluator: measure the model as it is now against the session's baseline.
        Under torchrun rank 0 alone evaluates; the others wait for it at the next step's collective."""
        from finercut_tui.eval.runner import run_eval

        if not self.world.is_main:
            return []

        return run_eval(self.pm, request, step, self.session.evals)


def prepare_job(
    setup: SearchSetup,
    spec: ModelSpec,
    session_path: str | Path,
    resume: bool = False,
    command: str | None = None,
    progress=print,
    loaded: LoadedModel | None = None,
    world: World = SINGLE,
    existing_session: Session | None = None,
) -> Job:
    """Load (or take) the model, build calibration, create or resume the session, build the engine.

    Under torchrun (`world` active) every rank prepares its own job; `existing_session` is the session
    rank 0 read and broadcast (the other ranks may not see its file); only rank 0 writes it."""
    session_path = Path(session_path)
    search = setup.spec.validate()
    setup.scoring.validate()
    setup.schedule.validate()
    setup.calibration.validate()
    existing = _existing_session(search, session_path, resume, world, existing_session)
    torch.manual_seed(search.seed)
    lm = loaded or load_model(spec, progress=progress)
    pins = Pins(parse_id(p, lm.pm.num_blocks, allow_block=True) for p in setup.pins)
    cal = setup.calibration
    progress(f"calibration: {cal.describe()}")
    calibration = build_calibration(lm.tokenizer, cal.source, cal.samples, cal.seq_len, cal.layout)
    model_record = _model_record(spec, lm)
    if existing is not None:
        session, search, pins = _continue(existing, model_record, calibration, search, pins, session_path)
    else:
        command = command or shlex.join(["finercut-tui", *sys.argv[1:]])
        session = Session(model_record, calibration.record(), MethodRecord(search), command=command)
    target = search.info.resolve_target(search.target, lm.pm.num_blocks, pins)
    session.method = dataclasses.replace(session.method, spec=search, target=target)
    session.pinned = pins
    schedule = _schedule_on(setup.schedule, calibration, session)
    job = Job(
        loaded=lm,
        session=session,
        session_path=session_path,
        controller=Controller(),
        setup=dataclasses.replace(setup, spec=search, schedule=schedule),
        calibration=calibration,
        world=world,
    )
    job.engine = _engine(job, target, pins, resumed=existing is not None)
    if not world.active:  # under torchrun the caller saves once every rank agreed (run.job_from_args)
        job.save()  # the session exists on disk before the first step
    return job


def _existing_session(search, session_path: Path, resume: bool, world: World, given: Session | None):
    """On --resume the session to continue (checked against the spec before any heavy work); else
    None, after checking that a new session would not overwrite one."""
    if resume:
        existing = given or Session.load(session_path)  # SessionError before heavy work
        conflict = search.resume_conflict(existing.spec)
        if conflict:
            raise SessionError(f"{session_path} {conflict}")
        return existing
    if world.is_main and session_path.exists():
        raise FinercutError(
            f"session {session_path} already exists: pass --resume to continue it, or another path"
        )
    return None


def _model_record(spec: ModelSpec, lm: LoadedModel) -> ModelRecord:
    return ModelRecord(
        num_blocks=lm.pm.num_blocks,
        name_or_path=spec.name_or_path or None,
        gguf_file=spec.gguf_file,
        revision=spec.revision,
        dtype=lm.dtype,
        dtype_asked=spec.dtype,
        architecture=lm.architecture,
    )


def _continue(existing: Session, model_record: ModelRecord, calibration, search, pins, session_path):
    """(session, spec, pins) to resume: the same model and tokens, the session's spec with the new
    target (only the target may change), the session's pins and the new ones."""
    cal_record = calibration.record()
    check_matches(
        existing,
        architecture=model_record.architecture,
        num_blocks=model_record.num_blocks,
        calibration=cal_record,
        source=str(session_path),
    )
    if not existing.calibration.text_sha256:  # recorded before the text hash was kept
        existing.calibration = dataclasses.replace(existing.calibration, text_sha256=cal_record.text_sha256)
    return existing, dataclasses.replace(existing.spec, target=search.target), existing.pinned | pins


def _schedule_on(schedule, calibration: Calibration, session: Session):
    """The evaluation schedule with its request told the calibration text (to flag an overlap)."""
    if schedule.request is None:
        return schedule
    request = dataclasses.replace(
        schedule.request,
        calibration_source=calibration.source,
        calibration_split=calibration.split,
        calibration_text_sha256=session.calibration.text_sha256,
    )
    return dataclasses.replace(schedule, request=request)


def _engine(job: Job, target: int, pins: Pins, resumed: bool) -> SearchEngine:
    session, search = job.session, job.setup.spec
    return SearchEngine(
        job.pm,
        job.calibration.input_ids,
        search,
        target,
        scoring=job.setup.scoring,
        schedule=job.setup.schedule,
        controller=job.controller,
        order=session.removed_at(),
        pins=pins,
        one_shot_scores=session.one_shot_scores() if resumed and not search.rescored else None,
        evaluator=job.evaluate,  # always: "evaluate now" from the UI needs one too
        evaluated_steps={e.step for e in session.evals if not e.failed},
        world=job.world,
    )
