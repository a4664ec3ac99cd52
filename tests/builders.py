"""Small builders shared by the tests: saved tiny checkpoints, local lm-eval tasks."""

from __future__ import annotations

from pathlib import Path

from tiny_models import tiny_model
from tiny_tokenizer import tiny_tokenizer

TASKS = Path(__file__).parent / "data" / "tasks"


def save_tiny_checkpoint(folder: Path, name: str = "llama", add_bos: bool = True, **overrides) -> Path:
    """A tiny random model plus the char tokenizer, saved as a normal HF folder."""
    tiny_model(name, **overrides).save_pretrained(folder)
    tiny_tokenizer(add_bos=add_bos).save_pretrained(folder)
    return Path(folder)


def local_tasks_dir(base: Path) -> Path:
    """tests/data/tasks with data_files made absolute (lm-eval resolves them against the cwd)."""
    target = Path(base) / "eval_tasks"
    if not target.is_dir():
        target.mkdir()
        for src in sorted(TASKS.glob("*.yaml")):
            text = src.read_text(encoding="utf-8").replace("tests/data/tasks/", f"{TASKS.resolve()}/")
            (target / src.name).write_text(text, encoding="utf-8")
    return target


def make_engine(
    pm,
    ids,
    target: int,
    *,
    batch_size=None,
    prefix_cache="gpu",
    eval_every=0,
    eval_request=None,
    pins=(),
    **spec_and_engine,
):
    """A SearchEngine from flat keywords: SearchSpec fields, scoring knobs, and engine arguments."""
    from dataclasses import fields

    from finercut_tui.domain.pins import Pins
    from finercut_tui.domain.spec import EvalSchedule, ScoringOptions, SearchSpec
    from finercut_tui.search.engine import SearchEngine

    names = {f.name for f in fields(SearchSpec)}
    spec = SearchSpec(**{k: v for k, v in spec_and_engine.items() if k in names})
    rest = {k: v for k, v in spec_and_engine.items() if k not in names}
    return SearchEngine(
        pm,
        ids,
        spec,
        target,
        scoring=ScoringOptions(batch_size, prefix_cache),
        schedule=EvalSchedule(eval_every, eval_request),
        pins=Pins(pins),
        **rest,
    )


def session_from(
    model: dict, calibration: dict | None = None, method: dict | None = None, steps=(), **fields
):
    """A Session from plain mappings, as a file would hold them (missing calibration keys filled)."""
    from finercut_tui.session import Session

    data = {
        "schema_version": 1,
        "model": model,
        "calibration": {"source": "x.txt", "samples": 1, "seq_len": 2, **(calibration or {})},
        "method": {"name": "finercut", **(method or {})},
        "steps": [s.to_dict() for s in steps],
        **fields,
    }
    return Session.from_yaml_dict(data)
