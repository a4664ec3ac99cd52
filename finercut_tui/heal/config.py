"""What a heal trains on and how: `DataOptions` and `HealConfig`, each field an option of `heal`.

Torch-free, so that building the command line imports no torch (`show` and `replay` load none).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from finercut_tui.domain.options import option
from finercut_tui.errors import FinercutError
from finercut_tui.heal.data import DEFAULT_DATA

TRAINING = "LoRA and training"


def _knob(default: Any, help: str, kind: type | None = None, **kwargs: Any) -> Any:  # noqa: A002
    """A HealConfig field declared as a `heal` option (its default shown in --help from here)."""
    kind = kind or type(default)
    return option(default, group=TRAINING, help=help, type=kind if kind is not bool else None, **kwargs)


@dataclass(frozen=True)
class HealConfig:
    """How LoRA trains; every field is an option of `heal` (`--lora-rank` for `lora_rank`)."""

    lora_rank: int = _knob(8, "LoRA rank")
    lora_alpha: float = _knob(16.0, "LoRA alpha")
    lora_dropout: float = _knob(0.05, "LoRA dropout")
    lr: float = _knob(1e-4, "peak learning rate")
    # optimizer steps; None: `epochs` passes over the examples
    steps: int | None = _knob(None, "optimizer steps", int, exclusive="length")
    epochs: float = _knob(1.0, "passes over the data", exclusive="length")
    batch_size: int = _knob(4, "examples per micro-batch")
    grad_accum: int = _knob(1, "micro-batches per optimizer step")
    seq_len: int = _knob(256, "max tokens per example / text row")
    warmup_steps: int | None = _knob(None, "linear warm-up (default 5% of steps)", int)  # None: 5%
    weight_decay: float = _knob(0.0, "AdamW weight decay")
    seed: int = _knob(0, "seed for the LoRA init, data order and dropout")
    save_every: int = _knob(100, "write a resumable checkpoint every N steps")
    gradient_checkpointing: bool = _knob(
        False, "recompute activations: less memory, slower", action="store_true"
    )

    def check(self) -> None:
        for name in ("lora_rank", "batch_size", "grad_accum", "seq_len", "save_every"):
            if getattr(self, name) < 1:
                raise FinercutError(f"--{name.replace('_', '-')} must be at least 1")
        if self.steps is not None and self.steps < 1:
            raise FinercutError("--steps must be at least 1")
        if not self.epochs > 0:
            raise FinercutError("--epochs must be > 0")
        if not self.lr > 0:
            raise FinercutError("--lr must be > 0")
        if not 0 <= self.lora_dropout < 1:
            raise FinercutError("--lora-dropout must be in [0, 1)")

    def total_steps(self, examples: int) -> int:
        if self.steps is not None:
            return self.steps
        return max(1, math.ceil(self.epochs * examples / (self.batch_size * self.grad_accum)))

    def warmup(self, total: int) -> int:
        return self.warmup_steps if self.warmup_steps is not None else int(0.05 * total)


@dataclass(frozen=True)
class DataOptions:
    """What `heal` trains on; every field is an option of `heal`."""

    data: str = option(
        DEFAULT_DATA,
        help="hub data set name (default {default}), a local .jsonl (instruction/input/output or text), "
        "a .txt, or pydoc (the first half of Python's reference topics, offline)",
    )
    data_split: str = option("train", help="split of a hub data set")
    max_examples: int | None = option(None, type=int, help="train on the first N examples only")
