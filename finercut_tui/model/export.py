"""Write a pruned model to a folder, physically without its removed modules, and load it back.

Two formats, chosen by what was removed:

- ``blocks``: every affected block lost both sublayers. The blocks are dropped and the rest renumbered:
  a standard checkpoint with fewer ``num_hidden_layers`` (per-layer config lists such as ``layer_types``
  cut to match) that plain ``AutoModelForCausalLM.from_pretrained(DIR)`` loads.
- ``sublayers``: single attention / MLP sublayers removed. The weights of the kept modules are written
  under the model's own module names, and ``config.json`` gets a ``finercut`` section listing the removed
  ids. ``load_pruned(DIR)`` builds the architecture on the meta device, puts the zero-cost stand-ins in
  place of the removed sublayers, and loads the weights strictly: the removed weights are never
  allocated, and ``generate()`` caches keys/values only for the blocks that keep attention.

Both write the tokenizer, the generation config and a PRUNING.md model card.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from finercut_tui.domain.evals import describe_eval, fmt_value, retained_text
from finercut_tui.errors import FinercutError
from finercut_tui.model.sublayers import KINDS, expand, parse_id, sort_key, split_id
from finercut_tui.model.surgery import PrunableModel

CONFIG_KEY = "finercut"  # the config.json section an export adds
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
CARD_NAME = "PRUNING.md"
# config attributes that are lists but never one entry per layer, even when their length happens to be L
_NOT_PER_LAYER = frozenset({"architectures", "bad_words_ids", "suppress_tokens", "begin_suppress_tokens"})
# files an earlier export may have left that --force replaces (anything else in the folder is kept)
_STALE_PATTERNS = (
    "*.safetensors",
    "*.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
)


@dataclass
class ExportResult:
    out_dir: Path
    format: str  # "blocks" | "sublayers"
    removed: list[str]  # sublayer ids of the source model, expanded, in model order
    dropped_blocks: list[int]  # source blocks physically dropped ("blocks" format), else []
    params_before: int
    params_after: int
    num_blocks: int  # source model
    kept_attention: int


class Pruned(NamedTuple):
    """What `load_pruned` returns: unpack as ``model, tokenizer = load_pruned(DIR)``."""

    model: Any  # a transformers PreTrainedModel (…ForCausalLM) with the removed sublayers absent
    tokenizer: Any  # the exported tokenizer, or None when the folder has none


# -- helpers ---------------------------------------------------------------------------------------
def whole_blocks(removed: Iterable[str]) -> list[int] | None:
    """The blocks of `removed` when it is exactly a union of whole blocks, else None."""
    ids = set(expand(removed))
    blocks = sorted({split_id(sid)[0] for sid in ids})
    if all(f"{b}.{kind}" in ids for b in blocks for kind in KINDS):
        return blocks
    return None


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


def _clear_stale(out: Path) -> None:
    for pattern in _STALE_PATTERNS:
        for path in out.glob(pattern):
            path.unlink()


def _check_materialised(state: dict[str, torch.Tensor]) -> None:
    offloaded = [k for k, v in state.items() if v.is_meta]
    if offloaded:
        raise FinercutError(
            f"{len(offloaded)} tensors (e.g. {offloaded[0]}) are offloaded, not in memory: "
            "export on a machine that holds the whole model (e.g. --device cpu)"
        )


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


# -- export ----------------------------------------------------------------------------------------
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
    max_shard_size: int | str = "5GB",
    progress: Callable[[str], None] = print,
) -> ExportResult:
    """Write `pm` with `removed` (ids, `.block` allowed) applied to `out_dir`, without the removed modules.

    `session` (a `finercut_tui.session.Session`) feeds the model card (method, evals) and `session_path`
    / `step` are recorded in config.json. `pm`'s own removal state is restored afterwards.
    """
    out = check_out_dir(out_dir, force)
    ids = sorted(expand(parse_id(s, pm.num_blocks, allow_block=True) for s in removed), key=sort_key)
    before_state = pm.removed
    try:
        pm.set_removed(())
        params_before = count_parameters(pm.model)
        pm.set_removed(ids)
        out.mkdir(parents=True, exist_ok=True)
        _clear_stale(out)
        blocks = whole_blocks(ids)
        info: dict[str, Any] = {
            "removed": ids,
            "source_model": source_model,
            "session": str(session_path) if session_path is not None else None,
            "step": step,
            "source_num_blocks": pm.num_blocks,
        }
        if blocks is not None and len(blocks) < pm.num_blocks:
            progress(
                f"dropping {len(blocks)} whole blocks: a standard checkpoint with "
                f"{pm.num_blocks - len(blocks)} layers"
            )
            params_after = _save_blocks(pm, out, blocks, info, max_shard_size)
            fmt, dropped = "blocks", blocks
        else:  # single sublayers (or every block: a zero-layer config would not build)
            progress(f"removing {len(ids)} sublayers: weights without them + the removal list in config.json")
            params_after = _save_sublayers(pm, out, info, max_shard_size)
            fmt, dropped = "sublayers", []
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
        (out / CARD_NAME).write_text(
            model_card(
                result,
                source_model=source_model,
                session=session,
                session_path=session_path,
                step=step,
                order=list(removed),
                architecture=_architecture_name(pm),
            ),
            encoding="utf-8",
        )
        return result
    finally:
        pm.set_removed(before_state)


def _architecture_name(pm: PrunableModel) -> str:
    return (getattr(pm.model.config, "architectures", None) or [type(pm.model).__name__])[0]


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
    _check_materialised(state)
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
    state = pm.model.state_dict()  # the stand-ins hold no tensors: removed modules are not in it
    _check_materialised(state)
    tied = write_safetensors(state, out, max_shard_size=max_shard_size)
    config = copy.deepcopy(pm.model.config)
    config.architectures = [_architecture_name(pm)]
    config.dtype = pm.model.dtype
    setattr(config, CONFIG_KEY, {**info, "format": "sublayers", "tied": tied})
    config.save_pretrained(out)
    if getattr(pm.model, "generation_config", None) is not None:
        pm.model.generation_config.save_pretrained(out)
    return count_parameters(pm.model)


# -- model card ------------------------------------------------------------------------------------
def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        out: list[tuple[str, Any]] = []
        for k, v in value.items():
            out.extend(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return [(prefix, value)]


def model_card(
    result: ExportResult,
    *,
    source_model: str,
    architecture: str,
    session=None,
    session_path=None,
    step: int | None = None,
    order: Sequence[str] = (),
) -> str:
    """PRUNING.md: what was removed from which model, how it was chosen, what it cost and saved."""
    L = result.num_blocks
    ids = set(result.removed)
    attn = sorted((s for s in ids if s.endswith(".attn")), key=sort_key)
    mlp = sorted((s for s in ids if s.endswith(".mlp")), key=sort_key)
    both = [b for b in range(L) if f"{b}.attn" in ids and f"{b}.mlp" in ids]
    saved = result.params_before - result.params_after
    lines = [
        "# Pruned with finercut-tui",
        "",
        f"- source model: `{source_model}` ({architecture}, {L} blocks, {2 * L} sublayers)",
    ]
    if session_path is not None:
        lines.append(
            f"- session: `{session_path}`" + (f", step {step} of {len(session.steps)}" if session else "")
        )
    if session is not None:
        method = ", ".join(f"{k}={fmt_value(v)}" for k, v in _flatten(session.method.to_dict()))
        lines.append(f"- method: {method}")
    lines += ["", "## How to load", ""]
    if result.format == "blocks":
        lines += [
            f"Only whole blocks were removed, so this is a standard checkpoint with {L - len(result.dropped_blocks)}"
            f" layers (source blocks {', '.join(map(str, result.dropped_blocks))} dropped, the rest renumbered):",
            "",
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "model = AutoModelForCausalLM.from_pretrained(DIR)",
            "tokenizer = AutoTokenizer.from_pretrained(DIR)",
            "```",
        ]
    else:
        lines += [
            "Single sublayers were removed: the weights here lack them, and config.json lists them under "
            "`finercut.removed`. Load with finercut-tui (plain `from_pretrained` would re-create the removed "
            "modules with random weights):",
            "",
            "```python",
            "import finercut_tui",
            "model, tokenizer = finercut_tui.load_pruned(DIR)",
            "```",
        ]
    lines += [
        "",
        "## Removed",
        "",
        "| kind | removed | of |",
        "|---|---:|---:|",
        f"| attention sublayers | {len(attn)} | {L} |",
        f"| MLP sublayers | {len(mlp)} | {L} |",
        f"| whole blocks (both sublayers) | {len(both)} | {L} |",
        f"| all sublayers | {len(ids)} ({100 * len(ids) / (2 * L):.1f}%) | {2 * L} |",
        "",
        f"In removal order: {', '.join(order) if order else '(none)'}",
        "",
        f"Attention: {', '.join(attn) or '(none)'}",
        "",
        f"MLP: {', '.join(mlp) or '(none)'}",
        "",
        "## Parameters",
        "",
        f"- before: {result.params_before:,}",
        f"- after: {result.params_after:,} ({100 * result.params_after / result.params_before:.1f}%; "
        f"{saved:,} removed)",
        "",
        "## KV cache",
        "",
        f"Attention is kept in {result.kept_attention} of {L} blocks, so generation caches keys and values "
        f"for {result.kept_attention} layers: {100 * result.kept_attention / L:.1f}% of the original cache "
        "at any context length (`finercut-tui speed` measures it).",
    ]
    evals = list(getattr(session, "evals", None) or [])
    lines += ["", "## Evals recorded in the session", ""]
    lines += [f"- step {e.step}: {describe_eval(e)}; retained {retained_text(e)}" for e in evals] or [
        "(none recorded)"
    ]
    return "\n".join(lines) + "\n"


# -- load ------------------------------------------------------------------------------------------
def export_info(path: str | os.PathLike) -> dict[str, Any]:
    """The `finercut` section of an export's config.json ({} for a plain checkpoint)."""
    config_path = Path(path).expanduser() / "config.json"
    if not config_path.is_file():
        raise FinercutError(f"no config.json in {path}: not a model folder (check the path)")
    return dict(json.loads(config_path.read_text(encoding="utf-8")).get(CONFIG_KEY) or {})


def load_prunable(
    path: str | os.PathLike,
    *,
    device: str = "cpu",
    dtype: str | torch.dtype | None = None,
    attn_implementation: str | None = None,
) -> PrunableModel:
    """Load an export (either format, or any plain checkpoint) as a PrunableModel with its tokenizer."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    folder = Path(path).expanduser()
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
