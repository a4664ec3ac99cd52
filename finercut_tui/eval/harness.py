"""lm-eval-harness tasks on the in-memory (possibly pruned) model.

The model is wrapped in lm-eval's HFLM as an object: HFLM then neither moves nor copies it, and
nothing is loaded from the hub (we also skip HFLM's hub lookup of a model SHA). Local task folders
are indexed with `TaskManager(include_path=...)`; the built-in index (~15k YAMLs, seconds to scan)
is only built when a requested name is not in the local folder, and is kept for the process.

lm-eval seeds Python's, NumPy's and torch's global RNGs; `preserved_rng` puts them back so that an
evaluation in the middle of a search changes nothing the search does afterwards.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import fnmatch
import hashlib
import logging
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from finercut_tui.errors import FinercutError, error_line

log = logging.getLogger(__name__)

# preferred main metrics, in order; otherwise the first metric lm-eval reports for the task
PREFERRED_METRICS = ("acc_norm", "acc")

_TASK_MANAGERS: dict[Any, Any] = {}


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore Python, NumPy and torch (CPU and initialised CUDA) RNG states on exit."""
    py_state = random.getstate()
    np_state = np.random.get_state()
    torch_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


def check_tasks_dir(tasks_dir: str | None) -> Path | None:
    if tasks_dir is None:
        return None
    path = Path(os.path.expanduser(tasks_dir))
    if not path.is_dir():
        raise FinercutError(f"tasks dir not found: {tasks_dir} (pass a folder of lm-eval task YAML files)")
    return path.resolve()


def tasks_dir_fingerprint(tasks_dir: str | None) -> str | None:
    """SHA-256 over the folder's files (names and bytes), so edited local tasks get a new baseline."""
    path = check_tasks_dir(tasks_dir)
    if path is None:
        return None
    h = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        h.update(b"\0")
    return "sha256:" + h.hexdigest()


def _task_manager(tasks_dir: Path | None, include_defaults: bool):
    from lm_eval.tasks import TaskManager

    key = (str(tasks_dir) if tasks_dir else None, include_defaults, tasks_dir_fingerprint(tasks_dir))
    if key not in _TASK_MANAGERS:
        _TASK_MANAGERS[key] = TaskManager(
            include_path=str(tasks_dir) if tasks_dir else None, include_defaults=include_defaults
        )
    return _TASK_MANAGERS[key]


def _is_glob(name: str) -> bool:
    return any(ch in name for ch in "*?[")


def _missing(names: Sequence[str], known: set[str]) -> list[str]:
    out = []
    for name in names:
        if _is_glob(name):
            if not fnmatch.filter(known, name):
                out.append(name)
        elif name not in known and not (name.endswith((".yaml", ".yml")) and Path(name).is_file()):
            out.append(name)
    return out


def resolve_tasks(tasks: Sequence[str], tasks_dir: str | None = None) -> tuple[Any, list[str]]:
    """A TaskManager that knows every name in `tasks`, and the names with globs expanded.

    Raises FinercutError naming close matches for an unknown task and for a missing tasks dir.
    """
    path = check_tasks_dir(tasks_dir)
    if not tasks:
        local = sorted(_task_manager(path, include_defaults=False).all_tasks) if path else []
        hint = f": pick from {', '.join(local[:20])}" if local else ""
        raise FinercutError(f"no lm-eval task given (--tasks a,b){hint}")
    manager = None
    if path is not None:
        local_manager = _task_manager(path, include_defaults=False)
        if not _missing(tasks, set(local_manager.all_tasks)):
            manager = local_manager
    if manager is None:
        manager = _task_manager(path, include_defaults=True)
    known = set(manager.all_tasks)
    missing = _missing(tasks, known)
    if missing:
        name = missing[0]
        close = difflib.get_close_matches(name, sorted(known), n=5, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else "no close match"
        where = f" or in {tasks_dir}" if tasks_dir else " (local task YAMLs: --tasks-dir DIR)"
        raise FinercutError(
            f"unknown lm-eval task {name!r}: {hint} (names known to lm-eval{where}; list them with `lm-eval ls tasks`)"
        )
    names: list[str] = []
    for name in tasks:
        for match in sorted(fnmatch.filter(known, name)) if _is_glob(name) else [name]:
            if match not in names:
                names.append(match)
    return manager, names


def _metric_name(key: str) -> tuple[str, str] | None:
    """`"acc_norm,none"` -> ("acc_norm", "none"); stderr and bookkeeping keys -> None."""
    if "," not in key:
        return None
    metric, _, filt = key.partition(",")
    if metric.endswith("_stderr"):
        return None
    return metric, filt


def main_metric(entry: dict[str, Any]) -> str | None:
    """The key of the metric we report for one lm-eval result entry: acc_norm, else acc, else the first."""
    keys = [
        k
        for k, v in entry.items()
        if _metric_name(k) and isinstance(v, int | float) and not isinstance(v, bool)
    ]
    for preferred in PREFERRED_METRICS:
        for key in keys:
            if _metric_name(key)[0] == preferred:
                return key
    return keys[0] if keys else None


@dataclass
class TaskResult:
    name: str
    metric: str  # lm-eval key, e.g. "acc_norm,none"
    value: float
    higher_is_better: bool


@dataclass
class HarnessResults:
    tasks: list[TaskResult] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)  # what simple_evaluate returned (results, groups, ...)

    def values(self) -> dict[str, float]:
        return {t.name: t.value for t in self.tasks}


def summarize(out: dict[str, Any]) -> list[TaskResult]:
    """One main metric per reported entry: a group's aggregate when it has one (its subtasks are then
    not listed), else every task (a tag or an aggregate-less group lists its tasks)."""
    results: dict[str, dict[str, Any]] = out.get("results") or {}
    group_subtasks: dict[str, list[str]] = out.get("group_subtasks") or {}
    higher: dict[str, dict[str, bool]] = out.get("higher_is_better") or {}
    covered: set[str] = set()

    def cover(group: str) -> None:
        for child in group_subtasks.get(group, []):
            covered.add(child)
            cover(child)

    for name, entry in results.items():
        if name in group_subtasks and main_metric(entry):
            cover(name)
    reported = []
    for name, entry in results.items():
        key = main_metric(entry)
        if name in covered or key is None:
            continue
        metric = key.split(",", 1)[0]
        better = higher.get(name, {}).get(metric)
        if better is None:  # lm-eval's own default for metrics it knows
            from lm_eval.api.registry import is_higher_better

            better = is_higher_better(metric)
            if better is None:  # a metric lm-eval does not know: judge by its name
                better = not any(s in metric for s in ("perplexity", "bits_per", "loss", "error"))
        reported.append(TaskResult(name, key, float(entry[key]), bool(better)))
    return reported


class _ExpectedHFLMWarnings(logging.Filter):
    """Drop HFLM's warnings about being given a model object: that is exactly what we mean to do."""

    PREFIXES = ("`pretrained` model kwarg is not of type", "Passed an already-initialized model")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.PREFIXES)


@contextlib.contextmanager
def _quiet_hflm() -> Iterator[None]:
    logger = logging.getLogger("lm_eval.models.huggingface")
    quiet = _ExpectedHFLMWarnings()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def _in_memory_hflm_class():
    from lm_eval.models.huggingface import HFLM

    class InMemoryHFLM(HFLM):
        """HFLM around a model object; its model info comes from memory, not from a hub lookup."""

        def get_model_info(self) -> dict:
            model = self._model
            return {
                "model_num_parameters": sum(p.numel() for p in model.parameters()),
                "model_dtype": str(getattr(model, "dtype", "")),
                "model_revision": None,
                "model_sha": "",
            }

    return InMemoryHFLM


def make_lm(model: torch.nn.Module, tokenizer, batch_size: int = 8):
    """HFLM over the in-memory `model` (not moved, not copied) and its `tokenizer`."""
    if tokenizer is None:
        raise FinercutError("lm-eval needs the model's tokenizer, and this model was loaded without one")
    if getattr(tokenizer, "pad_token_id", None) is None:
        tokenizer = copy.deepcopy(tokenizer)  # lm-eval sets a pad token: not on the caller's tokenizer
    return _in_memory_hflm_class()(pretrained=model, tokenizer=tokenizer, batch_size=int(batch_size))


def run_tasks(
    model: Any,
    tokenizer,
    tasks: Sequence[str],
    *,
    tasks_dir: str | None = None,
    limit: float | int | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
) -> HarnessResults:
    """Run lm-eval `tasks` on `model` in its current state (HF model or PrunableModel).

    All four lm-eval seeds are `seed`; global RNG states are restored afterwards. Stderr is not
    computed (bootstrap_iters=0: lm-eval would otherwise fork worker processes for some metrics).
    """
    import lm_eval

    from finercut_tui.eval.perplexity import _hf_model

    manager, names = resolve_tasks(tasks, tasks_dir)
    hf = _hf_model(model)
    if tokenizer is None:
        tokenizer = getattr(model, "tokenizer", None)
    was_training = hf.training
    with preserved_rng(), _quiet_hflm():
        lm = make_lm(hf, tokenizer, batch_size)
        try:
            out = lm_eval.simple_evaluate(
                model=lm,
                tasks=list(names),
                num_fewshot=num_fewshot,
                batch_size=int(batch_size),
                limit=limit,
                bootstrap_iters=0,
                log_samples=False,
                task_manager=manager,
                random_seed=seed,
                numpy_random_seed=seed,
                torch_random_seed=seed,
                fewshot_random_seed=seed,
            )
        except (OSError, KeyError, ValueError) as exc:  # missing data files, bad task configs
            raise FinercutError(f"lm-eval could not run {', '.join(names)}: {error_line(exc, 200)}") from exc
        finally:
            hf.train(was_training)
    if out is None:  # only on non-zero ranks
        return HarnessResults()
    raw = {
        k: out.get(k)
        for k in ("results", "groups", "group_subtasks", "higher_is_better", "n-shot", "versions")
    }
    return HarnessResults(tasks=summarize(out), raw=raw)
