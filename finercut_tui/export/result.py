"""What an export wrote: read by the command's summary line and by the model card."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class ExportResult:
    out_dir: Path
    format: str  # "blocks" | "sublayers" | "nemotron-nas" | "gguf"
    removed: list[str]  # sublayer ids of the source model, expanded, in model order
    dropped_blocks: list[int]  # source blocks physically dropped ("blocks" format), else []
    params_before: int
    params_after: int
    num_blocks: int  # source model
    kept_attention: int
