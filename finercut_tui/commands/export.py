"""`finercut-tui export`: write the pruned model at a session step to a folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from finercut_tui.commands.common import add_model_args, model_spec, progress_printer
from finercut_tui.commands.options import SESSION_FILE, add_options, add_step_options
from finercut_tui.domain.options import Option
from finercut_tui.domain.steps import StepRule, resolve_step
from finercut_tui.errors import FinercutError
from finercut_tui.export.formats import DEFAULT_FORMAT

STEPS = StepRule(verb="export the model")
OUT = Option(("--out",), required=True, help="output folder (must be empty or absent)")
FORCE = Option(("--force",), action="store_true", help="write into a non-empty --out (replaces an export)")
FORMAT = Option(
    ("--format",),
    default=DEFAULT_FORMAT,
    metavar="FORMAT",
    help="finercut (the load_pruned folder; whole blocks: a standard checkpoint) | nemotron-nas (vLLM, "
    "SGLang, transformers with trust_remote_code) | gguf (llama.cpp, ollama) | auto (a plain checkpoint "
    "for whole-block prunes, nemotron-nas for sublayer prunes of Llama/SmolLM/Mistral/Qwen2, else finercut)",
)
OUTTYPE = Option(("--outtype",), metavar="TYPE", help="gguf tensor type: f32, f16 (default), bf16, q8_0")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="write the pruned model at a session step (removed modules physically absent)",
        description=(
            "Write the model pruned by the first K removals of SESSION to --out. Whole blocks only: a "
            "standard checkpoint with fewer layers (AutoModelForCausalLM.from_pretrained loads it). "
            "Single sublayers: weights without them + the removal list in config.json "
            "(finercut_tui.load_pruned loads it). --format nemotron-nas writes a folder vLLM, SGLang and "
            "transformers serve, --format gguf a file for llama.cpp and ollama. Adds PRUNING.md with the "
            "command that loads it. The model defaults to the session's."
        ),
    )
    add_options(p, [SESSION_FILE])
    add_step_options(p, STEPS)
    add_options(p, [OUT, FORCE, FORMAT, OUTTYPE])
    add_model_args(p)
    p.set_defaults(func=run)


def check_out_is_not_the_source(spec, out) -> None:
    """--out must not be the folder the model is read from."""
    source = Path(spec.name_or_path).expanduser()
    if spec.name_or_path and source.is_dir() and source.resolve() == Path(out).expanduser().resolve():
        raise FinercutError(f"--out {out} is the source model's folder: pick another folder")


def export_step(args: argparse.Namespace, pm, session, k: int, spec, progress):
    """`pm` with the session's first k removals written to --out in --format (export, repair)."""
    from finercut_tui.export.formats import write_export

    return write_export(
        args.format,
        pm,
        args.out,
        session.removed_at(k),
        outtype=args.outtype,
        source_model=spec.gguf_file or spec.name_or_path,
        session=session,
        session_path=args.session,
        step=k,
        force=args.force,
        progress=progress,
    )


def run(args: argparse.Namespace) -> int:
    from finercut_tui.export.formats import check_format_args, load_hint
    from finercut_tui.model.checkpoint import check_out_dir
    from finercut_tui.model.loading import load_model
    from finercut_tui.session import Session, check_matches

    session = Session.load(args.session)
    k = resolve_step(session, args.step, args.ratio, STEPS)
    check_format_args(args.format, args.outtype)
    check_out_dir(args.out, args.force)  # fail before the (slow) model load
    progress = progress_printer()
    spec = model_spec(args, session)
    check_out_is_not_the_source(spec, args.out)
    lm = load_model(spec, progress=progress)
    check_matches(session, architecture=lm.architecture, num_blocks=lm.pm.num_blocks, source=args.session)
    result = export_step(args, lm.pm, session, k, spec, progress)
    kept = result.params_after / result.params_before
    load = load_hint(result)
    print(
        f"wrote {result.out_dir}: step {k} of {len(session.steps)}, {len(result.removed)} of "
        f"{2 * result.num_blocks} sublayers removed ({result.format} format); parameters "
        f"{result.params_before:,} -> {result.params_after:,} ({100 * kept:.1f}%); KV cache "
        f"{result.kept_attention}/{result.num_blocks} layers; load with {load}"
    )
    return 0
