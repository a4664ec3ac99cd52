"""A search job: model + calibration + session + engine, shared by `run`, `tui` and `demo`.

`Job.events()` runs the search in the calling thread and records every event in the session
(saved atomically after each step) *before* yielding it, so any consumer may die at any moment
and the session on disk is complete up to the last finished step.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from finercut_tui.data.calibration import Calibration, build_calibration
from finercut_tui.errors import FinercutError, SessionError
from finercut_tui.model.loading import LoadedModel, ModelSpec, load_model
from finercut_tui.model.sublayers import expand, parse_id
from finercut_tui.search import methods as M
from finercut_tui.search.controller import Controller
from finercut_tui.search.engine import SearchConfig, SearchEngine
from finercut_tui.search.events import (
    EvalFinished,
    Event,
    LogMessage,
    PinChanged,
    SearchFinished,
    SublayerRemoved,
    SublayerRestored,
)
from finercut_tui.session import Session, Step, check_matches


@dataclass
class SearchOptions:
    method: str = "finercut"
    target: str = "0.25"
    metric: str = "js"
    iterative: bool = False
    exclude_front: float = 0.0
    pins: tuple[str, ...] = ()
    block_metric: str = "cosine"
    calib: str = "wikitext2"
    calib_samples: int = 10
    seq_len: int = 256
    seed: int = 0
    batch_size: int | None = None
    prefix_cache: str = "gpu"
    eval_every: int = 0
    eval_request: Any = None

    def method_record(self, target: int) -> dict[str, Any]:
        record = {"name": self.method, "target": target, "target_spec": str(self.target)}
        if self.method == "finercut":
            record.update(metric=self.metric, exclude_front=self.exclude_front, iterative=True)
        else:
            record.update(metric="cosine", iterative=self.iterative)
            if self.method == "block-drop":
                record["block_metric"] = self.block_metric
        record["seed"] = self.seed
        return record

    @classmethod
    def from_session(cls, session: Session, **overrides) -> SearchOptions:
        """The options a session was recorded with (to continue it)."""
        m, c = session.method, session.calibration
        opts = cls(
            method=m["name"],
            target=str(m.get("target_spec", m.get("target"))),
            metric=m.get("metric", "js"),
            iterative=bool(m.get("iterative", False)),
            exclude_front=float(m.get("exclude_front", 0.0)),
            block_metric=m.get("block_metric", "cosine"),
            calib=c["source"],
            calib_samples=int(c["samples"]),
            seq_len=int(c["seq_len"]),
            seed=int(m.get("seed", 0)),
            batch_size=m.get("batch_size"),  # set when an out-of-memory fallback shrank it
        )
        names = {f.name for f in fields(cls)}
        for key, value in overrides.items():
            if key in names and value is not None:
                setattr(opts, key, value)
        return opts


def model_spec_from_session(session: Session, **overrides) -> ModelSpec:
    m = session.model
    spec = ModelSpec(
        name_or_path=m.get("name_or_path") or "",
        gguf_file=m.get("gguf_file"),
        dtype=m.get("dtype_asked", "auto"),
        revision=m.get("revision"),
    )
    for key, value in overrides.items():
        if value is not None:
            setattr(spec, key, value)
    return spec


@dataclass
class Job:
    loaded: LoadedModel
    session: Session
    session_path: Path
    controller: Controller
    options: SearchOptions
    calibration: Calibration
    engine: SearchEngine = field(repr=False, default=None)

    @property
    def pm(self):
        return self.loaded.pm

    def save(self) -> None:
        self.session.save(self.session_path)

    def events(self) -> Iterator[Event]:
        for event in self.engine.run():
            self.record(event)
            yield event

    def record(self, event: Event) -> None:
        s = self.session
        if isinstance(event, SublayerRemoved):
            s.steps.append(
                Step(
                    removed=event.sublayer,
                    by=event.by,
                    score=event.score,
                    scores=event.scores or None,
                    seconds=event.seconds,
                )
            )
        elif isinstance(event, SublayerRestored):
            undone = s.steps.pop()
            s.undone.append({"removed": undone.removed, "by": undone.by, "undone_at_step": event.step})
        elif isinstance(event, PinChanged):
            pins = set(s.pinned)
            pins = (
                pins | {event.sublayer}
                if event.pinned
                else pins - {event.sublayer} - set(expand([event.sublayer]))
            )
            s.pinned = sorted(pins, key=lambda x: (int(x.split(".")[0]), x))
        elif isinstance(event, EvalFinished):
            s.evals.append(event.record)
        elif isinstance(event, SearchFinished):
            s.finished = event.reason in ("target", "exhausted")
        elif isinstance(event, LogMessage) and self._batch_size_changed():
            s.method["batch_size"] = self.engine.scorer.batch_size  # resume scores at the same size
        else:
            return
        self.save()

    def _batch_size_changed(self) -> bool:
        scorer = self.engine.scorer
        return scorer is not None and scorer.batch_size != self.session.method.get(
            "batch_size", scorer.batch_size
        )


def _evaluator(job: Job):
    def evaluate(request, step: int) -> list[dict]:
        from finercut_tui.eval.runner import run_eval

        return run_eval(job.pm, request, step, job.session.evals)

    return evaluate


SEARCH_DEFINING = ("metric", "exclude_front", "iterative", "block_metric")


def _check_same_search(session: Session, wanted: dict[str, Any], path: Path) -> None:
    """A resumed search must score the way the recorded one did, or its order means nothing."""
    for key in SEARCH_DEFINING:
        if key in session.method and key in wanted and session.method[key] != wanted[key]:
            flag = "--" + key.replace("_", "-")
            raise SessionError(
                f"{path} was searched with {key} {session.method[key]!r}, not {wanted[key]!r}: drop {flag} to "
                "continue it, or start a new session"
            )


def _one_shot_scores(session: Session) -> dict[str, float] | None:
    for step in session.steps:
        if step.scores:
            return dict(step.scores)
    return None


def prepare_job(
    options: SearchOptions,
    spec: ModelSpec,
    session_path: str | Path,
    resume: bool = False,
    command: str | None = None,
    progress=print,
    loaded: LoadedModel | None = None,
) -> Job:
    """Load (or take) the model, build calibration, create or resume the session, build the engine."""
    session_path = Path(session_path)
    M.check_method(options.method)
    existing = None
    if resume:
        existing = Session.load(session_path)  # SessionError before any heavy work
        if existing.method.get("name") != options.method:
            raise SessionError(
                f"{session_path} is a {existing.method.get('name')} session, not {options.method}: "
                "drop --method or start a new session"
            )
    elif session_path.exists():
        raise FinercutError(
            f"session {session_path} already exists: pass --resume to continue it, or another path"
        )
    torch.manual_seed(options.seed)
    lm = loaded or load_model(spec, progress=progress)
    pm = lm.pm
    pins = [parse_id(p, pm.num_blocks, allow_block=True) for p in options.pins]
    model_record = {
        "name_or_path": spec.name_or_path or None,
        "gguf_file": spec.gguf_file,
        "revision": spec.revision,
        "dtype": lm.dtype,
        "dtype_asked": spec.dtype,
        "architecture": lm.architecture,
        "num_blocks": pm.num_blocks,
    }
    progress(f"calibration: {options.calib_samples} x {options.seq_len} tokens from {options.calib}")
    calibration = build_calibration(lm.tokenizer, options.calib, options.calib_samples, options.seq_len)
    if existing is not None:
        check_matches(existing, model=model_record, calibration=calibration.spec(), source=str(session_path))
        session = existing
        pins = list(dict.fromkeys(session.pinned + pins))
    else:
        session = Session(
            model=model_record,
            calibration=calibration.spec(),
            method={},
            pinned=pins,
            command=command or shlex.join(["finercut-tui", *sys.argv[1:]]),
        )
    target = M.resolve_target(options.target, options.method, pm.num_blocks, set(expand(pins)))
    if existing is not None:
        _check_same_search(existing, options.method_record(target), session_path)
        session.method.update(target=target, target_spec=str(options.target))
    else:
        session.method = options.method_record(target)
    session.pinned = pins
    if options.eval_request is not None:
        options.eval_request = dataclasses.replace(
            options.eval_request,
            calibration_source=calibration.source,
            calibration_split=calibration.split,
            calibration_text_sha256=calibration.text_sha256,
        )
    config = SearchConfig(
        method=options.method,
        target=target,
        metric=options.metric,
        iterative=options.iterative,
        exclude_front=options.exclude_front,
        block_metric=options.block_metric,
        batch_size=options.batch_size,
        prefix_cache=options.prefix_cache,
        eval_every=options.eval_every,
        eval_request=options.eval_request,
    )
    controller = Controller()
    job = Job(
        loaded=lm,
        session=session,
        session_path=session_path,
        controller=controller,
        options=options,
        calibration=calibration,
    )
    one_shot = (
        _one_shot_scores(session)
        if (existing and options.method != "finercut" and not options.iterative)
        else None
    )
    job.engine = SearchEngine(
        pm,
        calibration.input_ids,
        config,
        controller=controller,
        order=session.removed_at(),
        pinned=set(pins),
        one_shot_scores=one_shot,
        evaluator=_evaluator(job),  # always: "evaluate now" from the UI needs one too
        evaluated_steps={int(e.get("step", -1)) for e in session.evals},
    )
    job.save()  # the session exists on disk before the first step
    return job
