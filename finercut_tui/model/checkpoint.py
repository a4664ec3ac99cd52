"""Checkpoint files: safetensors written and read in the transformers layout, and the output folder.

- `write_safetensors` / `read_safetensors`: one ``model.safetensors`` or shards plus
  ``model.safetensors.index.json``; tied weights are written once and their aliases returned.
- `check_out_dir` (refuse a file or a non-empty folder), `clear_stale` (the weight files of an
  earlier export that ``--force`` replaces), `check_materialised` (no offloaded tensors), and
  `count_parameters`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from finercut_tui.errors import FinercutError

CONFIG_KEY = "finercut"  # the config.json section an export adds

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
# files an earlier export may have left that --force replaces (anything else in the folder is kept)
_STALE_PATTERNS = (
    "*.safetensors",
    "*.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
)


def count_parameters(model: torch.nn.Module) -> int:
    """Parameters in the module tree (tied weights once; removed sublayers are not in the tree)."""
    return sum(p.numel() for p in model.parameters())


def check_out_dir(out_dir: str | os.PathLike, force: bool) -> Path:
    """Refuse a file, or a non-empty folder unless `force`; return the path."""
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise FinercutError(f"--out {out} is a file, not a folder: pick a folder path")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise FinercutError(
            f"output folder {out} is not empty: pick a new --out or pass --force to overwrite the export in it"
        )
    return out


def clear_stale(out: Path) -> None:
    """Delete the weight files an earlier export may have left in `out` (nothing else)."""
    for pattern in _STALE_PATTERNS:
        for path in out.glob(pattern):
            path.unlink()


def check_materialised(state: dict[str, torch.Tensor]) -> None:
    """Refuse a state dict with tensors on the meta device (offloaded, not in memory)."""
    offloaded = [k for k, v in state.items() if v.is_meta]
    if offloaded:
        raise FinercutError(
            f"{len(offloaded)} tensors (e.g. {offloaded[0]}) are offloaded, not in memory: "
            "export on a machine that holds the whole model (e.g. --device cpu)"
        )


def _dedupe_shared(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Keep one name per tensor (tied weights share one); return (tensors, {alias: kept name})."""
    seen: dict[tuple, str] = {}
    storages: set[tuple] = set()
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    for key, tensor in state.items():
        if tensor.numel() == 0:  # empty tensors may all report data_ptr 0: never aliases
            tensors[key] = tensor
            continue
        ident = (tensor.device, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tensor.stride())
        if ident in seen:
            aliases[key] = seen[ident]
            continue
        seen[ident] = key
        storage = (tensor.device, tensor.untyped_storage().data_ptr())
        # a view that shares storage with another tensor without being it: save a copy of its own
        tensors[key] = tensor.clone() if storage in storages else tensor
        storages.add(storage)
    return tensors, aliases


def write_safetensors(
    state: dict[str, torch.Tensor], out: Path, max_shard_size: int | str = "5GB"
) -> dict[str, str]:
    """Write `state` as (sharded) safetensors in the transformers layout; return the tied aliases dropped."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    tensors, aliases = _dedupe_shared(state)
    split = split_torch_state_dict_into_shards(
        tensors,
        filename_pattern=WEIGHTS_NAME.replace(".safetensors", "{suffix}.safetensors"),
        max_shard_size=max_shard_size,
    )
    for filename, keys in split.filename_to_tensors.items():
        shard = {k: tensors[k].detach().to("cpu").contiguous() for k in keys}
        save_file(shard, str(out / filename), metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": dict(split.metadata), "weight_map": dict(split.tensor_to_filename)}
        (out / WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return aliases


def read_safetensors(folder: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor of a (sharded) safetensors checkpoint folder."""
    from safetensors.torch import load_file

    index = folder / WEIGHTS_INDEX_NAME
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / WEIGHTS_NAME).is_file():
        files = [WEIGHTS_NAME]
    else:
        raise FinercutError(f"no {WEIGHTS_NAME} (or {WEIGHTS_INDEX_NAME}) in {folder}: not a finercut export")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(str(folder / name), device=device))
    return state
