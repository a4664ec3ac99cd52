"""`show`'s reports of a session at step K: the pruned-layer map and a summary as text, markdown or SVG.

They read the same `LayerMap` the app's grid draws (layer_map.py), so a figure and the screen agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.sax.saxutils import escape

from finercut_tui.domain.evals import EvalRecord, describe_eval, retained_text
from finercut_tui.domain.records import HealRecord
from finercut_tui.domain.repairs import RepairRecord
from finercut_tui.domain.sublayers import KINDS, expand, split_id
from finercut_tui.domain.text import fmt_score
from finercut_tui.layer_map import KIND_LABEL, Cell, CellState, LayerMap, Removal
from finercut_tui.session import Session


def quarters(num_blocks: int) -> list[range]:
    """Blocks split into four depth quarters (the first ones take the remainder)."""
    size, extra = divmod(num_blocks, 4)
    out, start = [], 0
    for i in range(4):
        stop = start + size + (1 if i < extra else 0)
        out.append(range(start, stop))
        start = stop
    return out


@dataclass(frozen=True)
class Summary:
    step: int
    total_steps: int
    removed: list[Removal]
    sublayers: int  # removed sublayers (blocks count twice)
    per_kind: dict[str, int]
    per_quarter: list[tuple[range, dict[str, int]]]
    manual: int
    evals: list[EvalRecord]


def summarize(session: Session, step: int | None = None) -> Summary:
    k = len(session.steps) if step is None else max(0, min(int(step), len(session.steps)))
    removals = [Removal(i, s.removed, s.by, s.score) for i, s in enumerate(session.steps[:k], 1)]
    parts = expand([r.unit for r in removals])
    per_kind = {kind: sum(1 for s in parts if split_id(s)[1] == kind) for kind in KINDS}
    per_quarter = []
    for q in quarters(session.num_blocks):
        counts = {
            kind: sum(1 for s in parts if split_id(s)[1] == kind and split_id(s)[0] in q) for kind in KINDS
        }
        per_quarter.append((q, counts))
    return Summary(
        step=k,
        total_steps=len(session.steps),
        removed=removals,
        sublayers=len(parts),
        per_kind=per_kind,
        per_quarter=per_quarter,
        manual=sum(1 for r in removals if r.by == "manual"),
        evals=session.evals_until(k),
    )


def _header_lines(session: Session, k: int, source: str | None) -> list[tuple[str, str]]:
    model, record, spec = session.model, session.method, session.spec
    model_bits = ", ".join(
        str(x) for x in (model.architecture, f"{session.num_blocks} blocks", model.dtype) if x
    )
    method_bits = [spec.method, f"metric {spec.score_label}"]
    if record.target is not None:
        given = f" ({spec.target})" if spec.target != str(record.target) else ""
        method_bits.append(f"target {record.target} {spec.info.noun}{given}")
    if spec.held_blocks(session.num_blocks, 0):  # front exclusion in force at the start
        rule = " (halved rule)" if spec.front_rule == "halved" else ""
        method_bits.append(f"exclude-front {spec.exclude_front}{rule}")
    if not spec.info.always_iterative:
        method_bits.append("iterative" if spec.iterative else "one-shot")
    state = "finished" if session.finished else "unfinished"
    rows = []
    if source:
        rows.append(("session", source))
    rows += [
        ("model", f"{model.name} ({model_bits})"),
        ("method", " · ".join(method_bits)),
        ("steps", f"{k} of {len(session.steps)} shown ({state})"),
        ("pinned", ", ".join(session.pinned.canonical()) or "none"),
    ]
    return rows


def _cell_word(cell: Cell) -> str:
    if cell.state is CellState.REMOVED:
        return f"×{cell.step}" + ("m" if cell.by == "manual" else "")
    if cell.state is CellState.PINNED:
        return "◆"
    return "·"


def render_text(session: Session, step: int | None = None, source: str | None = None) -> str:
    """The map (one row per block) and a summary, as plain text."""
    summary = summarize(session, step)
    lm = LayerMap.from_session(session, summary.step)
    out: list[str] = []
    rows = _header_lines(session, summary.step, source)
    out += [f"{key:<9}{value}" for key, value in rows]
    out.append("")
    width = max(5, len(str(session.num_blocks - 1)) + 1)
    out.append(f"{'block':>{width}}  {'attn':<6}ffn")
    for b in range(session.num_blocks):
        words = [_cell_word(lm.cell(b, kind)) for kind in KINDS]
        out.append(f"{b:>{width}}  {words[0]:<6}{words[1]:<6}".rstrip())
    out.append("legend: ×k removed at step k (m: by hand), ◆ pinned, · kept")
    out.append("")
    total = 2 * session.num_blocks
    pct = 100.0 * summary.sublayers / total if total else 0.0
    out.append(
        f"removed  {summary.sublayers} of {total} sublayers ({pct:.1f}%): "
        f"attn {summary.per_kind['attn']}, ffn {summary.per_kind['mlp']}; by hand {summary.manual}"
    )
    out.append("by depth blocks     attn  ffn")
    for q, counts in summary.per_quarter:
        span = f"{q.start}-{q.stop - 1}" if len(q) else "-"
        out.append(f"         {span:<10} {counts['attn']:<5} {counts['mlp']}")
    if summary.removed:
        out.append("order    step  removed      by      score")
        for r in summary.removed:
            out.append(f"         {r.step:<5} {r.unit:<12} {r.by:<7} {fmt_score(r.score)}".rstrip())
    else:
        out.append("order    nothing removed")
    if summary.evals:
        out.append("evals    step  retained  results")
        for e in summary.evals:
            out.append(f"         {e.step!s:<5} {retained_text(e):<9} {describe_eval(e)}")
    else:
        out.append("evals    none")
    out += _heal_lines(session, summary.step)
    out += _repair_lines(session, summary.step)
    from finercut_tui.curves import session_curves

    for chart in session_curves([("", _up_to(session, summary.step))]):
        out += ["", chart.rstrip("\n")]
    return "\n".join(out) + "\n"


def _heals_until(session: Session, k: int) -> list[HealRecord]:
    return [h for h in session.heals if h.step <= k]


def _loss_text(heal: HealRecord) -> str:
    if heal.first_loss is None or heal.final_loss is None:
        return "-"
    return f"{heal.first_loss:.3f} -> {heal.final_loss:.3f}"


def _before_after(heal: HealRecord | RepairRecord, part) -> str:
    before = part(heal.before) if heal.before is not None else "-"
    after = part(heal.after) if heal.after is not None else "-"
    return f"{before} -> {after}"


def _heal_lines(session: Session, k: int) -> list[str]:
    """Healed results beside the unhealed ones: one line per `heal` at a step <= k."""
    heals = _heals_until(session, k)
    if not heals:
        return []
    out = ["heals    step  lora  steps  loss             retained (before -> after)  results"]
    for h in heals:
        rank = f"r{h.lora.get('rank', '?')}"
        evaluated = h.before is not None or h.after is not None
        retained = _before_after(h, retained_text) if evaluated else "-"
        results = _before_after(h, describe_eval) if evaluated else "not evaluated"
        out.append(
            f"         {h.step!s:<5} {rank:<5} {h.steps!s:<6} {_loss_text(h):<16} {retained:<27} {results}"
        )
    return out


def _repairs_until(session: Session, k: int) -> list[RepairRecord]:
    return [r for r in session.repairs if r.step <= k]


def _error_text(repair: RepairRecord) -> str:
    """The patches' mean stream error (of the dense norm) before -> after, e.g. `0.412 -> 0.197`."""
    patched = [p for p in repair.patched if p.error_before is not None and p.error_after is not None]
    if not patched:
        return "-"
    before = sum(p.error_before for p in patched) / len(patched)
    after = sum(p.error_after for p in patched) / len(patched)
    return f"{before:.3f} -> {after:.3f}"


def _repair_lines(session: Session, k: int) -> list[str]:
    """Repaired results beside the unrepaired ones: one line per `repair` at a step <= k."""
    repairs = _repairs_until(session, k)
    if not repairs:
        return []
    out = ["repairs  step  ridge    patches  stream error     retained (before -> after)  results"]
    for r in repairs:
        ridge = "-" if r.ridge is None else f"{r.ridge:g}"
        evaluated = r.before is not None or r.after is not None
        retained = _before_after(r, retained_text) if evaluated else "-"
        results = _before_after(r, describe_eval) if evaluated else "not evaluated"
        out.append(
            f"         {r.step!s:<5} {ridge:<8} {len(r.patched)!s:<8} {_error_text(r):<16} {retained:<27} {results}"
        )
    return out


def _up_to(session: Session, k: int) -> Session:
    """The session as it stood after k removals (for its curves)."""
    return session.continued_from(k, "show") if k < len(session.steps) else session


def render_curves_svg(session: Session, step: int | None = None, title: str | None = None) -> str:
    """Evaluation and score curves up to `step`, as SVG."""
    from finercut_tui.curves import curves_svg, session_panels

    k = len(session.steps) if step is None else step
    panels = session_panels([("", _up_to(session, k))])
    return curves_svg(panels, title or f"{session.model.name}: {session.spec.method}, curves to step {k}")


def render_markdown(session: Session, step: int | None = None, source: str | None = None) -> str:
    summary = summarize(session, step)
    lm = LayerMap.from_session(session, summary.step)
    out = ["## Pruned-layer map", ""]
    out += [f"- **{key}**: {value}" for key, value in _header_lines(session, summary.step, source)]
    out += ["", "| block | attn | ffn |", "|---:|:---:|:---:|"]
    for b in range(session.num_blocks):
        words = [_cell_word(lm.cell(b, kind)) for kind in KINDS]
        out.append(f"| {b} | {words[0]} | {words[1]} |")
    out += ["", "×k: removed at step k (m: by hand); ◆: pinned; ·: kept.", ""]
    total = 2 * session.num_blocks
    pct = 100.0 * summary.sublayers / total if total else 0.0
    out.append(
        f"Removed **{summary.sublayers} of {total}** sublayers ({pct:.1f}%): attention "
        f"{summary.per_kind['attn']}, FFN {summary.per_kind['mlp']}; by hand {summary.manual}."
    )
    out += ["", "| depth quarter | blocks | attn | ffn |", "|---|---|---:|---:|"]
    for i, (q, counts) in enumerate(summary.per_quarter, 1):
        span = f"{q.start}-{q.stop - 1}" if len(q) else "-"
        out.append(f"| Q{i} | {span} | {counts['attn']} | {counts['mlp']} |")
    if summary.removed:
        out += ["", "| step | removed | by | score |", "|---:|---|---|---:|"]
        out += [f"| {r.step} | `{r.unit}` | {r.by} | {fmt_score(r.score)} |" for r in summary.removed]
    if summary.evals:
        out += ["", "| step | retained | results |", "|---:|---:|---|"]
        out += [f"| {e.step} | {retained_text(e)} | {describe_eval(e)} |" for e in summary.evals]
    heals = _heals_until(session, summary.step)
    if heals:
        out += [
            "",
            "| heal at step | LoRA | steps | loss | retained before -> after | results before | results after |",
            "|---:|---|---:|---|---|---|---|",
        ]
        for h in heals:
            before = describe_eval(h.before) if h.before is not None else "-"
            after = describe_eval(h.after) if h.after is not None else "-"
            retained = _before_after(h, retained_text) if h.before or h.after else "-"
            out.append(
                f"| {h.step} | rank {h.lora.get('rank', '?')} | {h.steps} | {_loss_text(h)} | {retained} "
                f"| {before} | {after} |"
            )
    repairs = _repairs_until(session, summary.step)
    if repairs:
        out += [
            "",
            "| repair at step | ridge | patches | stream error | retained before -> after | results before | results after |",
            "|---:|---:|---:|---|---|---|---|",
        ]
        for r in repairs:
            before = describe_eval(r.before) if r.before is not None else "-"
            after = describe_eval(r.after) if r.after is not None else "-"
            retained = _before_after(r, retained_text) if r.before or r.after else "-"
            ridge = "-" if r.ridge is None else f"{r.ridge:g}"
            out.append(
                f"| {r.step} | {ridge} | {len(r.patched)} | {_error_text(r)} | {retained} | {before} | {after} |"
            )
    return "\n".join(out) + "\n"


SVG_COLOURS = {
    "kept": "#e8eaed",
    "removed": "#b3261e",
    "manual": "#e8710a",
    "pinned": "#1a73e8",
    "text": "#202124",
    "muted": "#5f6368",
}


def render_svg(session: Session, step: int | None = None, title: str | None = None) -> str:
    """The map as a two-row strip (attention over FFN, blocks left to right), standalone SVG."""
    summary = summarize(session, step)
    lm = LayerMap.from_session(session, summary.step)
    n = session.num_blocks
    cell = max(8, min(24, 960 // max(1, n)))
    gap = 2 if cell >= 12 else 1
    left, top = 48, 44
    grid_w = n * (cell + gap) - gap
    legend = (
        (SVG_COLOURS["removed"], "removed (number: step)", False),
        (SVG_COLOURS["manual"], "removed by hand", False),
        (SVG_COLOURS["kept"], "kept", False),
        (SVG_COLOURS["kept"], "pinned", True),
    )
    legend_w = sum(14 + 6 * len(text) + 18 for _, text, _ in legend)
    width = left + max(grid_w, legend_w) + 16
    height = top + 2 * (cell + gap) + 64
    c = SVG_COLOURS
    heading = title or f"{session.model.name}: {session.spec.method}, {summary.step} removals"
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif">',
        f"<title>{escape(heading)}</title>",
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{left}" y="20" font-size="13" fill="{c["text"]}">{escape(heading)}</text>',
    ]
    for row, kind in enumerate(KINDS):
        y = top + row * (cell + gap)
        out.append(
            f'<text x="{left - 6}" y="{y + cell * 0.72:.1f}" font-size="11" text-anchor="end" '
            f'fill="{c["text"]}">{KIND_LABEL[kind]}</text>'
        )
        for b in range(n):
            x = left + b * (cell + gap)
            state = lm.cell(b, kind)
            fill, stroke = c["kept"], "none"
            if state.state is CellState.REMOVED:
                fill = c["manual"] if state.by == "manual" else c["removed"]
            elif state.state is CellState.PINNED:
                stroke = c["pinned"]
            label = f"{state.sid}: " + (
                f"removed at step {state.step} ({state.by})"
                if state.state is CellState.REMOVED
                else "pinned"
                if state.state is CellState.PINNED
                else "kept"
            )
            out.append(
                f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" rx="2" fill="{fill}" '
                f'stroke="{stroke}" stroke-width="2"><title>{escape(label)}</title></rect>'
            )
            if state.state is CellState.REMOVED and cell >= 14 and state.step is not None:
                size = cell * (0.5 if state.step < 100 else 0.4)
                out.append(
                    f'<text x="{x + cell / 2:.1f}" y="{y + cell / 2 + size * 0.36:.1f}" font-size="{size:.1f}" '
                    f'text-anchor="middle" fill="#ffffff">{state.step}</text>'
                )
    tick_every = 1 if n <= 32 else 4 if n <= 64 else 8
    y_ticks = top + 2 * (cell + gap) + 12
    for b in range(0, n, tick_every):
        x = left + b * (cell + gap) + cell / 2
        out.append(
            f'<text x="{x:.1f}" y="{y_ticks}" font-size="9" text-anchor="middle" fill="{c["muted"]}">{b}</text>'
        )
    out.append(
        f'<text x="{left + grid_w / 2:.1f}" y="{y_ticks + 14}" font-size="10" text-anchor="middle" '
        f'fill="{c["muted"]}">block</text>'
    )
    legend_y = y_ticks + 30
    x = left
    for colour, text, outline in legend:
        stroke = f' stroke="{c["pinned"]}" stroke-width="2"' if outline else ""
        out.append(
            f'<rect x="{x}" y="{legend_y - 9}" width="10" height="10" rx="2" fill="{colour}"{stroke}/>'
        )
        out.append(
            f'<text x="{x + 14}" y="{legend_y}" font-size="10" fill="{c["text"]}">{escape(text)}</text>'
        )
        x += 14 + 6 * len(text) + 18
    out.append("</svg>")
    return "\n".join(out) + "\n"
