"""Measure what pruning bought: prefill and decode throughput, peak memory, KV-cache bytes.

Every number comes from a run in this process; the original and the pruned model are measured on
the same random tokens, in the same run, so their ratios compare like with like.

- prefill and decode come from one greedy ``generate(min_new_tokens=max_new_tokens=N)`` call: a logits
  processor stamps the time when the prompt's logits arrive (end of prefill); decode is the rest, N-1
  single-token steps. One warm-up call with the same prompt runs first.
- KV-cache bytes are summed over the key/value tensors of the cache a ``generate(max_new_tokens=1)``
  returns: that cache holds exactly the prompt (``--context`` tokens).
- peak memory: on CUDA, ``max_memory_allocated`` during the timed generate minus what was allocated
  before it (activations + cache + workspace; the weights are reported on their own line). On CPU it
  is not measured (RSS deltas are blurred by the allocator reusing freed memory) and shows as n/a.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from finercut_tui.errors import FinercutError


@dataclass
class SpeedResult:
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    peak_memory_bytes: int | None  # CUDA only: peak during generate above the memory held before it
    kv_cache_bytes: int  # at `context` tokens
    kv_cache_layers: int
    weight_bytes: int  # parameters in the module tree (removed sublayers are not in it)
    parameters: int
    batch: int
    context: int
    new_tokens: int


def random_input_ids(vocab_size: int, batch: int, context: int, seed: int = 0, device="cpu") -> torch.Tensor:
    """Seeded random token ids (CPU generator, so every device gets the same prompt)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, context), generator=g).to(device)


def cache_of(output):
    """The cache of a `generate(..., return_dict_in_generate=True)` output (`cache` or `past_key_values`);
    None when the model keeps no attention layer (nothing to cache)."""
    keys = output.keys()
    for name in ("cache", "past_key_values"):
        if name in keys and output[name] is not None:
            return output[name]
    return None


def kv_cache_bytes(cache) -> tuple[int, int]:
    """(layers, bytes) of a transformers cache: the sum of its key and value tensors' bytes."""
    total = 0
    layers = getattr(cache, "layers", None)
    if layers is None:  # legacy caches: parallel lists of tensors
        pairs = list(zip(cache.key_cache, cache.value_cache, strict=True))
    else:
        pairs = [(getattr(layer, "keys", None), getattr(layer, "values", None)) for layer in layers]
    for keys, values in pairs:
        for t in (keys, values):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return len(pairs), total


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _PrefillClock:
    """A logits processor that stamps the time the first logits (the prompt's) reach sampling."""

    def __init__(self, device: torch.device):
        self.device = device
        self.at: float | None = None

    def __call__(self, input_ids, scores):
        if self.at is None:
            _sync(self.device)
            self.at = time.perf_counter()
        return scores


def _generation_config(model, new_tokens: int, return_dict: bool = False):
    from transformers import GenerationConfig

    base = getattr(model, "generation_config", None)
    pad = getattr(base, "pad_token_id", None)
    eos = getattr(base, "eos_token_id", None)
    if pad is None:
        pad = eos[0] if isinstance(eos, list) and eos else eos if eos is not None else 0
    return GenerationConfig(
        do_sample=False,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        pad_token_id=pad,
        eos_token_id=eos,
        return_dict_in_generate=return_dict,
    )


def measure(model, input_ids: torch.Tensor, new_tokens: int) -> SpeedResult:
    """Time prefill and greedy decode of `new_tokens` tokens after `input_ids`; measure the KV cache."""
    from transformers import LogitsProcessorList

    if new_tokens < 2:
        raise FinercutError("--new-tokens must be at least 2 (decode speed needs a token after the first)")
    device = input_ids.device
    batch, context = input_ids.shape
    mask = torch.ones_like(input_ids)
    with torch.inference_mode():
        model.generate(input_ids, attention_mask=mask, generation_config=_generation_config(model, 2))
        kv_out = model.generate(
            input_ids,
            attention_mask=mask,
            generation_config=_generation_config(model, 1, return_dict=True),
        )
        cache = cache_of(kv_out)
        kv_layers, kv_bytes = kv_cache_bytes(cache) if cache is not None else (0, 0)
        del kv_out
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            held = torch.cuda.memory_allocated(device)
        clock = _PrefillClock(device)
        _sync(device)
        start = time.perf_counter()
        out = model.generate(
            input_ids,
            attention_mask=mask,
            generation_config=_generation_config(model, new_tokens),
            logits_processor=LogitsProcessorList([clock]),
        )
        _sync(device)
        end = time.perf_counter()
    sequences = out.sequences if hasattr(out, "sequences") else out
    if tuple(sequences.shape) != (batch, context + new_tokens) or clock.at is None:
        raise FinercutError(
            f"generate() returned {tuple(sequences.shape)} tokens, expected {(batch, context + new_tokens)}"
        )
    peak = torch.cuda.max_memory_allocated(device) - held if device.type == "cuda" else None
    params = list(model.parameters())
    return SpeedResult(
        prefill_tokens_per_s=batch * context / (clock.at - start),
        decode_tokens_per_s=batch * (new_tokens - 1) / (end - clock.at),
        peak_memory_bytes=peak,
        kv_cache_bytes=kv_bytes,
        kv_cache_layers=kv_layers,
        weight_bytes=sum(p.numel() * p.element_size() for p in params),
        parameters=sum(p.numel() for p in params),
        batch=batch,
        context=context,
        new_tokens=new_tokens,
    )


def format_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:,} B" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_rate(v: float) -> str:
    """At least four significant digits, so ratios read off the table agree with the ratio column."""
    decimals = 0 if v >= 1000 else 1 if v >= 100 else 2 if v >= 10 else 3
    return f"{v:,.{decimals}f}"


ROWS = (  # (label, SpeedResult attribute, formatter)
    ("prefill tokens/s", "prefill_tokens_per_s", format_rate),
    ("decode tokens/s", "decode_tokens_per_s", format_rate),
    ("peak memory (generate)", "peak_memory_bytes", format_bytes),
    ("KV cache bytes", "kv_cache_bytes", format_bytes),
    ("KV cache layers", "kv_cache_layers", lambda v: f"{v:,}"),
    ("weights", "weight_bytes", format_bytes),
    ("parameters", "parameters", lambda v: f"{v:,}"),
)


def speed_table(original: SpeedResult, pruned: SpeedResult) -> str:
    """A plain-text table: one row per measure, original / pruned / pruned÷original."""
    rows = [("", "original", "pruned", "pruned/original")]
    for label, attr, fmt in ROWS:
        a, b = getattr(original, attr), getattr(pruned, attr)
        if attr == "kv_cache_bytes":
            label = f"KV cache @ {original.context:,} tokens"
        if a is None or b is None:
            rows.append((label, "n/a", "n/a", "n/a (not measured on CPU)"))
            continue
        ratio = f"{b / a:.2f}x" if a else "n/a"
        rows.append((label, fmt(a), fmt(b), ratio))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [
        "  ".join([r[0].ljust(widths[0])] + [r[i].rjust(widths[i]) for i in (1, 2)] + [r[3]]).rstrip()
        for r in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
