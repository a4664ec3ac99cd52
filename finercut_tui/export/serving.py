"""What the serving formats (nemotron-nas, gguf) share: the output folder's life, the kept blocks, the card.

`staged_export` checks `--out` before anything is written, counts parameters, applies the removals
for the writer and restores `pm`'s state afterwards; when the writer fails, a folder it created is
deleted again, so a refusal leaves no partial output.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from finercut_tui.domain.sublayers import expand, parse_id, sort_key
from finercut_tui.export.card import CARD_NAME, model_card
from finercut_tui.export.folder import architecture_name
from finercut_tui.export.result import ExportResult
from finercut_tui.model.checkpoint import check_out_dir, count_parameters
from finercut_tui.model.surgery import PrunableModel


def kept_blocks(removed: set[str], num_blocks: int) -> list[int]:
    """Blocks that keep at least one sublayer (a block without both is dropped)."""
    return [b for b in range(num_blocks) if not {f"{b}.attn", f"{b}.mlp"} <= removed]


@dataclass
class Staged:
    out: Path
    ids: list[str]  # expanded, in model order
    params_before: int
    params_after: int
    kept_attention: int

    def result(self, pm: PrunableModel, fmt: str, blocks: Sequence[int]) -> ExportResult:
        return ExportResult(
            out_dir=self.out,
            format=fmt,
            removed=self.ids,
            dropped_blocks=[b for b in range(pm.num_blocks) if b not in set(blocks)],
            params_before=self.params_before,
            params_after=self.params_after,
            num_blocks=pm.num_blocks,
            kept_attention=self.kept_attention,
        )


@contextmanager
def staged_export(
    pm: PrunableModel, out_dir: str | os.PathLike, removed: Sequence[str], force: bool
) -> Iterator[Staged]:
    """Check `--out`, count, and leave `pm` with the removals applied while the writer runs."""
    ids = sorted(expand(parse_id(s, pm.num_blocks, allow_block=True) for s in removed), key=sort_key)
    out = check_out_dir(out_dir, force)
    created = not out.exists()
    before_state = pm.removed
    try:
        pm.set_removed(())
        params_before = count_parameters(pm.model)
        pm.set_removed(ids)
        staged = Staged(out, ids, params_before, count_parameters(pm.model), len(pm.kept_attention_blocks()))
        yield staged
    except BaseException:
        if created and out.exists():
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        pm.set_removed(before_state)


def write_card(
    pm: PrunableModel,
    result: ExportResult,
    how_to_load: Sequence[str],
    *,
    source_model: str,
    session=None,
    session_path=None,
    step: int | None = None,
    order: Sequence[str] = (),
) -> None:
    """PRUNING.md (`finercut_tui.export.card`) with this format's "How to load" section."""
    card = model_card(
        result,
        source_model=source_model,
        session=session,
        session_path=session_path,
        step=step,
        order=list(order),
        architecture=architecture_name(pm),
        how_to_load=how_to_load,
    )
    (result.out_dir / CARD_NAME).write_text(card, encoding="utf-8")
