"""Curves of a search: evaluations (retained % and raw value) and the winning score, against removals.

The series come from sessions; plotext draws them as text (`show`, `compare`, and through
textual-plotext the app), matplotlib as SVG for papers. No axis is drawn by hand here.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

from finercut_tui.session import Session


@dataclass(frozen=True)
class Series:
    label: str
    points: tuple[tuple[float, float], ...]  # (removals, value), removals ascending


def retained_series(session: Session, label: str = "") -> list[Series]:
    """Per measured result, its retained % against removals (failed evaluations skipped)."""
    by_name: dict[str, list[tuple[float, float]]] = {}
    for record in session.evals:
        for name, value in record.retained.items():
            if value is not None and math.isfinite(float(value)):
                by_name.setdefault(name, []).append((record.step, float(value)))
    return [Series(_join(label, name), tuple(sorted(points))) for name, points in by_name.items()]


def raw_series(session: Session, label: str = "") -> list[Series]:
    """Per measured result, its raw value (perplexity, accuracy) against removals."""
    by_name: dict[str, list[tuple[float, float]]] = {}
    for record in session.evals:
        for name, value in record.results.items():
            if value is not None and math.isfinite(float(value)):
                by_name.setdefault(name, []).append((record.step, float(value)))
    return [Series(_join(label, name), tuple(sorted(points))) for name, points in by_name.items()]


def score_series(session: Session, label: str = "") -> list[Series]:
    """The winning (lowest) score of each step the search chose, against its step."""
    points = tuple((k, float(s.score)) for k, s in enumerate(session.steps, 1) if s.score is not None)
    return [Series(_join(label, session.spec.score_label), points)] if points else []


def _join(label: str, name: str) -> str:
    return f"{label} {name}" if label else name


def plot(
    series: list[Series],
    title: str,
    ylabel: str = "",
    width: int = 72,
    height: int = 16,
    colour: bool = False,
    log_y: bool = False,
) -> str:
    """The series drawn by plotext as text of `width` x `height` cells ('' when there is nothing)."""
    import plotext as plt

    drawn = [s for s in series if s.points]
    if not drawn:
        return ""
    plt.clear_figure()
    plt.plotsize(width, height)
    plt.theme("clear")
    draw_series(plt, drawn, log_y, ticks=5)
    plt.title(title)
    plt.xlabel("removals")
    if ylabel:
        plt.ylabel(ylabel)
    text = plt.build() if colour else plt.uncolorize(plt.build())
    plt.clear_figure()
    return "\n".join(line.rstrip() for line in text.splitlines()) + "\n"


def draw_series(plt, series: list[Series], log_y: bool, ticks: int) -> None:
    """The series as braille lines on a plotext figure (the module, or textual-plotext's `plt`); a log
    y axis with `ticks` readable labels when asked and the values span more than 20x."""
    ys_all = [y for s in series for _, y in s.points]
    if log_y and ys_all and min(ys_all) > 0 and max(ys_all) / min(ys_all) > 20:
        plt.yscale("log")
        lo, hi = math.log10(min(ys_all)), math.log10(max(ys_all))
        at = [10 ** (lo + (hi - lo) * i / (ticks - 1)) for i in range(ticks)]
        plt.yticks(at, [f"{t:.3g}" for t in at])
    for s in series:
        xs, ys = zip(*s.points, strict=True)
        plt.plot(list(xs), list(ys), label=s.label, marker="braille")


def session_curves(sessions: list[tuple[str, Session]], width: int = 72, colour: bool = False) -> list[str]:
    """The standard charts for one or more sessions as text: retained %, raw values, winning score."""
    charts = [
        plot(series, name, width=width, colour=colour, log_y=log)
        for name, series, log in session_panels(sessions)
    ]
    return [c for c in charts if c]


def curves_svg(panels: list[tuple[str, list[Series], bool]], title: str) -> str:
    """Panels of (title, series, log y) as one SVG drawn by matplotlib (text stays text)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as mpl

    panels = [(t, [s for s in series if s.points], log) for t, series, log in panels]
    panels = [p for p in panels if p[1]]
    fig, axes = mpl.subplots(len(panels), 1, figsize=(8, 2.6 * max(1, len(panels))), squeeze=False)
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "finercut"}):
        for ax, (name, series, log) in zip(axes[:, 0], panels, strict=True):
            for s in series:
                xs, ys = zip(*s.points, strict=True)
                ax.plot(xs, ys, marker="o", markersize=2.5, linewidth=1.2, label=s.label)
            ys_all = [y for s in series for _, y in s.points]
            if log and min(ys_all) > 0 and max(ys_all) / min(ys_all) > 20:
                ax.set_yscale("log")
            ax.set_title(name, fontsize=10, loc="left")
            ax.set_xlabel("removals", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, frameon=False)
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        out = io.StringIO()
        fig.savefig(out, format="svg", metadata={"Date": None})
    mpl.close(fig)
    return out.getvalue()


def session_panels(sessions: list[tuple[str, Session]]) -> list[tuple[str, list[Series], bool]]:
    retained, raw, scores = [], [], []
    for label, session in sessions:
        retained += retained_series(session, label)
        raw += raw_series(session, label)
        scores += score_series(session, label)
    return [
        ("retained % of the unpruned model", retained, False),
        ("evaluation results", raw, True),
        ("winning score per step (lower = more removable)", scores, True),
    ]
