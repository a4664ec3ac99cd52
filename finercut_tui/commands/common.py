"""Options shared by several subcommands."""

from __future__ import annotations

import argparse


def add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        "-m",
        required=False,
        default=None,
        help="hub id (org/name), local folder, or smollm2-135m (the embedded default model); with "
        "--gguf-file, the folder holding it",
    )
    group.add_argument(
        "--gguf-file",
        default=None,
        help="a .gguf file (path, or name inside --model); converted once and cached",
    )
    group.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    group.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="weights dtype (auto: bf16 on GPUs that support it, fp32 on CPU)",
    )
    group.add_argument(
        "--device",
        default="auto",
        help="auto | cpu | cuda | cuda:N (auto spreads a model too big for one GPU over all GPUs)",
    )


def model_spec(args: argparse.Namespace):
    from finercut_tui.errors import FinercutError
    from finercut_tui.model.loading import ModelSpec

    if not args.model and not args.gguf_file:
        raise FinercutError("no model given: pass --model ORG/NAME or a local folder (or --gguf-file FILE)")
    return ModelSpec(
        name_or_path=args.model or "",
        gguf_file=args.gguf_file,
        dtype=args.dtype,
        device=args.device,
        revision=args.revision,
    )


def write_output(text: str, out: str | None) -> None:
    """A report to the file `out` (folders made as needed), or to standard output."""
    import sys
    from pathlib import Path

    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {out}", file=sys.stderr)
    else:
        sys.stdout.write(text)


def progress_printer(quiet: bool = False):
    import sys

    def emit(message: str) -> None:
        if not quiet:
            print(message, file=sys.stderr, flush=True)

    return emit


def add_eval_args(parser, batch_flag: str = "--batch-size") -> None:
    """What to evaluate: shared by `eval` and by `run`/`tui` (where --batch-size is the search's)."""
    parser.add_argument(
        "--ppl",
        default=None,
        help="perplexity text: wikitext2 (test split), c4 (validation) or a .txt/.jsonl",
    )
    parser.add_argument(
        "--ppl-seq-len", type=int, default=2048, help="perplexity window length (default 2048)"
    )
    parser.add_argument(
        "--ppl-max-tokens", type=int, default=None, help="score at most this many tokens of the text"
    )
    parser.add_argument(
        "--tasks", default=None, help="comma-separated lm-eval tasks or groups, e.g. arc_easy,hellaswag"
    )
    parser.add_argument("--tasks-dir", default=None, help="folder of local lm-eval task YAMLs (include path)")
    parser.add_argument(
        "--limit",
        type=float,
        default=None,
        help="examples per task (or a fraction < 1); for quick checks only",
    )
    parser.add_argument(
        "--num-fewshot", type=int, default=None, help="few-shot examples (default: the task's)"
    )
    parser.add_argument(
        batch_flag,
        dest="eval_batch_size",
        type=int,
        default=8,
        help="batch size for perplexity and lm-eval (default 8)",
    )


def eval_request(args: argparse.Namespace, seed: int, calibration=None):
    """The EvalRequest the options of `add_eval_args` describe; `calibration` is the session's
    CalibrationRecord (so an evaluation on the calibration text is flagged)."""
    from finercut_tui.eval.request import EvalRequest

    return EvalRequest(
        ppl=args.ppl,
        ppl_seq_len=args.ppl_seq_len,
        ppl_max_tokens=args.ppl_max_tokens,
        tasks=args.tasks or (),
        tasks_dir=args.tasks_dir,
        limit=args.limit,
        num_fewshot=args.num_fewshot,
        batch_size=args.eval_batch_size,
        seed=seed,
        calibration_source=getattr(calibration, "source", None),
        calibration_split=getattr(calibration, "split", None),
        calibration_text_sha256=getattr(calibration, "text_sha256", None),
    )
