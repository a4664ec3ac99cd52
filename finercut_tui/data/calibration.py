"""Calibration tokens: consecutive non-overlapping chunks from the start of one tokenised text.

Exactly: tokenize the joined text once without special tokens (as far as needed); sample i is tokens
[i*k, (i+1)*k) where k = seq_len - 1 if the tokenizer adds a BOS token by default (then the
sample is [BOS] + those tokens), else k = seq_len. The fingerprint is "sha256:" + the hex SHA-256
of the ids as little-endian int64, row-major, shape N x T: two runs with equal fingerprints
scored the very same tokens.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from finercut_tui.data.sources import load_text
from finercut_tui.errors import FinercutError


@dataclass(frozen=True)
class Calibration:
    source: str
    split: str
    input_ids: torch.Tensor  # (samples, seq_len) int64, on CPU
    fingerprint: str
    bos: bool
    text_sha256: str = ""  # of the joined text, so evaluations can tell they are scoring it again

    @property
    def samples(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    def spec(self) -> dict:
        """What the session records."""
        return {
            "source": self.source,
            "split": self.split,
            "samples": self.samples,
            "seq_len": self.seq_len,
            "bos": self.bos,
            "fingerprint": self.fingerprint,
        }


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


def tokens_to_samples(tokens: list[int], samples: int, seq_len: int, bos_id: int | None) -> torch.Tensor:
    per_sample = seq_len - 1 if bos_id is not None else seq_len
    needed = samples * per_sample
    if len(tokens) < needed:
        raise FinercutError(
            f"too little calibration text: it has {len(tokens)} tokens, {samples} samples x {seq_len} need "
            f"{needed}; pass more text or lower --calib-samples / --seq-len"
        )
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


def build_calibration(tokenizer, source: str, samples: int = 10, seq_len: int = 256) -> Calibration:
    if samples < 1 or seq_len < 2:
        raise FinercutError(f"--calib-samples must be >= 1 and --seq-len >= 2 (got {samples}, {seq_len})")
    text = load_text(source, purpose="calibration")
    bos = adds_bos_by_default(tokenizer)
    tokens = _leading_tokens(tokenizer, text.text, samples * seq_len)
    ids = tokens_to_samples(tokens, samples, seq_len, tokenizer.bos_token_id if bos else None)
    return Calibration(
        source=source, split=text.split, input_ids=ids, fingerprint=token_fingerprint(ids), bos=bos
    )
