"""Load a folder written by `finercut-tui export` back: `load_pruned` (public) and `load_prunable`.

A ``blocks`` export (or any plain checkpoint) loads with ``from_pretrained``. A ``sublayers`` export is
built from config.json on the meta device, the zero-cost stand-ins are put in place of the removed
sublayers, and the saved weights are loaded strictly (`_load_strict`): the removed weights are never
allocated, and ``generate()`` caches keys/values only for the blocks that keep attention.
`export_info` reads the ``finercut`` section of config.json that says which format a folder is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import torch

from finercut_tui.errors import FinercutError, error_line, is_out_of_memory
from finercut_tui.model.checkpoint import CONFIG_KEY, read_safetensors
from finercut_tui.model.surgery import PrunableModel


class Pruned(NamedTuple):
    """What `load_pruned` returns: unpack as ``model, tokenizer = load_pruned(DIR)``."""

    model: Any  # a transformers PreTrainedModel (…ForCausalLM) with the removed sublayers absent
    tokenizer: Any  # the exported tokenizer, or None when the folder has none


def export_info(path: str | os.PathLike) -> dict[str, Any]:
    """The `finercut` section of an export's config.json ({} for a plain checkpoint)."""
    config_path = Path(path).expanduser() / "config.json"
    if not config_path.is_file():
        raise FinercutError(f"no config.json in {path}: not a model folder (check the path)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise FinercutError(
            f"{config_path} is not valid JSON ({exc}): the export is damaged; export it again"
        ) from exc
    if not isinstance(config, dict):
        raise FinercutError(f"{config_path} is not a model config: the export is damaged; export it again")
    return dict(config.get(CONFIG_KEY) or {})


def load_pruned(
    path: str | os.PathLike,
    *,
    device: str = "cpu",
    dtype: str | torch.dtype | None = None,
    attn_implementation: str | None = None,
) -> Pruned:
    """Load a folder written by `finercut-tui export`: ``model, tokenizer = load_pruned(DIR)``.

    Works for both export formats (and for any plain checkpoint). For a sublayer export the model is
    built from config.json on the meta device, the removed sublayers are replaced by zero-cost
    stand-ins (never allocated), and the saved weights are loaded strictly; ``model.generate()``
    caches keys/values only for blocks that keep attention. No ``trust_remote_code`` is involved.

    device: where to put the weights ("cpu", "cuda", "cuda:1", ...). dtype: "float32", "bfloat16",
    "float16" or a torch dtype (default: as saved). tokenizer is None when the folder has none.
    """
    pm = load_prunable(path, device=device, dtype=dtype, attn_implementation=attn_implementation)
    return Pruned(pm.model, pm.tokenizer)


def load_prunable(
    path: str | os.PathLike,
    *,
    device: str = "cpu",
    dtype: str | torch.dtype | None = None,
    attn_implementation: str | None = None,
) -> PrunableModel:
    """Load an export (either format, or any plain checkpoint) as a PrunableModel with its tokenizer.

    A folder that cannot be read (a missing or truncated shard, a cut config.json, a dtype no torch
    has, weights that disagree with the removal list) ends in one FinercutError that names it."""
    folder = Path(path).expanduser()
    try:
        return _load_prunable(folder, device, dtype, attn_implementation)
    except FinercutError:
        raise
    except Exception as exc:  # noqa: BLE001 - what a damaged folder raises varies by library
        if is_out_of_memory(exc):
            raise
        raise FinercutError(
            f"cannot load {folder}: {error_line(exc, 200)}; the folder is damaged or not a finercut export "
            "(export it again)"
        ) from exc


def _load_prunable(folder: Path, device: str, dtype, attn_implementation: str | None) -> PrunableModel:
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    info = export_info(folder)
    torch_dtype = _torch_dtype(dtype)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if info.get("format") == "sublayers":
        config = AutoConfig.from_pretrained(folder)
        with init_empty_weights():  # parameters on meta: removed weights are never allocated
            model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype or config.dtype, **kwargs)
        pm = PrunableModel(model)
        # stand-ins replace the removed (still meta) modules; those are never materialised, so this
        # model cannot restore them (there are no weights to restore)
        pm.set_removed(info.get("removed") or [])
        _load_strict(model, folder, device, info.get("tied") or {})
        if (folder / "generation_config.json").is_file():
            model.generation_config = GenerationConfig.from_pretrained(folder)
    else:  # a standard checkpoint: whole blocks dropped, or not pruned at all
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch_dtype or "auto", device_map={"": device}, **kwargs
        )
        pm = PrunableModel(model)
    model.eval()
    model.requires_grad_(False)
    pm.tokenizer = _load_tokenizer(folder)
    return pm


def _load_strict(model: torch.nn.Module, folder: Path, device: str, tied: dict[str, str]) -> None:
    """Load the saved tensors into the meta model: every key present, none extra, dtypes as built."""
    state = read_safetensors(folder, device=device)
    for alias, name in tied.items():
        if alias not in state and name in state:
            state[alias] = state[name]
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise FinercutError(
            f"{folder} does not match its config: {len(missing)} missing tensors {missing[:3]}, "
            f"{len(unexpected)} unexpected {unexpected[:3]}; was it written by `finercut-tui export`?"
        )
    for key, tensor in state.items():
        want = expected[key]
        if tensor.shape != want.shape:
            raise FinercutError(
                f"{folder}: tensor {key} has shape {tuple(tensor.shape)}, "
                f"the config builds {tuple(want.shape)}"
            )
        if tensor.is_floating_point() and tensor.dtype != want.dtype:
            state[key] = tensor.to(want.dtype)
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    model.to(device)  # the real (non-persistent) buffers, e.g. rotary frequencies
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise FinercutError(f"{folder}: {len(left)} tensors were not loaded (e.g. {left[0]})")


def _torch_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or dtype == "auto" or isinstance(dtype, torch.dtype):
        return None if dtype == "auto" else dtype
    from finercut_tui.model.loading import DTYPES

    if dtype not in DTYPES:
        raise FinercutError(f"unknown dtype {dtype!r}: use auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _load_tokenizer(folder: Path):
    if not any(
        (folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
    ):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)
