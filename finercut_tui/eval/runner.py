"""Evaluate the model at a search step and report how much of the unpruned model's performance it keeps.

`run_eval` is what the search engine (evaluate-now), the TUI, `eval`, `heal` and `repair` call. It
returns `EvalRecord`s (domain/evals.py) for the session's `evals:` list; as YAML (`to_dict`):

    {step: k,                       # removals applied (0 = the unpruned baseline)
     what: {...},                   # the request and data fingerprints: records with equal `what`
                                    # measured the same thing, so step 0 is the baseline of step k
     results: {"ppl:wikitext2": 12.3, "arc_easy": 0.61, ...},
     average: 0.61,                 # mean of the lm-eval task metrics (perplexities excluded)
     retained: {"ppl:wikitext2": 88.1, "arc_easy": 95.0, ...},   # % of the baseline kept
     retained_average: 95.0,
     metrics: {"ppl:wikitext2": "ppl", "arc_easy": "acc_norm,none"},
     higher_is_better: {"ppl:wikitext2": false, "arc_easy": true},
     overlaps_calibration: false,   # only with --ppl: true when the eval text is the calibration text
     seconds: 4.2}

Retained % = 100 * pruned / baseline for higher-is-better metrics (accuracies) and
100 * baseline / pruned for lower-is-better ones (perplexities), so 100 means "as good as the
unpruned model" and lower is worse either way; None where the baseline value makes it undefined (0).
`retained_average` is the mean over the lm-eval task metrics that enter `average` (as the papers'
"retained performance"); for an eval with only perplexity-type results it is their mean instead.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finercut_tui.data.sources import NAMED, Text, load_text, text_sha256
from finercut_tui.domain.evals import EvalRecord
from finercut_tui.errors import FinercutError
from finercut_tui.eval.request import EvalRequest

log = logging.getLogger(__name__)

# the split `load_text(name, purpose="calibration")` reads, for sessions that did not record it
_CALIBRATION_SPLIT = {"wikitext2": "train", "c4": "validation", "pydoc": "first-half"}


def _bare(sha: str) -> str:
    return sha.split(":", 1)[-1].lower()


def overlaps_calibration(request: EvalRequest, text: Text) -> bool:
    """True when the eval text is the calibration text: the same named corpus and split, or a file
    with the same content (compared by SHA-256, or by path when the calibration file is gone)."""
    source = request.calibration_source
    if not source:
        return False
    if text.source in NAMED and text.split != "file":
        split = request.calibration_split or _CALIBRATION_SPLIT.get(source)
        return source == text.source and split == text.split
    mine = text_sha256(text.text)
    if request.calibration_text_sha256:
        return _bare(request.calibration_text_sha256) == _bare(mine)
    if source in NAMED:
        return False  # a named corpus against a file: not comparable without downloading it
    cal_path = Path(os.path.expanduser(source))
    if cal_path.is_file():
        try:
            return text_sha256(load_text(source, purpose="calibration").text) == mine
        except FinercutError:
            pass
    eval_path = Path(os.path.expanduser(text.source))
    return cal_path.resolve() == eval_path.resolve()


def retained_percent(value: float | None, baseline: float | None, higher_is_better: bool) -> float | None:
    """100 * value / baseline (higher is better) or 100 * baseline / value (lower is better)."""
    if value is None or baseline is None:
        return None
    num, den = (value, baseline) if higher_is_better else (baseline, value)
    if den == 0 or not math.isfinite(den) or not math.isfinite(num):
        if higher_is_better is False and math.isinf(value) and math.isfinite(baseline):
            return 0.0  # an infinite perplexity keeps nothing
        return None
    return round(100.0 * float(num) / float(den), 6)  # no 100.00000000000001 in the YAML


def _mean(values: list[float | None]) -> float | None:
    kept = [float(v) for v in values if v is not None and math.isfinite(v)]
    return sum(kept) / len(kept) if kept else None


@dataclass
class _Prepared:
    """Everything measured identically at every step: the windows, the tasks, and `what`."""

    request: EvalRequest
    what: dict[str, Any]
    ppl_name: str | None = None
    windows: Any = None  # PerplexityWindows
    overlap: bool | None = None
    warnings: tuple[str, ...] = ()


def prepare(pm, request: EvalRequest) -> _Prepared:
    """Load and tokenise the eval text, check the tasks, and fingerprint it all (no model forward)."""
    from finercut_tui.eval.perplexity import effective_seq_len, make_windows

    what: dict[str, Any] = {}
    prepared = _Prepared(request=request, what=what)
    if request.tasks:
        from finercut_tui.eval.harness import resolve_tasks, tasks_dir_fingerprint

        resolve_tasks(request.tasks, request.tasks_dir)  # fail early, before any model forward
    if request.ppl:
        text = load_text(request.ppl, purpose="evaluation")
        seq_len = effective_seq_len(pm, request.ppl_seq_len)
        windows = make_windows(pm.tokenizer, text.text, seq_len, request.ppl_max_tokens)
        what.update(
            ppl=request.ppl,
            ppl_split=text.split,
            ppl_seq_len=int(windows.input_ids.shape[1]),
            ppl_max_tokens=request.ppl_max_tokens,
            ppl_windows=int(windows.input_ids.shape[0]),
            ppl_tokens=int(windows.input_ids.numel()),
            ppl_fingerprint=windows.fingerprint,
        )
        prepared.ppl_name = f"ppl:{request.ppl}"
        prepared.windows = windows
        prepared.overlap = overlaps_calibration(request, text)
        if prepared.overlap:
            prepared.warnings = (
                f"perplexity text {request.ppl} ({text.split}) is the calibration text the search scored "
                "on: it is not held-out, so this perplexity flatters the pruned model",
            )
    if request.tasks:
        from importlib.metadata import PackageNotFoundError, version

        try:
            lm_eval_version = version("lm_eval")
        except PackageNotFoundError:  # pragma: no cover - lm-eval is a dependency
            lm_eval_version = None
        what.update(
            tasks=list(request.tasks),
            tasks_dir=request.tasks_dir,
            tasks_dir_fingerprint=tasks_dir_fingerprint(request.tasks_dir),
            limit=request.limit,
            num_fewshot=request.num_fewshot,
            seed=int(request.seed),
            lm_eval=lm_eval_version,
        )
    return prepared


def _measure(pm, prepared: _Prepared, progress: Callable[[str], None]) -> dict[str, Any]:
    """Results of the model in its current state: {results, metrics, higher_is_better, seconds}."""
    from finercut_tui.eval.harness import preserved_rng, run_tasks
    from finercut_tui.eval.perplexity import score_windows

    request = prepared.request
    start = time.perf_counter()
    results: dict[str, float] = {}
    metrics: dict[str, str] = {}
    higher: dict[str, bool] = {}
    with preserved_rng():
        if prepared.ppl_name:
            windows = prepared.windows.input_ids
            progress(f"perplexity on {request.ppl}: {windows.shape[0]} x {windows.shape[1]} tokens")
            nll, count = score_windows(pm, windows, request.batch_size)
            mean = nll / count
            results[prepared.ppl_name] = math.exp(mean) if mean < 709 else math.inf
            metrics[prepared.ppl_name] = "ppl"
            higher[prepared.ppl_name] = False
        if request.tasks:
            progress(f"lm-eval: {', '.join(request.tasks)}")
            harness = run_tasks(
                pm,
                pm.tokenizer,
                request.tasks,
                tasks_dir=request.tasks_dir,
                limit=request.limit,
                num_fewshot=request.num_fewshot,
                batch_size=request.batch_size,
                seed=request.seed,
            )
            for task in harness.tasks:
                results[task.name] = task.value
                metrics[task.name] = task.metric
                higher[task.name] = task.higher_is_better
    return {
        "results": results,
        "metrics": metrics,
        "higher_is_better": higher,
        "seconds": time.perf_counter() - start,
    }


def _record(
    step: int, prepared: _Prepared, measured: dict[str, Any], baseline: EvalRecord | None
) -> EvalRecord:
    """This step's record; `baseline` None: this is the baseline (retained 100% of itself)."""
    results = measured["results"]
    higher = measured["higher_is_better"]
    base_results = baseline.results if baseline is not None else results
    retained = {
        name: retained_percent(value, base_results.get(name), higher[name]) for name, value in results.items()
    }
    task_names = [n for n in results if n != prepared.ppl_name and higher[n]]
    return EvalRecord(
        step=int(step),
        what=copy.deepcopy(prepared.what),  # no shared objects: YAML would write anchors
        results={k: float(v) for k, v in results.items()},
        average=_mean([results[n] for n in task_names]),
        retained=retained,
        retained_average=(
            _mean([retained[n] for n in task_names]) if task_names else _mean(list(retained.values()))
        ),
        metrics=dict(measured["metrics"]),
        higher_is_better=dict(higher),
        overlaps_calibration=None if prepared.overlap is None else bool(prepared.overlap),
        warnings=tuple(prepared.warnings),
        seconds=round(float(measured["seconds"]), 3),
    )


def find_baseline(session_evals: Iterable[EvalRecord | dict], what: dict[str, Any]) -> EvalRecord | None:
    """The latest step-0 record that measured exactly `what` (records, or their YAML mappings)."""
    for record in reversed(list(session_evals or [])):
        if isinstance(record, dict):
            record = EvalRecord.from_dict(record)
        if record.step == 0 and not record.failed and record.what == what:
            return record
    return None


def run_eval(
    pm,
    request: EvalRequest,
    step: int,
    session_evals: Iterable[EvalRecord | dict] | None = None,
    *,
    progress: Callable[[str], None] | None = None,
) -> list[EvalRecord]:
    """Evaluate `pm` as it is now (the caller applied the first `step` removals); return the records
    to append to the session's `evals:`: the baseline first when `session_evals` has none for the
    same `what` (measured with every sublayer restored, then the removals put back), then this step's.

    Leaves the model's removed set and the global RNG states as they were.
    """
    emit = progress or (lambda message: None)
    prepared = prepare(pm, request)
    for warning in prepared.warnings:
        if progress is None:
            log.warning(warning)
        else:
            progress(f"warning: {warning}")
    baseline = find_baseline(session_evals or [], prepared.what)
    out: list[EvalRecord] = []
    if baseline is None or step == 0:
        removed = pm.removed
        if removed:
            emit(f"baseline: measuring the unpruned model (restoring {len(removed)} sublayers for it)")
        try:
            pm.restore_all()
            measured = _measure(pm, prepared, emit)
        finally:
            pm.set_removed(removed)
        record = _record(0, prepared, measured, baseline)
        out.append(record)
        if step == 0:
            return out
        baseline = record
    measured = _measure(pm, prepared, emit)
    out.append(_record(step, prepared, measured, baseline))
    return out
