"""What to evaluate: perplexity on a text and/or lm-eval tasks, as one plain, validated request.

Torch-free data (its options are read when the command line is built, and `show` / `replay` load
no torch); `eval/request.py` adds the input checks that need the eval package.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from finercut_tui.domain.options import Option, option, options_of, values_from
from finercut_tui.errors import FinercutError


def _split_tasks(tasks: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    if not tasks:
        return ()
    items = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    out: list[str] = []
    for item in items:
        name = str(item).strip()
        if name and name not in out:
            out.append(name)
    return tuple(out)


def normalize_limit(limit: float | int | str | None) -> float | int | None:
    """lm-eval's `limit`: a count of examples per task (>= 1) or a fraction of them (< 1)."""
    if limit is None:
        return None
    try:
        value = float(limit)
    except (TypeError, ValueError) as exc:
        raise FinercutError(
            f"--limit must be a number (examples per task, or a fraction < 1), got {limit!r}"
        ) from exc
    if not value > 0:
        raise FinercutError(f"--limit must be > 0 (examples per task, or a fraction < 1), got {limit!r}")
    if value >= 1:
        if not value.is_integer():
            raise FinercutError(f"--limit >= 1 counts examples and must be a whole number, got {limit!r}")
        return int(value)
    return value


@dataclass(frozen=True)
class EvalRequest:
    """One evaluation: perplexity on `ppl` (wikitext2 | c4 | a .txt/.jsonl path) and/or lm-eval `tasks`.

    `calibration_*` describe the text the search scored on, so that scoring it again as "held-out"
    text is caught (see `runner.overlaps_calibration`); they are not part of what is measured.
    """

    ppl: str | None = option(
        None,
        label="perplexity on",
        placeholder="wikitext2 | c4 | PATH (empty: none)",
        help="perplexity text: wikitext2 (test split), c4 (validation), pydoc (its second half) or a "
        ".txt/.jsonl",
    )
    ppl_seq_len: int = option(2048, type=int, help="perplexity window length")
    ppl_max_tokens: int | None = option(
        None,
        type=int,
        label="max tokens",
        placeholder="all",
        help="score at most this many tokens of the text",
    )
    tasks: tuple[str, ...] = option(
        (),
        label="lm-eval tasks",
        placeholder="arc_easy,hellaswag (empty: none)",
        help="comma-separated lm-eval tasks or groups, e.g. arc_easy,hellaswag",
    )
    tasks_dir: str | None = option(
        None,
        label="tasks folder",
        placeholder="local task YAMLs (optional)",
        help="folder of local lm-eval task YAMLs (include path)",
    )
    limit: float | int | None = option(
        None,
        type=float,
        label="limit",
        placeholder="examples per task (or fraction < 1)",
        help="examples per task (or a fraction < 1); for quick checks only",
    )
    num_fewshot: int | None = option(None, type=int, help="few-shot examples (default: the task's)")
    batch_size: int = option(
        8, "--batch-size", type=int, dest="eval_batch_size", help="batch size for perplexity and lm-eval"
    )
    seed: int = 0
    calibration_source: str | None = None
    calibration_split: str | None = None
    calibration_text_sha256: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", _split_tasks(self.tasks))
        object.__setattr__(self, "limit", normalize_limit(self.limit))
        if self.tasks_dir is not None:
            object.__setattr__(self, "tasks_dir", os.path.expanduser(str(self.tasks_dir)))
        if not self.ppl and not self.tasks:
            raise FinercutError(
                "nothing to evaluate: pass --ppl wikitext2|c4|PATH and/or --tasks a,b"
                + (" (--tasks-dir only says where local task YAMLs are)" if self.tasks_dir else "")
            )
        if int(self.ppl_seq_len) < 2:
            raise FinercutError(f"--ppl-seq-len must be >= 2, got {self.ppl_seq_len}")
        if self.ppl_max_tokens is not None and int(self.ppl_max_tokens) < 2:
            raise FinercutError(f"--ppl-max-tokens must be >= 2, got {self.ppl_max_tokens}")
        if int(self.batch_size) < 1:
            raise FinercutError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.num_fewshot is not None and int(self.num_fewshot) < 0:
            raise FinercutError(f"--num-fewshot must be >= 0, got {self.num_fewshot}")

    def describe(self) -> str:
        """One short line for logs and the UI, e.g. `ppl wikitext2 (seq 2048) + arc_easy (limit 100)`."""
        parts = []
        if self.ppl:
            opts = [f"seq {self.ppl_seq_len}"]
            if self.ppl_max_tokens:
                opts.append(f"max {self.ppl_max_tokens} tok")
            parts.append(f"ppl {self.ppl} ({', '.join(opts)})")
        if self.tasks:
            opts = []
            if self.limit is not None:
                opts.append(f"limit {self.limit}")
            if self.num_fewshot is not None:
                opts.append(f"{self.num_fewshot}-shot")
            parts.append(",".join(self.tasks) + (f" ({', '.join(opts)})" if opts else ""))
        return " + ".join(parts)


def eval_options(group: str | None = None, batch_flag: str = "--batch-size") -> list[Option]:
    """The options of an evaluation (`eval`; `run`, `tui` and `heal` name the batch size
    `--eval-batch-size`, their --batch-size being the search's or the training's)."""
    out = []
    for opt in options_of(EvalRequest):
        if opt.field == "batch_size":
            opt = opt.with_(flags=(batch_flag,))
        out.append(opt.with_(group=group))
    return out


def request_from_args(args: Any, seed: int, calibration: Any = None) -> EvalRequest:
    """The EvalRequest that the options of `eval_options` in `args` describe; `calibration` is the
    session's CalibrationRecord (so that an evaluation on the calibration text is flagged)."""
    return EvalRequest(
        **values_from(args, eval_options()),
        seed=seed,
        calibration_source=getattr(calibration, "source", None),
        calibration_split=getattr(calibration, "split", None),
        calibration_text_sha256=getattr(calibration, "text_sha256", None),
    )
