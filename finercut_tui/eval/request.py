"""What to evaluate (`EvalRequest`, declared in domain/eval_request.py), and the check of its inputs."""

from __future__ import annotations

import os

from finercut_tui.domain.eval_request import EvalRequest, eval_options, normalize_limit, request_from_args

__all__ = ["EvalRequest", "check_inputs", "eval_options", "normalize_limit", "request_from_args"]


def check_inputs(request: EvalRequest) -> None:
    """A missing perplexity file, unknown tasks or a missing tasks folder: fail before the (slow)
    model load, with the one-line errors the evaluation itself would give."""
    from finercut_tui.data.sources import NAMED, load_text

    if request.ppl and request.ppl not in NAMED and not os.path.isfile(os.path.expanduser(request.ppl)):
        load_text(request.ppl, purpose="evaluation")  # raises the one-line "text file not found"
    if request.tasks:
        from finercut_tui.eval.harness import resolve_tasks

        resolve_tasks(request.tasks, request.tasks_dir)
    elif request.tasks_dir is not None:
        from finercut_tui.eval.harness import check_tasks_dir

        check_tasks_dir(request.tasks_dir)
