"""Which step of a session a command works on: `--step K`, `--ratio R`, or the last step.

One rule for every command; what differs between commands is passed in as a `StepRule`:

- `first`: the lowest step allowed, 0 (the unpruned model: eval, show, replay) or 1 (a model that is
  pruned: export, heal, speed, repair);
- `ratio`: whether `--ratio R` (the shortest prefix removing a fraction R of the sublayers) is offered;
- `required`: whether one of `--step` / `--ratio` must be given (else the last step is taken).

`--step` and `--ratio` are declared once, here (`step_options`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from finercut_tui.domain.options import Option
from finercut_tui.domain.sublayers import expand
from finercut_tui.errors import FinercutError


@dataclass(frozen=True)
class StepRule:
    first: int = 1  # 0: the unpruned model is a step too
    ratio: bool = True
    required: bool = True  # False: no --step means the session's last step
    verb: str = "use the model"  # for --help: "export the model", "show the map", ...


PRUNED = StepRule()  # export / heal / repair: a pruned model, --step K or --ratio R
ANY_STEP = StepRule(first=0, ratio=False, required=False)  # show / replay / eval: 0..n, default n


def step_options(rule: StepRule, group: str | None = None) -> list[Option]:
    """`--step K` (and `--ratio R` when the rule offers it), as a mutually exclusive pair."""
    default = "" if rule.required else "; default: the last step"
    zero = "; 0 = the unpruned model" if rule.first == 0 else ""
    out = [
        Option(
            ("--step",),
            type=int,
            metavar="K",
            help=f"{rule.verb} after the session's first K removals{zero}{default}",
            group=group,
            exclusive="step",
            required=rule.required,
        )
    ]
    if rule.ratio:
        out.append(
            Option(
                ("--ratio",),
                type=float,
                metavar="R",
                help=f"{rule.verb} after the shortest prefix of removals that removes at least this "
                "fraction (0..1) of the sublayers",
                group=group,
                exclusive="step",
                required=rule.required,
            )
        )
    return out


def resolve_step(
    session: Any, step: int | None = None, ratio: float | None = None, rule: StepRule = PRUNED
) -> int:
    """The number of the session's removals to apply, by `rule` (see the module docstring).

    `session` is anything with `steps`, `removed_at(k)` and `num_blocks` (a `Session`)."""
    n = len(session.steps)
    if step is None and ratio is None:
        if rule.required:
            raise FinercutError(
                "give --step K" + (" or --ratio R" if rule.ratio else "") + ": which step to use"
            )
        step = n
    if n == 0 and rule.first > 0:
        raise FinercutError("the session has no steps yet: no removals to apply")
    if step is not None:
        if not rule.first <= step <= n:
            raise FinercutError(f"--step {step} is out of range: {_range(rule, n, step)}")
        return step
    return _ratio_step(session, ratio, n)


def _range(rule: StepRule, n: int, step: int) -> str:
    if rule.first == 0:
        return f"this session has {n} steps, so use 0..{n} (0 = unpruned)"
    return f"this session has steps 1..{n}" + (" (step 0 removes nothing)" if step == 0 else "")


def _ratio_step(session: Any, ratio: float | None, n: int) -> int:
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
