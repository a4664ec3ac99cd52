"""Perplexity on held-out text, the way the pruning papers measure it.

The text is tokenised once without special tokens and cut into non-overlapping windows of
`seq_len` tokens (capped at the model's `max_position_embeddings`); a tail shorter than one window
is dropped, as in the FinerCut / GPTQ evaluation code, unless the text is shorter than one window
(then it is a single window). Each window is scored independently: every token but the first is
predicted, and ppl = exp(mean NLL over all predicted tokens), the loss computed in fp32.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from finercut_tui.errors import FinercutError


def token_fingerprint(ids: torch.Tensor) -> str:
    """ "sha256:" + hex SHA-256 of the ids as little-endian int64, row-major (the calibration convention)."""
    array = np.ascontiguousarray(ids.to(torch.int64).cpu().numpy()).astype("<i8", copy=False)
    return "sha256:" + hashlib.sha256(array.tobytes()).hexdigest()


def _hf_model(model: Any) -> torch.nn.Module:
    """Accept a PrunableModel or LoadedModel as well as a plain HF model."""
    from finercut_tui.model.surgery import PrunableModel

    if isinstance(model, PrunableModel):
        return model.model
    inner = getattr(model, "pm", None)
    if isinstance(inner, PrunableModel):
        return inner.model
    return model


def max_positions(model: torch.nn.Module) -> int | None:
    config = model.config
    text_config = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    for attr in ("max_position_embeddings", "n_positions"):
        value = getattr(text_config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def effective_seq_len(model: Any, seq_len: int) -> int:
    limit = max_positions(_hf_model(model))
    return min(int(seq_len), limit) if limit else int(seq_len)


@dataclass(frozen=True)
class PerplexityWindows:
    """The exact token windows that are scored: (windows, seq_len) int64 on CPU."""

    input_ids: torch.Tensor
    total_tokens: int  # tokens in the text before the cap and the dropped tail

    @property
    def fingerprint(self) -> str:
        return token_fingerprint(self.input_ids)


def make_windows(tokenizer, text: str, seq_len: int, max_tokens: int | None = None) -> PerplexityWindows:
    """Tokenise `text` (no special tokens), cap at `max_tokens`, cut into non-overlapping windows."""
    if seq_len < 2:
        raise FinercutError(f"perplexity needs windows of >= 2 tokens, got seq_len={seq_len}")
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    total = len(ids)
    if max_tokens is not None:
        ids = ids[: int(max_tokens)]
    if len(ids) < 2:
        raise FinercutError(
            f"the evaluation text has {len(ids)} tokens: perplexity needs at least 2; pass more text"
        )
    n = len(ids) // seq_len
    if n == 0:
        windows = torch.tensor([ids], dtype=torch.int64)
    else:
        windows = torch.tensor(ids[: n * seq_len], dtype=torch.int64).view(n, seq_len)
    return PerplexityWindows(input_ids=windows, total_tokens=total)


@torch.inference_mode()
def score_windows(model: Any, windows: torch.Tensor, batch_size: int = 8) -> tuple[float, int]:
    """Sum of next-token NLLs (fp32 per token, summed in fp64) and the number of predicted tokens."""
    hf = _hf_model(model)
    device = hf.get_input_embeddings().weight.device
    total_nll = 0.0
    count = 0
    for start in range(0, windows.shape[0], max(1, int(batch_size))):
        batch = windows[start : start + batch_size].to(device)
        logits = hf(input_ids=batch, use_cache=False).logits
        targets = batch[:, 1:].to(logits.device)
        # one row at a time in fp32: the whole batch of fp32 logits can be many GB for large vocabularies
        for row in range(batch.shape[0]):
            nll = F.cross_entropy(logits[row, :-1].float(), targets[row], reduction="sum")
            total_nll += float(nll.double())
            count += int(targets.shape[1])
        del logits
    return total_nll, count


def perplexity(
    model: Any,
    tokenizer,
    text: str,
    seq_len: int = 2048,
    max_tokens: int | None = None,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Perplexity of `model` (HF model or PrunableModel, in its current state) on `text`.

    Returns {"ppl", "nll" (mean per predicted token), "tokens" (scored, incl. each window's first),
    "predicted", "windows", "seq_len" (after the cap), "total_tokens", "fingerprint"}.
    """
    seq_len = effective_seq_len(model, seq_len)
    windows = make_windows(tokenizer, text, seq_len, max_tokens)
    total_nll, count = score_windows(model, windows.input_ids, batch_size)
    mean_nll = total_nll / count
    return {
        "ppl": math.exp(mean_nll) if mean_nll < 709 else math.inf,
        "nll": mean_nll,
        "tokens": int(windows.input_ids.numel()),
        "predicted": count,
        "windows": int(windows.input_ids.shape[0]),
        "seq_len": int(windows.input_ids.shape[1]),
        "total_tokens": windows.total_tokens,
        "fingerprint": windows.fingerprint,
    }
