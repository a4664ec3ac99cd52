"""Where text comes from: a named corpus (via `datasets`) or a local .txt / .jsonl file.

`wikitext2`: WikiText-2 raw (train split for calibration, test split for perplexity).
`c4`: the first shard of C4's English validation split (both for calibration and perplexity).
`pydoc`: the English reference text every Python ships as `pydoc_data.topics` (PSF licence; no
download): the demo's calibration set. Topics in sorted order, first half for calibration,
second half for evaluation, so the two never overlap.
A local `.txt` is read whole; a `.jsonl` contributes the `text` field of each line, joined by "\n\n".
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from finercut_tui.errors import FinercutError

NAMED = ("wikitext2", "c4", "pydoc")
C4_VALIDATION_SHARD = "en/c4-validation.00000-of-00008.json.gz"


@dataclass(frozen=True)
class Text:
    source: str  # what the user passed (name or path)
    split: str  # "train" / "test" / "validation" / "file"
    text: str


def load_text(source: str, purpose: str = "calibration") -> Text:
    """Load the text for `purpose` ("calibration" or "evaluation") from `source`."""
    if source in NAMED:
        return _load_named(source, purpose)
    path = Path(os.path.expanduser(source))
    if not path.is_file():
        raise FinercutError(
            f"text file not found: {source} (pass an existing .txt or .jsonl file, or one of {', '.join(NAMED)})"
        )
    if path.suffix == ".jsonl":
        return Text(source, "file", _read_jsonl(path))
    try:
        return Text(source, "file", path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise FinercutError(f"{source} is not UTF-8 text: pass a .txt or .jsonl file") from exc


def _read_jsonl(path: Path) -> str:
    texts = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise FinercutError(
                    f"{path}:{lineno} is not valid JSON; each line must be an object with 'text'"
                ) from exc
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise FinercutError(f"{path}:{lineno} has no string 'text' field; each line needs one")
            texts.append(record["text"])
    return "\n\n".join(texts)


def _pydoc_text(purpose: str) -> Text:
    from pydoc_data.topics import topics

    names = sorted(topics)
    half = len(names) // 2
    chosen, split = (
        (names[:half], "first-half") if purpose == "calibration" else (names[half:], "second-half")
    )
    return Text("pydoc", split, "\n\n".join(topics[name] for name in chosen))


def _load_named(name: str, purpose: str) -> Text:
    if name == "pydoc":
        return _pydoc_text(purpose)
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a dependency
        raise FinercutError("named corpora need the `datasets` package: pip install datasets") from exc
    try:
        if name == "wikitext2":
            split = "train" if purpose == "calibration" else "test"
            ds = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split=split)
            return Text(name, split, "\n\n".join(ds["text"]))
        ds = datasets.load_dataset(
            "allenai/c4", data_files={"validation": C4_VALIDATION_SHARD}, split="validation"
        )
        return Text(name, "validation", "\n\n".join(ds["text"]))
    except Exception as exc:  # datasets raises many kinds; the user needs one line
        raise FinercutError(
            f"cannot load {name} via `datasets` ({type(exc).__name__}; offline?): pass a local .txt or .jsonl "
            "file instead, or run once with network so it is cached"
        ) from exc
