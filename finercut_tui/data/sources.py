"""Where text comes from: a named corpus (via `datasets`) or a local .txt / .jsonl file.

`wikitext2`: WikiText-2 raw (train split for calibration, test split for perplexity).
`c4`: the first shard of C4's English validation split (both for calibration and perplexity).
`pydoc`: the English reference text every Python ships as `pydoc_data.topics` (PSF licence; no
download): the demo's calibration set. Topics in sorted order, first half for calibration,
second half for evaluation, so the two never overlap.
A local `.txt` is read whole; a `.jsonl` contributes the `text` field of each line, joined by "\n\n".

`load_text` returns both the joined text (`Text.text`, hashed by `Text.sha256`) and the source's
rows (`Text.rows`), verbatim, in order, none dropped; the calibration layouts that work on lines or
documents (`finercut`, `llm-drop`, see `data/calibration.py`) read the rows:

- `wikitext2`: the `datasets` rows of WikiText-2 raw, one line of the corpus each, as `datasets`
  gives them: a text line keeps its trailing "\n", a blank line is "" (what FinerCut's reference reads).
- `c4`: one C4 document each (its `text` field).
- `pydoc`: one topic each, in the sorted order of the chosen half.
- `.txt`: one line each, without its line break, as `datasets.load_dataset("text", ...)` yields them
  (universal newlines, split on "\n"; a blank line is ""; no row after a final "\n").
- `.jsonl`: the `text` field of each record (blank lines between records are skipped).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from finercut_tui.errors import FinercutError

NAMED = ("wikitext2", "c4", "pydoc")
C4_VALIDATION_SHARD = "en/c4-validation.00000-of-00008.json.gz"


@dataclass(frozen=True)
class Text:
    source: str  # what the user passed (name or path)
    split: str  # "train" / "test" / "validation" / "file"
    text: str
    # the rows (lines or documents) the text was joined from, verbatim; see the module docstring
    rows: tuple[str, ...] | None = field(default=None, repr=False, compare=False)

    def row_list(self) -> tuple[str, ...]:
        """The rows; for a Text built by hand without them, its lines as a .txt would give them."""
        return self.rows if self.rows is not None else txt_rows(self.text)

    @property
    def sha256(self) -> str:
        """Of the text itself: an evaluation on a text with the same hash scores the calibration text."""
        return text_sha256(self.text)


def text_sha256(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def txt_rows(text: str) -> tuple[str, ...]:
    """Lines of a text without their "\n", as `datasets`' "text" loader yields them (no row after a final "\n")."""
    rows = text.split("\n")
    if rows[-1] == "":
        rows.pop()
    return tuple(rows)


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
        rows = _read_jsonl(path)
        return Text(source, "file", "\n\n".join(rows), rows)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise FinercutError(f"{source} is not UTF-8 text: pass a .txt or .jsonl file") from exc
    return Text(source, "file", text, txt_rows(text))


def _read_jsonl(path: Path) -> tuple[str, ...]:
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
    return tuple(texts)


def _pydoc_text(purpose: str) -> Text:
    from pydoc_data.topics import topics

    names = sorted(topics)
    half = len(names) // 2
    chosen, split = (
        (names[:half], "first-half") if purpose == "calibration" else (names[half:], "second-half")
    )
    rows = tuple(topics[name] for name in chosen)
    return Text("pydoc", split, "\n\n".join(rows), rows)


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
            rows = tuple(ds["text"])
            return Text(name, split, "\n\n".join(rows), rows)
        ds = datasets.load_dataset(
            "allenai/c4", data_files={"validation": C4_VALIDATION_SHARD}, split="validation"
        )
        rows = tuple(ds["text"])
        return Text(name, "validation", "\n\n".join(rows), rows)
    except Exception as exc:  # datasets raises many kinds; the user needs one line
        raise FinercutError(
            f"cannot load {name} via `datasets` ({type(exc).__name__}; offline?): pass a local .txt or .jsonl "
            "file instead, or run once with network so it is cached"
        ) from exc
