"""`finercut-tui heal`: a short LoRA fine-tune of the model pruned to a session step, merged and exported.

The command turns its options into a `HealPlan` and runs `commands/heal_recipe.HealRecipe` on it: every
input is checked before the (slow) model load; the pruned model is evaluated (when --ppl / --tasks
are given), LoRA is trained on the linear layers of the kept sublayers, the adapter is saved alone,
merged into the weights, the healed model is evaluated with the same request, exported exactly as
`export` does (with a Healing section in PRUNING.md), and the session gets a `heals:` entry.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from finercut_tui.commands.common import (
    add_eval_args,
    add_model_args,
    eval_request,
    model_spec,
    progress_printer,
)
from finercut_tui.commands.options import QUIET, SESSION_FILE, add_options, add_step_options
from finercut_tui.commands.repair import RIDGE
from finercut_tui.domain.options import Option, options_of, values_from
from finercut_tui.domain.steps import StepRule, resolve_step

STEPS = StepRule(verb="heal the model")
OPTIONS = [
    Option(("--out",), required=True, help="output folder: merged model, adapter/, PRUNING.md"),
    Option(("--resume",), action="store_true", help="continue the heal checkpointed in --out"),
    Option(("--force",), action="store_true", help="replace what --out holds (a heal or an export)"),
    Option(
        ("--repair",),
        action="store_true",
        help="repair first (least-squares patches on the session's calibration tokens, as `repair`), "
        "then heal the repaired model",
    ),
    QUIET,
]


def register(subparsers) -> None:
    from finercut_tui.heal.config import DataOptions, HealConfig

    p = subparsers.add_parser(
        "heal",
        help="LoRA fine-tune the model pruned to a session step, merge it and export it",
        description=(
            "Heal the model pruned by the first K removals of SESSION: LoRA (peft) on the linear layers of "
            "the kept sublayers, trained on instruction data (Alpaca prompt, loss on the response only) or "
            "plain text, merged into the kept weights and written to --out in `export`'s format, with the "
            "adapter alone in --out/adapter. With --ppl/--tasks the model is evaluated before and after; "
            "the session records the heal."
        ),
    )
    add_options(p, [SESSION_FILE])
    add_step_options(p, STEPS)
    add_options(p, [OPTIONS[0], *options_of(DataOptions), *options_of(HealConfig), *OPTIONS[1:]])
    add_model_args(p)
    add_options(p, [RIDGE])
    add_eval_args(p, "--eval-batch-size", group="evaluation before and after healing (as in `eval`)")
    p.set_defaults(func=run)


def plan_from_args(args: argparse.Namespace):
    """The HealPlan the options describe (the step resolved against the session)."""
    from finercut_tui.commands.heal_recipe import HealPlan
    from finercut_tui.heal.config import DataOptions, HealConfig
    from finercut_tui.session import Session

    session = Session.load(args.session)
    k = resolve_step(session, args.step, args.ratio, STEPS)
    return HealPlan(
        session_path=args.session,
        step=k,
        out=args.out,
        model=model_spec(args, session),
        training=HealConfig(**values_from(args, options_of(HealConfig))),
        data=DataOptions(**values_from(args, options_of(DataOptions))),
        request=eval_request(args, args.seed, session.calibration) if (args.ppl or args.tasks) else None,
        resume=args.resume,
        force=args.force,
        repair=args.repair,
        ridge=args.ridge,
        quiet=args.quiet,
        command=shlex.join(["finercut-tui", *sys.argv[1:]]),  # as `run` records its command
    )


def run(args: argparse.Namespace) -> int:
    from finercut_tui.commands.heal_recipe import HealRecipe

    heal, result = HealRecipe(plan_from_args(args), progress=progress_printer()).run()
    print(summary(heal, result))
    return 0


def summary(heal, result) -> str:
    from finercut_tui.domain.evals import describe_eval

    loss = f"loss {heal.first_loss:.4f} -> {heal.final_loss:.4f}" if heal.first_loss is not None else ""
    lines = [
        f"healed step {heal.step}: {heal.steps} steps, {loss}, {heal.seconds:.1f}s; wrote {result.out_dir} "
        f"({result.format} format) and its adapter in {heal.adapter}"
    ]
    if heal.before is not None and heal.after is not None:
        lines.append(f"before: {describe_eval(heal.before)}")
        lines.append(f"after:  {describe_eval(heal.after)}")
    return "\n".join(lines)
