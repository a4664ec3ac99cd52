"""Training data for `heal`: instruction records (Alpaca recipe) or plain text, tokenised with labels.

Sources (`load_records`):

- a hub data set by name through `datasets` (default `yahma/alpaca-cleaned`, the cleaned Alpaca set
  FinerCut's LoRA script uses), its `train` split;
- a local `.jsonl`: one object per line with `instruction` / `input` (optional) / `output`, or `text`;
- a local `.txt`: plain text, one document;
- `pydoc`: the first half of the Python reference topics (`pydoc_data.topics`, offline; the calibration
  half, so `--ppl pydoc`, the second half, stays held-out), one document per topic.

Instruction records are formatted with the Alpaca prompt (alpaca-lora's template) and the loss is on
the response only: prompt tokens get label -100, the response is followed by EOS. Text documents are
tokenised, each followed by EOS, concatenated and cut into rows of `seq_len` tokens (the last short
row kept), loss on every token. The fingerprint is `sha256:` + the SHA-256 of every example's token
ids and labels (int64 little-endian) in file order: equal fingerprints trained on the same tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finercut_tui.errors import FinercutError, first_line

DEFAULT_DATA = "yahma/alpaca-cleaned"
IGNORE_INDEX = -100

PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


def alpaca_prompt(instruction: str, input: str = "") -> str:  # noqa: A002 - the field's name
    if input and input.strip():
        return PROMPT_INPUT.format(instruction=instruction, input=input)
    return PROMPT_NO_INPUT.format(instruction=instruction)


@dataclass(frozen=True)
class Records:
    """What a source holds before tokenising: instruction triples or text documents."""

    source: str
    kind: str  # "alpaca" | "text"
    items: tuple[Any, ...]  # (instruction, input, output) triples, or documents (str)


@dataclass(frozen=True)
class HealData:
    source: str
    kind: str
    examples: list[tuple[list[int], list[int]]]  # (input_ids, labels), labels -100 where no loss
    fingerprint: str
    records: int  # instruction records or documents read
    truncated: int  # instruction examples cut to seq_len

    @property
    def tokens(self) -> int:
        return sum(len(ids) for ids, _ in self.examples)

    @property
    def loss_tokens(self) -> int:
        return sum(sum(1 for x in labels if x != IGNORE_INDEX) for _, labels in self.examples)

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "format": self.kind,
            "records": self.records,
            "examples": len(self.examples),
            "tokens": self.tokens,
            "loss_tokens": self.loss_tokens,
            "fingerprint": self.fingerprint,
        }


def _row(record: Any, where: str) -> Any:
    """One record as a triple (instruction form) or a str (text form), or None when unusable."""
    if not isinstance(record, dict):
        return None
    instruction, output = record.get("instruction"), record.get("output")
    if isinstance(instruction, str) and isinstance(output, str):
        extra = record.get("input")
        return (instruction, extra if isinstance(extra, str) else "", output)
    text = record.get("text")
    return text if isinstance(text, str) else None


def _from_rows(source: str, rows: list[Any], where: str) -> Records:
    usable = [r for r in (_row(x, where) for x in rows) if r is not None]
    if not usable:
        raise FinercutError(
            f"{where} has no usable records: each needs string 'instruction' and 'output' fields "
            "(and optionally 'input'), or a string 'text' field"
        )
    triples = [r for r in usable if isinstance(r, tuple)]
    if triples and len(triples) != len(usable):
        raise FinercutError(f"{where} mixes instruction records and text records: use one form per data set")
    return Records(source, "alpaca" if triples else "text", tuple(usable))


def load_records(source: str, split: str = "train") -> Records:
    """The records of `source` (see the module docstring), or a one-line FinercutError."""
    if source == "pydoc":
        from pydoc_data.topics import topics

        names = sorted(topics)
        return Records(source, "text", tuple(topics[n] for n in names[: len(names) // 2]))
    path = Path(os.path.expanduser(source))
    local = path.suffix in (".jsonl", ".txt", ".json") or source.startswith((".", "/", "~"))
    if local or path.exists():
        if not path.is_file():
            raise FinercutError(
                f"data file not found: {source} (pass an existing .jsonl or .txt file, or a hub data set name)"
            )
        if path.suffix == ".txt":
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError as exc:
                raise FinercutError(f"{source} is not UTF-8 text: pass a UTF-8 .txt or a .jsonl") from exc
            if not text.strip():
                raise FinercutError(f"{source} is empty: no text to train on")
            return Records(source, "text", (text,))
        rows = []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise FinercutError(
                        f"{source}:{lineno} is not valid JSON: a .jsonl needs one object per line"
                    ) from exc
        return _from_rows(source, rows, source)
    return _from_rows(source, _hub_rows(source, split), f"data set {source} ({split})")


def _hub_rows(name: str, split: str) -> list[Any]:
    try:
        import datasets

        data = datasets.load_dataset(name, split=split)
    except Exception as exc:  # noqa: BLE001 - offline, unknown name, bad split: one line says which
        first = first_line(exc, 160)
        raise FinercutError(
            f"cannot load data set {name!r} ({split}): {first}; pass a local .jsonl/.txt with --data "
            "when offline"
        ) from exc
    return list(data)


def tokenize(records: Records, tokenizer, seq_len: int, max_examples: int | None = None) -> HealData:
    """Token ids and labels per example (see the module docstring); `max_examples` keeps the first N."""
    if seq_len < 2:
        raise FinercutError(f"--seq-len {seq_len} is too short: use at least 2 tokens (e.g. 256)")
    eos = tokenizer.eos_token_id
    examples: list[tuple[list[int], list[int]]] = []
    truncated = 0
    if records.kind == "alpaca":
        items = records.items[:max_examples] if max_examples else records.items
        for instruction, extra, output in items:
            prompt = tokenizer(alpaca_prompt(instruction, extra), add_special_tokens=True)["input_ids"]
            answer = tokenizer(output, add_special_tokens=False)["input_ids"]
            if eos is not None:
                answer = [*answer, eos]
            ids = list(prompt) + list(answer)
            labels = [IGNORE_INDEX] * len(prompt) + list(answer)
            if len(ids) > seq_len:
                truncated += 1
                ids, labels = ids[:seq_len], labels[:seq_len]
            if any(x != IGNORE_INDEX for x in labels[1:]):  # something to learn after the shift
                examples.append((ids, labels))
    else:
        stream: list[int] = []
        for doc in records.items:
            stream.extend(tokenizer(doc, add_special_tokens=True)["input_ids"])
            if eos is not None:
                stream.append(eos)
        for start in range(0, len(stream), seq_len):
            chunk = stream[start : start + seq_len]
            if len(chunk) >= 2:
                examples.append((chunk, list(chunk)))
        if max_examples:
            examples = examples[:max_examples]
    if not examples:
        raise FinercutError(
            f"{records.source} gives no training example with a response to learn (check the fields "
            "and --seq-len)"
        )
    return HealData(
        source=records.source,
        kind=records.kind,
        examples=examples,
        fingerprint=fingerprint(examples),
        records=len(records.items),
        truncated=truncated,
    )


def fingerprint(examples: list[tuple[list[int], list[int]]]) -> str:
    h = hashlib.sha256()
    for ids, labels in examples:
        for seq in (ids, labels):
            h.update(len(seq).to_bytes(8, "little"))
            h.update(b"".join(int(x).to_bytes(8, "little", signed=True) for x in seq))
    return "sha256:" + h.hexdigest()
