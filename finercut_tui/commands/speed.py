"""`finercut-tui speed`: prefill / decode throughput, peak memory and KV cache, original vs pruned."""

from __future__ import annotations

import argparse
import gc

from finercut_tui.commands.common import add_model_args, model_spec, progress_printer
from finercut_tui.commands.options import add_step_options
from finercut_tui.domain.steps import StepRule
from finercut_tui.errors import FinercutError

STEPS = StepRule(required=False, verb="with --session: measure the model")  # export's, default the last


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "speed",
        help="measure prefill/decode tokens/s, peak memory and KV cache: original vs pruned",
        description=(
            "Measure the original model, then the pruned one (the session's first K removals applied to "
            "the same loaded model, or an exported --pruned folder), on the same seeded random prompt, "
            "and print both with pruned/original ratios."
        ),
    )
    add_model_args(p)
    pruned = p.add_mutually_exclusive_group(required=True)
    pruned.add_argument("--session", help="session YAML: prune the loaded model by its first --step removals")
    pruned.add_argument("--pruned", metavar="DIR", help="a folder written by `finercut-tui export`")
    add_step_options(p, STEPS)
    p.add_argument("--context", type=int, default=2048, help="prompt length in tokens (default 2048)")
    p.add_argument("--new-tokens", type=int, default=128, help="tokens to generate greedily (default 128)")
    p.add_argument("--batch", type=int, default=1, help="prompts per batch (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random prompt tokens")
    p.set_defaults(func=run)


def _check_sizes(args: argparse.Namespace, config) -> None:
    for name in ("context", "new_tokens", "batch"):
        if getattr(args, name) < 1:
            raise FinercutError(f"--{name.replace('_', '-')} must be a positive integer")
    text = config.get_text_config(decoder=True)
    limit = getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", None)
    if limit and args.context + args.new_tokens > limit:
        raise FinercutError(
            f"--context {args.context} + --new-tokens {args.new_tokens} exceeds the model's "
            f"{limit} positions: use a shorter --context"
        )


def _session_removals(args: argparse.Namespace, session, pm, architecture: str) -> tuple[list[str], str]:
    from finercut_tui.domain.steps import resolve_step
    from finercut_tui.domain.sublayers import expand
    from finercut_tui.session import check_matches

    check_matches(session, architecture=architecture, num_blocks=pm.num_blocks, source=args.session)
    k = resolve_step(session, args.step, args.ratio, STEPS)
    return expand(session.removed_at(k)), f"{args.session} step {k}"


def _check_args(args: argparse.Namespace) -> None:
    if (args.step is not None or args.ratio is not None) and not args.session:
        flag = "--step" if args.step is not None else "--ratio"
        raise FinercutError(f"{flag} goes with --session (an exported --pruned folder is already pruned)")
    if args.new_tokens < 2:
        raise FinercutError("--new-tokens must be at least 2 (decode speed needs a token after the first)")


def run(args: argparse.Namespace) -> int:
    import torch

    from finercut_tui.model.load_pruned import export_info, load_prunable
    from finercut_tui.model.loading import load_model
    from finercut_tui.model.speed import measure, random_input_ids, speed_table
    from finercut_tui.session import Session

    _check_args(args)
    info = export_info(args.pruned) if args.pruned else {}  # a bad folder fails before any loading
    progress = progress_printer()
    session = Session.load(args.session) if args.session else None
    lm = load_model(model_spec(args, session), progress=progress)
    _check_sizes(args, lm.model.config)
    pm, dtype = lm.pm, lm.dtype
    if args.session:
        removed, what = _session_removals(args, session, pm, lm.architecture)
    else:
        source_blocks = info.get("source_num_blocks")
        if source_blocks is not None and int(source_blocks) != pm.num_blocks:
            raise FinercutError(
                f"{args.pruned} was exported from a model with {source_blocks} blocks, not from this "
                f"{pm.num_blocks}-block model: pass the --model it was exported from"
            )
        what = str(args.pruned)
    vocab = int(lm.model.config.get_text_config(decoder=True).vocab_size)
    ids = random_input_ids(vocab, args.batch, args.context, seed=args.seed, device=pm.input_device)
    progress(f"measuring the original model ({args.batch} x {args.context} tokens, {args.new_tokens} new)")
    original = measure(lm.model, ids, args.new_tokens)
    if args.session:
        pm.set_removed(removed)
        progress(f"measuring the pruned model ({len(removed)} sublayers removed in memory)")
        pruned = measure(lm.model, ids, args.new_tokens)
        note = "removed weights stay resident (unused) in this mode; 'weights' counts the kept ones"
    else:
        device = str(pm.input_device)
        del lm, pm
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        progress(f"loading {args.pruned}")
        loaded = load_prunable(args.pruned, device=device, dtype=dtype)  # same precision as the original
        if int(loaded.config.vocab_size) != vocab:
            raise FinercutError(
                f"{args.pruned} has another vocabulary ({loaded.config.vocab_size} vs {vocab})"
            )
        progress("measuring the pruned model")
        pruned = measure(loaded.model, ids.to(loaded.input_device), args.new_tokens)
        note = "pruned model loaded from the export"
    device_name = str(ids.device)
    print(
        f"speed  model {args.gguf_file or args.model or session.model.name}  vs  {what}\n"
        f"       device {device_name}, {dtype}, batch {args.batch}, context {args.context}, "
        f"{args.new_tokens} new tokens (greedy), seed {args.seed}; {note}"
    )
    print(speed_table(original, pruned))
    return 0
