"""Write a pruned model to a folder, physically without its removed modules (`export_pruned`).

Two formats, chosen by what was removed (`whole_blocks`):

- ``blocks``: every affected block lost both sublayers. The blocks are dropped and the rest renumbered:
  a standard checkpoint with fewer ``num_hidden_layers`` (per-layer config lists such as ``layer_types``
  cut to match) that plain ``AutoModelForCausalLM.from_pretrained(DIR)`` loads.
- ``sublayers``: single attention / MLP sublayers removed. The weights of the kept modules are written
  under the model's own module names, and ``config.json`` gets a ``finercut`` section listing the removed
  ids; `finercut_tui.model.load_pruned` loads it back.

Both write the tokenizer, the generation config and a PRUNING.md model card (`finercut_tui.export.card`).
The weight files and the output folder are handled by `finercut_tui.model.checkpoint`.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from finercut_tui.domain.sublayers import KINDS, expand, parse_id, sort_key, split_id
from finercut_tui.errors import FinercutError
from finercut_tui.export.card import CARD_NAME, model_card
from finercut_tui.export.result import ExportResult
from finercut_tui.model.checkpoint import (
    CONFIG_KEY,
    check_materialised,
    check_out_dir,
    clear_stale,
    count_parameters,
    write_safetensors,
)
from finercut_tui.model.surgery import PrunableModel

# config attributes that are lists but never one entry per layer, even when their length happens to be L
_NOT_PER_LAYER = frozenset({"architectures", "bad_words_ids", "suppress_tokens", "begin_suppress_tokens"})


def whole_blocks(removed: Iterable[str]) -> list[int] | None:
    """The blocks of `removed` when it is exactly a union of whole blocks, else None."""
    ids = set(expand(removed))
    blocks = sorted({split_id(sid)[0] for sid in ids})
    if all(f"{b}.{kind}" in ids for b in blocks for kind in KINDS):
        return blocks
    return None


def export_pruned(
    pm: PrunableModel,
    out_dir: str | os.PathLike,
    removed: Sequence[str],
    *,
    source_model: str,
    session=None,
    session_path: str | os.PathLike | None = None,
    step: int | None = None,
    force: bool = False,
    healing=None,
    max_shard_size: int | str = "5GB",
    progress: Callable[[str], None] = print,
) -> ExportResult:
    """Write `pm` with `removed` (ids, `.block` allowed) applied to `out_dir`, without the removed modules.

    `session` (a `finercut_tui.session.Session`) feeds the model card (method, evals) and `session_path`
    / `step` are recorded in config.json. `healing` (a `HealRecord`: `pm` holds the merged weights) adds
    a Healing section to the card and a `healed` entry to config.json. `pm`'s own removal state is
    restored afterwards.
    """
    out = check_out_dir(out_dir, force)
    ids = sorted(expand(parse_id(s, pm.num_blocks, allow_block=True) for s in removed), key=sort_key)
    before_state = pm.removed
    try:
        pm.set_removed(())
        params_before = count_parameters(pm.model)
        pm.set_removed(ids)
        out.mkdir(parents=True, exist_ok=True)
        clear_stale(out)
        info = export_info(pm, ids, source_model, session_path, step, healing)
        fmt, dropped, params_after = _write_weights(pm, out, ids, info, max_shard_size, progress)
        if pm.tokenizer is not None:
            pm.tokenizer.save_pretrained(out)
        result = ExportResult(
            out_dir=out,
            format=fmt,
            removed=ids,
            dropped_blocks=dropped,
            params_before=params_before,
            params_after=params_after,
            num_blocks=pm.num_blocks,
            kept_attention=len(pm.kept_attention_blocks()),
        )
        card = model_card(
            result,
            source_model=source_model,
            session=session,
            session_path=session_path,
            step=step,
            order=list(removed),
            architecture=architecture_name(pm),
            healing=healing,
        )
        (out / CARD_NAME).write_text(card, encoding="utf-8")
        return result
    finally:
        pm.set_removed(before_state)


def _write_weights(
    pm: PrunableModel,
    out: Path,
    ids: list[str],
    info: dict[str, Any],
    max_shard_size: int | str,
    progress: Callable[[str], None],
) -> tuple[str, list[int], int]:
    """Pick the format and write weights + config; return (format, dropped blocks, parameters after)."""
    blocks = whole_blocks(ids)
    if blocks is not None and len(blocks) < pm.num_blocks:
        progress(
            f"dropping {len(blocks)} whole blocks: a standard checkpoint with "
            f"{pm.num_blocks - len(blocks)} layers"
        )
        return "blocks", blocks, _save_blocks(pm, out, blocks, info, max_shard_size)
    # single sublayers (or every block: a zero-layer config would not build)
    progress(f"removing {len(ids)} sublayers: weights without them + the removal list in config.json")
    return "sublayers", [], _save_sublayers(pm, out, info, max_shard_size)


def export_info(
    pm: PrunableModel, ids: list[str], source_model: str, session_path, step, healing
) -> dict[str, Any]:
    """config.json's `finercut` section: what was removed from which model, by which session step."""
    info: dict[str, Any] = {
        "removed": ids,
        "source_model": source_model,
        "session": str(session_path) if session_path is not None else None,
        "step": step,
        "source_num_blocks": pm.num_blocks,
    }
    if healing is not None:
        info["healed"] = healed_entry(healing)
    return info


def healed_entry(heal) -> dict[str, Any]:
    """config.json's `healed` entry for a `HealRecord` (loaders ignore it)."""
    return {
        "lora_rank": heal.lora.get("rank"),
        "lora_alpha": heal.lora.get("alpha"),
        "steps": heal.steps,
        "data": heal.data.get("source"),
        "data_fingerprint": heal.data.get("fingerprint"),
        "adapter": Path(heal.adapter).name if heal.adapter else "adapter",
    }


def architecture_name(pm: PrunableModel) -> str:
    return (getattr(pm.model.config, "architectures", None) or [type(pm.model).__name__])[0]


def _cut_per_layer_lists(config, kept: Sequence[int], num_blocks: int) -> list[str]:
    """Cut every per-layer list of the text config to the kept blocks; return the keys cut."""
    text = config.get_text_config(decoder=True)
    cut = []
    for key, value in list(vars(text).items()):
        if key.startswith("_") or key in _NOT_PER_LAYER or not isinstance(value, (list, tuple)):
            continue
        if len(value) == num_blocks:
            setattr(text, key, type(value)(value[b] for b in kept))
            cut.append(key)
    text.num_hidden_layers = len(kept)
    return cut


def _save_blocks(
    pm: PrunableModel, out: Path, blocks: list[int], info: dict[str, Any], max_shard_size: int | str
) -> int:
    """Build the smaller architecture from config, hand it the kept tensors (no copy), save_pretrained."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    kept = [b for b in range(pm.num_blocks) if b not in set(blocks)]
    new_index = {b: i for i, b in enumerate(kept)}
    config = copy.deepcopy(pm.model.config)
    _cut_per_layer_lists(config, kept, pm.num_blocks)
    setattr(config, CONFIG_KEY, {**info, "format": "blocks", "dropped_blocks": blocks})

    prefix = pm.arch.blocks + "."
    state = {}
    for key, tensor in pm.model.state_dict().items():
        if key.startswith(prefix):
            index, rest = key[len(prefix) :].split(".", 1)
            if int(index) not in new_index:
                continue  # a dropped block (its sublayers are already out of the tree)
            key = f"{prefix}{new_index[int(index)]}.{rest}"
        state[key] = tensor
    check_materialised(state)
    # meta parameters (no memory), real buffers: a fresh build numbers attention layer_idx 0..L'-1
    with init_empty_weights():
        fresh = AutoModelForCausalLM.from_config(config, dtype=pm.model.dtype)
    result = fresh.load_state_dict(state, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise FinercutError(
            f"internal error: the {len(kept)}-layer model does not match the kept weights "
            f"(missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]})"
        )
    fresh.tie_weights()
    fresh.generation_config = copy.deepcopy(pm.model.generation_config)
    fresh.save_pretrained(out, max_shard_size=max_shard_size)
    return count_parameters(fresh)


def _save_sublayers(pm: PrunableModel, out: Path, info: dict[str, Any], max_shard_size: int | str) -> int:
    """Write the kept modules' weights under their own names, and config.json with the removal list."""
    state = pm.model.state_dict()  # the stand-ins hold no tensors: removed modules are not in it
    check_materialised(state)
    tied = write_safetensors(state, out, max_shard_size=max_shard_size)
    config = copy.deepcopy(pm.model.config)
    config.architectures = [architecture_name(pm)]
    config.dtype = pm.model.dtype
    setattr(config, CONFIG_KEY, {**info, "format": "sublayers", "tied": tied})
    config.save_pretrained(out)
    if getattr(pm.model, "generation_config", None) is not None:
        pm.model.generation_config.save_pretrained(out)
    return count_parameters(pm.model)
