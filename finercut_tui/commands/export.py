"""`finercut-tui export`: write the pruned model at a session step to a folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from finercut_tui.commands.common import add_model_args, progress_printer
from finercut_tui.errors import FinercutError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="write the pruned model at a session step (removed modules physically absent)",
        description=(
            "Write the model pruned by the first K removals of SESSION to --out. Whole blocks only: a "
            "standard checkpoint with fewer layers (AutoModelForCausalLM.from_pretrained loads it). "
            "Single sublayers: weights without them + the removal list in config.json "
            "(finercut_tui.load_pruned loads it). Adds PRUNING.md. The model defaults to the session's."
        ),
    )
    p.add_argument("session", help="session YAML written by run / tui")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--step", type=int, help="export the model after the first K removals")
    which.add_argument(
        "--ratio",
        type=float,
        help="export the shortest prefix of removals that removes at least this fraction (0..1) of sublayers",
    )
    p.add_argument("--out", required=True, help="output folder (must be empty or absent)")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out (replaces an export)")
    add_model_args(p)
    p.set_defaults(func=run)


def resolve_step(session, step: int | None = None, ratio: float | None = None) -> int:
    """The number of removals to apply: `step` checked against the session, or the prefix for `ratio`."""
    from finercut_tui.domain.sublayers import expand

    n = len(session.steps)
    if n == 0:
        raise FinercutError("the session has no steps yet: no removals to apply")
    if step is not None:
        if not 1 <= step <= n:
            raise FinercutError(f"--step {step} is out of range: this session has steps 1..{n}")
        return step
    if ratio is None or not 0 < ratio < 1:
        raise FinercutError(f"--ratio {ratio} must be between 0 and 1 (exclusive), e.g. 0.25")
    total = 2 * session.num_blocks
    for k in range(1, n + 1):
        if len(expand(session.removed_at(k))) >= ratio * total:
            return k
    reached = len(expand(session.removed_at()))
    raise FinercutError(
        f"--ratio {ratio} is not reached: the session removes {reached} of {total} sublayers "
        f"({reached / total:.3f}); use a smaller --ratio or continue the search"
    )


def _spec(args: argparse.Namespace, session):
    from finercut_tui.model.loading import DTYPES, ModelSpec

    recorded = session.model
    if args.model or args.gguf_file:
        name, gguf = args.model or "", args.gguf_file
    else:
        name, gguf = recorded.name_or_path or "", recorded.gguf_file
    if not name and not gguf:
        raise FinercutError(
            "the session records no model: pass --model ORG/NAME or a folder (or --gguf-file)"
        )
    dtype = args.dtype
    if dtype == "auto" and recorded.dtype in DTYPES:
        dtype = recorded.dtype  # the precision the removals were chosen in
    return ModelSpec(
        name_or_path=name,
        gguf_file=gguf,
        dtype=dtype,
        device=args.device,
        revision=args.revision or recorded.revision,
    )


def run(args: argparse.Namespace) -> int:
    from finercut_tui.export.folder import export_pruned
    from finercut_tui.model.checkpoint import check_out_dir
    from finercut_tui.model.loading import load_model
    from finercut_tui.session import Session, check_matches

    session = Session.load(args.session)
    k = resolve_step(session, step=args.step, ratio=args.ratio)
    check_out_dir(args.out, args.force)  # fail before the (slow) model load
    progress = progress_printer()
    spec = _spec(args, session)
    source = Path(spec.name_or_path).expanduser()
    if spec.name_or_path and source.is_dir() and source.resolve() == Path(args.out).expanduser().resolve():
        raise FinercutError(f"--out {args.out} is the source model's folder: pick another folder")
    lm = load_model(spec, progress=progress)
    check_matches(session, architecture=lm.architecture, num_blocks=lm.pm.num_blocks, source=args.session)
    removed = session.removed_at(k)
    result = export_pruned(
        lm.pm,
        args.out,
        removed,
        source_model=spec.gguf_file or spec.name_or_path,
        session=session,
        session_path=args.session,
        step=k,
        force=args.force,
        progress=progress,
    )
    kept = result.params_after / result.params_before
    load = (
        "AutoModelForCausalLM.from_pretrained(DIR)"
        if result.format == "blocks"
        else "finercut_tui.load_pruned(DIR)"
    )
    print(
        f"wrote {result.out_dir}: step {k} of {len(session.steps)}, {len(result.removed)} of "
        f"{2 * result.num_blocks} sublayers removed ({result.format} format); parameters "
        f"{result.params_before:,} -> {result.params_after:,} ({100 * kept:.1f}%); KV cache "
        f"{result.kept_attention}/{result.num_blocks} layers; load with {load}"
    )
    return 0
