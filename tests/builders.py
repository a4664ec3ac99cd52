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
