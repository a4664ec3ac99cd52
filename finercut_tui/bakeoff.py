"""The bake-off: several pruning methods on one model and one set of calibration tokens, side by side.

Every method searches the same loaded model on the same calibration tokens, to the largest target
(a fraction of the model's sublayers, a block counting as two); its session is written to the
bake-off folder after every step, as `run` writes one. The model at each target is then evaluated
with one request, against one unpruned baseline measured once and shared. A method whose removal
order is nested (greedy, or one-shot by rank) needs one session for all targets; one that picks a
single contiguous run (angular) needs one session per target.

A rerun of the same bake-off keeps finished sessions, resumes an interrupted one exactly, and
measures only what is missing, so it ends with the same table.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finercut_tui.curves import Series, curves_svg, plot
from finercut_tui.domain.evals import EvalRecord
from finercut_tui.domain.methods import Method, get_method, picks_one_run
from finercut_tui.domain.options import Option
from finercut_tui.domain.spec import CalibrationSpec, ScoringOptions, SearchSetup, SearchSpec
from finercut_tui.domain.sublayers import expand
from finercut_tui.errors import FinercutError
from finercut_tui.session import Session

DEFAULT_METHODS = ("finercut", "blockpruner", "sleb", "attn-drop", "joint-drop", "shortgpt", "angular")
DEFAULT_TARGETS = (0.125, 0.25, 0.375)


FORMATS = ("text", "markdown", "svg")
OPTIONS = [
    Option(
        ("--methods",),
        default=",".join(DEFAULT_METHODS),
        group="bake-off",
        help="the methods to compare, comma-separated",
    ),
    Option(
        ("--targets",),
        default=",".join(f"{t:g}" for t in DEFAULT_TARGETS),
        group="bake-off",
        help="fractions 0<F<1 of the model's sublayers (a block counts as two), comma-separated",
    ),
    Option(
        ("--out",),
        required=True,
        metavar="DIR",
        group="bake-off",
        help="folder of the sessions, one per method",
    ),
    Option(
        ("--format",),
        default="text",
        choices=FORMATS,
        group="bake-off",
        help="the report: text, markdown or svg",
    ),
    Option(
        ("--report",), metavar="FILE", group="bake-off", help="write the report to FILE (default: stdout)"
    ),
    Option(("--seed",), type=int, default=0, group="bake-off", help="random seed of every search"),
]


def parse_methods(text: str) -> tuple[str, ...]:
    """Method names, comma-separated, each known (one line naming the unknown one otherwise)."""
    names = tuple(n.strip() for n in str(text).split(",") if n.strip())
    if not names:
        raise FinercutError("--methods names no method: give e.g. finercut,sleb,shortgpt")
    for name in names:
        get_method(name)  # "unknown method 'x': choose one of ..."
    if len(set(names)) != len(names):
        raise FinercutError(f"--methods names a method twice: {text}")
    return names


def parse_targets(text: str) -> tuple[float, ...]:
    """Fractions 0<F<1 of the model's sublayers, comma-separated, ascending in the result."""
    out = []
    for part in (p.strip() for p in str(text).split(",") if p.strip()):
        try:
            value = float(part)
        except ValueError:
            raise FinercutError(
                f"bad --targets entry {part!r}: give fractions 0<F<1, e.g. 0.125,0.25"
            ) from None
        if not 0 < value < 1:
            raise FinercutError(f"--targets {part} is out of range: give fractions 0<F<1 of the sublayers")
        out.append(value)
    if not out:
        raise FinercutError("--targets names no target: give fractions 0<F<1, e.g. 0.125,0.25,0.375")
    return tuple(sorted(set(out)))


def units_for(method: Method, fraction: float, num_blocks: int) -> int:
    """How many of the method's units a target removes: int(F * 2L) sublayers, half as many blocks."""
    sublayers = int(fraction * 2 * num_blocks)
    count = sublayers // 2 if method.unit == "block" else sublayers
    available = len(method.universe(num_blocks))
    if count < 1:
        raise FinercutError(
            f"--targets {fraction} removes no {method.unit} of {num_blocks} blocks: give more"
        )
    return min(count, available)


@dataclass(frozen=True)
class Plan:
    """What a bake-off runs: every method at every target on one calibration set, one evaluation."""

    methods: tuple[str, ...]
    targets: tuple[float, ...]
    calibration: CalibrationSpec
    request: Any  # an EvalRequest (None: search only, no table of retained %)
    out: Path
    seed: int = 0
    scoring: ScoringOptions = ScoringOptions()

    def spec(self, method: str, target: int) -> SearchSpec:
        """The method's spec with its paper's settings (metric, block metric), this bake-off's seed;
        the calibration is the bake-off's own, the same tokens for every method."""
        return dataclasses.replace(SearchSetup.for_method(method).spec, target=str(target), seed=self.seed)

    def sessions(self, method: str, num_blocks: int) -> list[tuple[Path, tuple[float, ...], int]]:
        """(session path, the targets it serves, its removals) for a method."""
        info = get_method(method)
        counts = {t: units_for(info, t, num_blocks) for t in self.targets}
        if picks_one_run(info, self.spec(method, 1).block_metric):  # not nested: one session a target
            return [(self.out / f"{method}-at-{100 * t:g}pct.yaml", (t,), counts[t]) for t in self.targets]
        return [(self.out / f"{method}.yaml", self.targets, max(counts.values()))]


@dataclass
class Cell:
    """One method at one target: what it removed and what the evaluation kept."""

    removed: int  # sublayers (a block counts as two)
    units: int
    record: EvalRecord | None = None

    @property
    def retained(self) -> float | None:
        return None if self.record is None else self.record.retained_average


@dataclass
class Result:
    plan: Plan
    num_blocks: int
    cells: dict[tuple[str, float], Cell] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # search time per method
    baseline: EvalRecord | None = None
    sessions: dict[str, list[Path]] = field(default_factory=dict)

    def best(self, target: float) -> str | None:
        """The method that kept the most at `target` (None without evaluations)."""
        scored = [
            (c.retained, m) for (m, t), c in self.cells.items() if t == target and c.retained is not None
        ]
        return max(scored)[1] if scored else None


def _pct(fraction: float) -> str:
    return f"{100 * fraction:g}%"


def run_bakeoff(
    plan: Plan, loaded, model_spec, progress: Callable[[str], None] = print, on_event=None
) -> Result:
    """Run (or continue) every method of `plan` on the loaded model; returns the table's cells."""
    plan.out.mkdir(parents=True, exist_ok=True)
    num_blocks = loaded.pm.num_blocks
    result = Result(plan, num_blocks)
    shared: list[EvalRecord] = []  # the unpruned baseline, measured once for every session
    for method in plan.methods:
        for path, targets, units in plan.sessions(method, num_blocks):
            session = _search(plan, method, path, units, loaded, model_spec, progress, on_event)
            result.sessions.setdefault(method, []).append(path)
            result.seconds[method] = result.seconds.get(method, 0.0) + sum(
                s.seconds or 0.0 for s in session.steps
            )
            for target in targets:
                k = units_for(get_method(method), target, num_blocks)
                cell = Cell(removed=len(expand(session.removed_at(k))), units=k)
                if plan.request is not None:
                    cell.record, shared, session = _evaluate(
                        path, session, k, plan.request, loaded, shared, progress
                    )
                    result.baseline = shared[0] if shared else None
                result.cells[(method, target)] = cell
    return result


def _search(
    plan: Plan, method: str, path: Path, units: int, loaded, model_spec, progress, on_event
) -> Session:
    """The method's session at `path`, searched to `units` removals (resumed when it stopped short)."""
    from finercut_tui.search.job import prepare_job

    if path.is_file():
        done = Session.load(path)
        if done.finished and len(done.steps) >= units:
            progress(f"{method}: {path.name} is complete ({len(done.steps)} removals), kept")
            return done
    setup = SearchSetup(spec=plan.spec(method, units), calibration=plan.calibration, scoring=plan.scoring)
    resume = path.is_file()
    progress(
        f"{method}: {'resuming' if resume else 'searching'} to {units} {get_method(method).noun} ({path.name})"
    )
    job = prepare_job(setup, model_spec, path, resume=resume, loaded=loaded, progress=progress)
    for event in job.events():
        if on_event is not None:
            on_event(event)
    return Session.load(path)


def _evaluate(path: Path, session: Session, k: int, request, loaded, shared: list[EvalRecord], progress):
    """(the record of the model after the first k removals, [the baseline], the session now): the
    session's own record when it has one, else measured now against the shared baseline and appended."""
    from finercut_tui.eval.runner import run_eval
    from finercut_tui.search.job import append_records

    own_baseline = [e for e in session.evals if e.step == 0 and not e.failed]
    have = next((e for e in session.evals if e.step == k and not e.failed), None)
    if have is not None:
        return have, shared or own_baseline[-1:], session
    removed = session.removed_at(k)
    loaded.pm.set_removed(expand(removed))
    try:
        progress(f"evaluating {path.stem} after {k} removals: {request.describe()}")
        records = run_eval(loaded.pm, request, k, [*shared, *session.evals], progress=progress)
    finally:
        loaded.pm.restore_all()
    baseline = next((r for r in records if r.step == 0), None) or (shared[0] if shared else None)
    # every session carries the baseline its retained % is measured against
    carried = own_baseline or baseline is None or baseline in records
    new = records if carried else [baseline, *records]
    session = append_records(path, k, removed, doing="evaluating the bake-off", evals=new)
    return records[-1], [baseline] if baseline is not None else [], session


# -- the table and the curves ------------------------------------------------------------------------------
def table_text(result: Result) -> str:
    """Retained % per method at each target (removed sublayers in brackets), the best marked *."""
    plan = result.plan
    header = ["method", *(f"{_pct(t)} of {2 * result.num_blocks}" for t in plan.targets), "search s"]
    rows = [header]
    best = {t: result.best(t) for t in plan.targets}
    for method in plan.methods:
        row = [method]
        for t in plan.targets:
            cell = result.cells.get((method, t))
            if cell is None:
                row.append("-")
                continue
            value = "-" if cell.retained is None else f"{cell.retained:.1f}%"
            row.append(f"{value} ({cell.removed}){' *' if best[t] == method else ''}")
        row.append(f"{result.seconds.get(method, 0.0):.1f}")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def table_markdown(result: Result) -> str:
    plan = result.plan
    head = "| method | " + " | ".join(_pct(t) for t in plan.targets) + " | search s |"
    rule = "|---|" + "---:|" * (len(plan.targets) + 1)
    rows = [head, rule]
    best = {t: result.best(t) for t in plan.targets}
    for method in plan.methods:
        cells = []
        for t in plan.targets:
            cell = result.cells.get((method, t))
            text = "-" if cell is None or cell.retained is None else f"{cell.retained:.1f}% ({cell.removed})"
            cells.append(f"**{text}**" if best[t] == method else text)
        rows.append(f"| {method} | " + " | ".join(cells) + f" | {result.seconds.get(method, 0.0):.1f} |")
    return "\n".join(rows)


def retained_curves(result: Result) -> list[Series]:
    """Per method, retained % against sublayers removed (a block counting as two)."""
    out = []
    for method in result.plan.methods:
        points = sorted(
            (float(c.removed), float(c.retained))
            for (m, _), c in result.cells.items()
            if m == method and c.retained is not None and math.isfinite(c.retained)
        )
        if points:
            out.append(Series(method, ((0.0, 100.0), *points)))
    return out


def render(result: Result, fmt: str = "text") -> str:
    """The bake-off's report: the table, then the curve of retained % (text, markdown or SVG)."""
    title = f"retained % against sublayers removed ({2 * result.num_blocks} in all)"
    series = retained_curves(result)
    if fmt == "svg":
        if not series:
            raise FinercutError("no evaluations to draw: give --ppl or --tasks")
        return curves_svg([(title, series, False)], "bake-off")
    table = table_markdown(result) if fmt == "markdown" else table_text(result)
    baseline = result.baseline
    lines = [table]
    if baseline is not None:
        measured = ", ".join(f"{k} {v:.4g}" for k, v in baseline.results.items())
        best = "bold" if fmt == "markdown" else "*"
        lines += ["", f"unpruned baseline: {measured}; {best} = the most kept at that target"]
    if series and fmt == "text":
        lines += ["", plot(series, title, ylabel="retained %")]
    return "\n".join(lines).rstrip() + "\n"
