"""`compare`: several sessions of one model side by side, step by step.

For each number of removals k (up to the shortest session): how many removed sublayers each
session shares with the first (count and Jaccard index of the removed sets), the first step where
their orders part, the sublayers one removed and the other kept, and their evaluations at equal
removal counts. Whole-block removals count as both sublayers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from finercut_tui.domain.evals import EvalRecord, describe_eval
from finercut_tui.domain.sublayers import expand, sort_key
from finercut_tui.errors import FinercutError
from finercut_tui.session import Session


@dataclass(frozen=True)
class Overlap:
    k: int
    shared: int  # sublayers removed by both
    union: int

    @property
    def jaccard(self) -> float:
        return self.shared / self.union if self.union else 1.0


@dataclass(frozen=True)
class Pair:
    """The first session (A) against another one (B)."""

    other: int  # index of B in the comparison
    overlaps: tuple[Overlap, ...]  # k = 1 .. the shorter session's length
    first_difference: int | None  # the first step whose removal differs; None when one is a prefix
    only_a: tuple[str, ...]  # at the last common k: removed by A, kept by B
    only_b: tuple[str, ...]


@dataclass(frozen=True)
class Comparison:
    labels: tuple[str, ...]
    sessions: tuple[Session, ...]
    pairs: tuple[Pair, ...]

    def evals_at(self) -> list[tuple[int, list[EvalRecord | None]]]:
        """Evaluations at each removal count some session measured: one (or None) per session."""
        steps = sorted({e.step for s in self.sessions for e in s.evals})
        rows = []
        for k in steps:
            row = [next((e for e in reversed(s.evals) if e.step == k), None) for s in self.sessions]
            rows.append((k, row))
        return rows

    def repairs_at(self) -> list[tuple[int, list[EvalRecord | None]]]:
        """The repaired models' evaluations (`repairs:` entries' `after`) at each removal count some
        session repaired: one (or None) per session, the latest repair at that step."""
        steps = sorted({r.step for s in self.sessions for r in s.repairs if r.after is not None})
        rows = []
        for k in steps:
            row = [
                next((r.after for r in reversed(s.repairs) if r.step == k and r.after is not None), None)
                for s in self.sessions
            ]
            rows.append((k, row))
        return rows


def removed_set(session: Session, k: int) -> set[str]:
    return set(expand(session.removed_at(k)))


def compare(sessions: list[Session], labels: list[str]) -> Comparison:
    if len(sessions) < 2:
        raise FinercutError(
            "compare needs two or more sessions: finercut-tui compare A.yaml B.yaml [C.yaml ...]"
        )
    first = sessions[0]
    for label, s in zip(labels[1:], sessions[1:], strict=True):
        if (s.num_blocks, s.model.architecture) != (first.num_blocks, first.model.architecture):
            raise FinercutError(
                f"{label} is a session of another model ({s.model.architecture}, {s.num_blocks} blocks vs "
                f"{first.model.architecture}, {first.num_blocks}): compare sessions of one model"
            )
    pairs = []
    for i, other in enumerate(sessions[1:], 1):
        common = min(len(first.steps), len(other.steps))
        overlaps = []
        for k in range(1, common + 1):
            a, b = removed_set(first, k), removed_set(other, k)
            overlaps.append(Overlap(k, len(a & b), len(a | b)))
        order_a, order_b = first.removed_at(common), other.removed_at(common)
        first_difference = next(
            (k for k, (x, y) in enumerate(zip(order_a, order_b, strict=True), 1) if x != y), None
        )
        a, b = removed_set(first, common), removed_set(other, common)
        pairs.append(
            Pair(
                i,
                tuple(overlaps),
                first_difference,
                tuple(sorted(a - b, key=sort_key)),
                tuple(sorted(b - a, key=sort_key)),
            )
        )
    return Comparison(tuple(labels), tuple(sessions), tuple(pairs))


def _describe(session: Session) -> str:
    spec = session.spec
    mode = "" if spec.info.always_iterative else (", iterative" if spec.iterative else ", one-shot")
    return f"{spec.method} ({spec.score_label}{mode}), {len(session.steps)} steps"


def _letters(n: int) -> list[str]:
    return [chr(ord("A") + i) for i in range(n)]


def _overlap_columns(c: Comparison) -> tuple[list[str], list[list[str]]]:
    letters = _letters(len(c.sessions))
    head = ["k"] + [f"A∩{letters[p.other]}" for p in c.pairs] + [f"J(A,{letters[p.other]})" for p in c.pairs]
    longest = max(len(p.overlaps) for p in c.pairs)
    rows = []
    for k in range(1, longest + 1):
        cells = [str(k)]
        found = [p.overlaps[k - 1] if k <= len(p.overlaps) else None for p in c.pairs]
        cells += ["-" if o is None else str(o.shared) for o in found]
        cells += ["-" if o is None else f"{o.jaccard:.2f}" for o in found]
        rows.append(cells)
    return head, rows


def render_text(c: Comparison, curves: bool = True) -> str:
    letters = _letters(len(c.sessions))
    first = c.sessions[0]
    out = [f"model    {first.model.name} ({first.model.architecture}, {first.num_blocks} blocks)"]
    out += [
        f"{letter}        {label}: {_describe(s)}"
        for letter, label, s in zip(letters, c.labels, c.sessions, strict=True)
    ]
    out.append("")
    for p in c.pairs:
        b = letters[p.other]
        common = len(p.overlaps)
        if p.first_difference is None:
            out.append(f"A vs {b}: the same order for the first {common} removals")
        else:
            k = p.first_difference
            out.append(
                f"A vs {b}: orders part at step {k} (A removed {c.sessions[0].steps[k - 1].removed}, "
                f"{b} removed {c.sessions[p.other].steps[k - 1].removed})"
            )
        out.append(f"  after {common} removals: removed by A only: {', '.join(p.only_a) or 'none'}")
        out.append(
            f"  {' ' * len(str(common))}                removed by {b} only: {', '.join(p.only_b) or 'none'}"
        )
    out.append("")
    head, rows = _overlap_columns(c)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    out.append("  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True)))
    out += ["  ".join(x.rjust(w) for x, w in zip(r, widths, strict=True)) for r in rows]
    evals = c.evals_at()
    if evals:
        out.append("")
        out.append("evals at equal removals")
        for k, row in evals:
            for letter, record in zip(letters, row, strict=True):
                text = describe_eval(record) if record is not None else "-"
                out.append(f"  {k:>4} {letter}  {text}")
    repairs = c.repairs_at()
    if repairs:
        out.append("")
        out.append("repaired (least squares) at equal removals")
        for k, row in repairs:
            for letter, record in zip(letters, row, strict=True):
                text = describe_eval(record) if record is not None else "-"
                out.append(f"  {k:>4} {letter}  {text}")
    if curves:
        from finercut_tui.curves import session_curves

        for chart in session_curves(list(zip(letters, c.sessions, strict=True))):
            out += ["", chart.rstrip("\n")]
    return "\n".join(out) + "\n"


def render_markdown(c: Comparison) -> str:
    letters = _letters(len(c.sessions))
    out = ["## Sessions compared", ""]
    out += [
        f"- **{letter}**: `{label}`: {_describe(s)}"
        for letter, label, s in zip(letters, c.labels, c.sessions, strict=True)
    ]
    out.append("")
    for p in c.pairs:
        b = letters[p.other]
        part = (
            "never (one order is a prefix of the other)"
            if p.first_difference is None
            else f"step {p.first_difference}"
        )
        out.append(
            f"- A vs {b}: orders part at {part}; after {len(p.overlaps)} removals A alone removed "
            f"{', '.join(f'`{s}`' for s in p.only_a) or 'nothing'}, {b} alone "
            f"{', '.join(f'`{s}`' for s in p.only_b) or 'nothing'}."
        )
    head, rows = _overlap_columns(c)
    out += ["", "| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    evals = c.evals_at()
    if evals:
        out += ["", "| removals | " + " | ".join(letters) + " |", "|---:|" + "---|" * len(letters)]
        for k, row in evals:
            cells = [describe_eval(r) if r is not None else "-" for r in row]
            out.append(f"| {k} | " + " | ".join(cells) + " |")
    repairs = c.repairs_at()
    if repairs:
        out += ["", "| removals, repaired | " + " | ".join(letters) + " |", "|---:|" + "---|" * len(letters)]
        for k, row in repairs:
            cells = [describe_eval(r) if r is not None else "-" for r in row]
            out.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def render_svg(c: Comparison) -> str:
    """The overlap (Jaccard) curves and every session's curves, as one SVG."""
    from finercut_tui.curves import Series, curves_svg, session_panels

    letters = _letters(len(c.sessions))
    jaccard = [
        Series(f"J(A,{letters[p.other]})", tuple((o.k, o.jaccard) for o in p.overlaps)) for p in c.pairs
    ]
    panels = [("overlap of the removed sets (Jaccard) after k removals", jaccard, False)]
    panels += session_panels(list(zip(letters, c.sessions, strict=True)))
    names = ", ".join(
        f"{letter}: {Path(label).name}" for letter, label in zip(letters, c.labels, strict=True)
    )
    return curves_svg(panels, title=f"finercut-tui compare {names}")
