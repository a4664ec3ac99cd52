"""Calibration tokens: N samples x T tokens, laid out one of three ways; and their fingerprint.

API (for the CLI, the session and presets): `build_calibration(tokenizer, source, samples, seq_len,
layout)` -> `Calibration`; `LAYOUTS` (the valid names, the default first), `DEFAULT_LAYOUT`, and
`check_layout(name)`, which returns the name or raises a one-line FinercutError listing the valid
ones. `Calibration.layout` holds the layout; `Calibration.record()` records it under "layout" only
when it is not the default, so sessions written before layouts existed stay byte-identical.

Layouts (`source` is as `data/sources.py` reads it; its rows, for the two reference layouts, are
described there: wikitext2 = the `datasets` lines, c4 = documents, pydoc = topics, .txt = lines,
.jsonl = `text` fields):

- `per-row-bos` (default): consecutive non-overlapping chunks from the start of the joined text
  (`Text.text`), tokenized once without special tokens (as far as needed); sample i is tokens
  [i*k, (i+1)*k) where k = seq_len - 1 if the tokenizer adds a BOS token by default (then the
  sample is [BOS] + those tokens), else k = seq_len. `bos`: every row starts with BOS.
- `finercut` (FinerCut's llm_dissect, `build_wikitext_dataset`): drop the empty rows ("" only, as
  its `len(text) > 0` filter), join the rest verbatim with single spaces, tokenize that string once
  with the tokenizer's special tokens (so one BOS, at the very start, if the tokenizer adds one),
  and cut consecutive rows of seq_len tokens: the first samples * seq_len tokens. `bos`: the first
  row starts with BOS (and no other does).
- `llm-drop` (LLM-Drop, LLaMA-Factory's packed pre-training data): every row is a document (empty
  rows dropped); each is tokenized as `document + eos_token` without special tokens added (so no
  BOS, and one EOS after each document), the ids are concatenated and cut into consecutive blocks of
  seq_len tokens, the remainder dropped: the first `samples` blocks. `bos` is False.

Only as much text is tokenized as the samples need. `per-row-bos` and `finercut` tokenize a prefix
cut at a paragraph break or a row boundary that lies at least 512 tokens beyond the last kept one
(tokenization is local, so the kept ids equal those of the whole string); `llm-drop` tokenizes
document after document, which is exact by construction.

The fingerprint is "sha256:" + the hex SHA-256 of the ids as little-endian int64, row-major, shape
N x T: two runs with equal fingerprints scored the very same tokens, whatever the layout.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from finercut_tui.data.sources import load_text
from finercut_tui.domain.records import DEFAULT_LAYOUT, LAYOUTS, CalibrationRecord
from finercut_tui.errors import FinercutError


@dataclass(frozen=True)
class Calibration:
    source: str
    split: str
    input_ids: torch.Tensor  # (samples, seq_len) int64, on CPU
    fingerprint: str
    bos: bool
    text_sha256: str = ""  # of the joined text, so evaluations can tell they are scoring it again
    layout: str = DEFAULT_LAYOUT  # one of LAYOUTS

    @property
    def samples(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    def record(self) -> CalibrationRecord:
        """What the session records (its `to_dict` writes "layout" only when it is not the default)."""
        return CalibrationRecord(
            source=self.source,
            samples=self.samples,
            seq_len=self.seq_len,
            split=self.split,
            bos=self.bos,
            fingerprint=self.fingerprint,
            text_sha256=self.text_sha256 or None,
            layout=self.layout,
        )


def check_layout(layout: str) -> str:
    """`layout` if it names a calibration layout, else a one-line FinercutError listing them."""
    if layout not in LAYOUTS:
        raise FinercutError(f"unknown calibration layout {layout!r}: use one of {', '.join(LAYOUTS)}")
    return layout


def token_fingerprint(ids: torch.Tensor) -> str:
    array = np.ascontiguousarray(ids.to(torch.int64).cpu().numpy()).astype("<i8", copy=False)
    return "sha256:" + hashlib.sha256(array.tobytes()).hexdigest()


def adds_bos_by_default(tokenizer) -> bool:
    """True when the tokenizer defines a BOS token and puts it in front of encoded text by default."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return len(ids) > 0 and ids[0] == bos


def _too_little(have: int, samples: int, seq_len: int, needed: int, layout: str = DEFAULT_LAYOUT):
    in_layout = "" if layout == DEFAULT_LAYOUT else f" in the {layout} layout"
    return FinercutError(
        f"too little calibration text: it has {have} tokens{in_layout}, {samples} samples x {seq_len} need "
        f"{needed}; pass more text or lower --calib-samples / --seq-len"
    )


def tokens_to_samples(tokens: list[int], samples: int, seq_len: int, bos_id: int | None) -> torch.Tensor:
    per_sample = seq_len - 1 if bos_id is not None else seq_len
    needed = samples * per_sample
    if len(tokens) < needed:
        raise _too_little(len(tokens), samples, seq_len, needed)
    body = torch.tensor(tokens[:needed], dtype=torch.int64).view(samples, per_sample)
    if bos_id is None:
        return body
    return torch.cat([torch.full((samples, 1), bos_id, dtype=torch.int64), body], dim=1)


def _leading_tokens(tokenizer, text: str, needed: int, margin: int = 512) -> list[int]:
    """The ids of `text` tokenised once, but only as far as needed (a C4 shard is ~40 MB).

    A prefix cut at a paragraph break, with `margin` tokens to spare, yields the same leading ids as
    the whole text: tokenisation decisions are local and the cut lies far beyond what is kept.
    """
    size = max(64 * 1024, needed * 8)
    while size < len(text):
        cut = text.rfind("\n\n", 0, size)
        if cut > 0:
            ids = tokenizer(text[:cut], add_special_tokens=False)["input_ids"]
            if len(ids) >= needed + margin:
                return ids
        size *= 2
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def finercut_stream_tokens(tokenizer, rows, needed: int, margin: int = 512) -> list[int]:
    """The leading ids of FinerCut's stream: " ".join(non-empty rows), tokenized once with special tokens.

    Returns at least `needed` ids when the text has them (else all of it). Only a prefix of rows is
    joined and tokenized, one that yields `margin` ids beyond those needed: its leading ids are the
    whole string's (tokenization is local; a special token the tokenizer appends lies at the end).
    """
    kept = [row for row in rows if len(row) > 0]
    chars, end = 0, 0
    size = max(64 * 1024, needed * 8)
    while end < len(kept):
        while end < len(kept) and chars < size:
            chars += len(kept[end]) + 1
            end += 1
        if end == len(kept):
            break
        ids = tokenizer(" ".join(kept[:end]))["input_ids"]
        if len(ids) >= needed + margin:
            return ids
        size *= 2
    return tokenizer(" ".join(kept))["input_ids"]


def llm_drop_stream_tokens(tokenizer, rows, needed: int, batch: int = 64) -> list[int]:
    """The leading ids of LLM-Drop's stream: each non-empty row + EOS, no special tokens added, concatenated.

    Returns at least `needed` ids when the text has them (else all of it); documents are tokenized in
    batches of `batch`, only until enough ids are there.
    """
    eos = tokenizer.eos_token
    if eos is None:
        raise FinercutError(
            "the llm-drop calibration layout needs a tokenizer with an EOS token; this one has none"
        )
    ids: list[int] = []
    docs = [row for row in rows if len(row) > 0]
    for start in range(0, len(docs), batch):
        encoded = tokenizer([doc + eos for doc in docs[start : start + batch]], add_special_tokens=False)
        for doc_ids in encoded["input_ids"]:
            ids.extend(doc_ids)
        if len(ids) >= needed:
            break
    return ids


def stream_to_samples(tokens: list[int], samples: int, seq_len: int, layout: str) -> torch.Tensor:
    """The first samples x seq_len ids as consecutive rows (the reference layouts' cut)."""
    needed = samples * seq_len
    if len(tokens) < needed:
        raise _too_little(len(tokens), samples, seq_len, needed, layout)
    return torch.tensor(tokens[:needed], dtype=torch.int64).view(samples, seq_len)


def build_calibration(
    tokenizer, source: str, samples: int = 10, seq_len: int = 256, layout: str = DEFAULT_LAYOUT
) -> Calibration:
    """`samples` x `seq_len` calibration tokens from `source`, laid out as `layout` (see the module docstring)."""
    check_layout(layout)
    if samples < 1 or seq_len < 2:
        raise FinercutError(f"--calib-samples must be >= 1 and --seq-len >= 2 (got {samples}, {seq_len})")
    text = load_text(source, purpose="calibration")
    needed = samples * seq_len
    if layout == "finercut":
        tokens = finercut_stream_tokens(tokenizer, text.row_list(), needed)
        ids = stream_to_samples(tokens, samples, seq_len, layout)
        bos = adds_bos_by_default(tokenizer)  # then it put one BOS in front of the stream
    elif layout == "llm-drop":
        tokens = llm_drop_stream_tokens(tokenizer, text.row_list(), needed)
        ids = stream_to_samples(tokens, samples, seq_len, layout)
        bos = False
    else:
        bos = adds_bos_by_default(tokenizer)
        tokens = _leading_tokens(tokenizer, text.text, needed)
        ids = tokens_to_samples(tokens, samples, seq_len, tokenizer.bos_token_id if bos else None)
    return Calibration(
        source=source,
        split=text.split,
        input_ids=ids,
        fingerprint=token_fingerprint(ids),
        bos=bos,
        text_sha256=text.sha256,
        layout=layout,
    )
