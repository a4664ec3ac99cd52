"""Options shared by several subcommands."""

from __future__ import annotations

import argparse


def add_model_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
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
    parser.set_defaults(_model_required=required)


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


def progress_printer(quiet: bool = False):
    import sys

    def emit(message: str) -> None:
        if not quiet:
            print(message, file=sys.stderr, flush=True)

    return emit
