"""Evaluation of a (pruned) model: perplexity on held-out text and lm-eval-harness tasks.

`run_eval(pm, EvalRequest(...), step, session.evals)` measures the model in its current state and
returns session records with "retained %" against the unpruned baseline (measured once per request,
with all sublayers temporarily restored). lm-eval is imported only when tasks are run.
This package never imports textual.
"""

from finercut_tui.eval.harness import HarnessResults, TaskResult, resolve_tasks, run_tasks
from finercut_tui.eval.perplexity import make_windows, perplexity, score_windows, token_fingerprint
from finercut_tui.eval.request import EvalRequest
from finercut_tui.eval.runner import find_baseline, overlaps_calibration, retained_percent, run_eval

__all__ = [
    "EvalRequest",
    "HarnessResults",
    "TaskResult",
    "find_baseline",
    "make_windows",
    "overlaps_calibration",
    "perplexity",
    "resolve_tasks",
    "retained_percent",
    "run_eval",
    "run_tasks",
    "score_windows",
    "token_fingerprint",
]
