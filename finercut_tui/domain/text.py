"""The words for a search event: one line each, shared by the progress bar, the app's log and replay."""

from __future__ import annotations

from finercut_tui.domain import events as E
from finercut_tui.domain.evals import describe_eval, retained_text

FINISH_REASONS = {"target": "target reached", "exhausted": "no candidates left"}


def fmt_score(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def clock(seconds: float | None) -> str:
    """`mm:ss`, or `h:mm:ss` past an hour; `--:--` when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "--:--"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def describe_event(event: object) -> str:
    """One line for `event`; "" for the per-candidate events, which only move counters."""
    if isinstance(event, E.SearchStarted):
        done = f", {len(event.removed)} already removed" if event.removed else ""
        return f"search started: {event.method}/{event.metric}, target {event.target} {event.unit}s{done}"
    if isinstance(event, E.StepStarted):
        held = f" ({len(event.held_back)} held back)" if event.held_back else ""
        return f"step {event.step}: {len(event.candidates)} candidates{held}"
    if isinstance(event, E.SublayerRemoved):
        score = f", score {fmt_score(event.score)}" if event.score is not None else ""
        took = f", {event.seconds:.1f}s" if event.seconds else ""
        return f"step {event.step}: removed {event.sublayer} by {event.by}{score}{took}"
    if isinstance(event, E.SublayerRestored):
        return f"undo: {event.sublayer} restored (step {event.step} taken back)"
    if isinstance(event, E.TargetChanged):
        return f"searching on: target raised to {event.target}"
    if isinstance(event, E.PinChanged):
        return f"{'pinned' if event.pinned else 'unpinned'} {event.sublayer}"
    if isinstance(event, E.Paused):
        return f"paused at step {event.step}"
    if isinstance(event, E.Resumed):
        return "resumed"
    if isinstance(event, E.EvalStarted):
        return f"evaluating at step {event.step}: {event.description}"
    if isinstance(event, E.EvalFinished):
        return f"eval at step {event.step}: {describe_eval(event.record)}"
    if isinstance(event, E.EvalFailed):
        return f"error: evaluation at step {event.step} failed ({event.record.error}); the search goes on"
    if isinstance(event, E.RepairMeasured):
        before, after = event.record.before, event.record.after
        kept = " -> ".join(retained_text(r) if r is not None else "-" for r in (before, after))
        return f"repaired what-if at step {event.step} (ridge {event.record.ridge:g}): retained {kept}"
    if isinstance(event, E.LogMessage):
        return event.text if event.level == "info" else f"{event.level}: {event.text}"
    if isinstance(event, E.SearchFinished):
        why = FINISH_REASONS.get(event.reason, event.reason)
        extra = f": {event.message}" if event.message else ""
        return f"search finished ({why}{extra}) after {len(event.removed)} removals"
    return ""
