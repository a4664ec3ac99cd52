"""Write a pruned model as a Nemotron-NAS / DeciLM folder (`export --format nemotron-nas`).

vLLM and SGLang serve it with their own ``nemotron_nas`` model code, transformers with the two small
files this package copies next to the weights (`remote_code/`, named in ``auto_map``):

- ``config.json``: the source Llama-family config with ``"architectures": ["DeciLMForCausalLM"]``,
  ``"model_type": "nemotron-nas"`` and one ``block_configs`` entry per kept block, every key written
  (``attention: {no_op, replace_with_linear, n_heads_in_group}``, ``ffn: {no_op, replace_with_linear,
  ffn_mult}``). Blocks that lost both sublayers are dropped and the rest renumbered.
- the weights under the model's own Llama tensor names; removed sublayers and their norms are absent.
  Qwen2's q/k/v biases are written as ``attention_bias`` with a zero ``o_proj`` bias (exact).
- ``ffn_mult`` is chosen so that the readers' rule (`ffn_mult_to_intermediate_size`) gives back
  ``intermediate_size`` exactly; where none does, the export is refused.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from finercut_tui.errors import FinercutError
from finercut_tui.export.remote_code.configuration_finercut_nas import ffn_mult_to_intermediate_size
from finercut_tui.export.result import ExportResult
from finercut_tui.export.serving import kept_blocks, staged_export, write_card
from finercut_tui.model.checkpoint import CONFIG_KEY, check_materialised, clear_stale, write_safetensors
from finercut_tui.model.surgery import PrunableModel

FORMAT = "nemotron-nas"
REMOTE_CODE = Path(__file__).parent / "remote_code"
CONFIG_FILE = "configuration_finercut_nas.py"
MODELING_FILE = "modeling_finercut_nas.py"
AUTO_MAP = {
    "AutoConfig": "configuration_finercut_nas.DeciLMConfig",
    "AutoModelForCausalLM": "modeling_finercut_nas.DeciLMForCausalLM",
}
FAMILIES = ("llama", "mistral", "qwen2")  # Llama 2/3/3.1, SmolLM, Mistral, Qwen2/2.5
OTHER_FORMAT = "finercut"  # the load_pruned / plain-blocks folder, for any family


def refuse_reason(config) -> str | None:
    """Why `config` (a text config) cannot be a Nemotron-NAS folder, or None."""
    mt = getattr(config, "model_type", None)
    name = (getattr(config, "architectures", None) or [mt])[0]
    if mt not in FAMILIES:
        return (
            f"{name} (model_type {mt!r}) cannot be written as Nemotron-NAS (Llama, SmolLM, Mistral and "
            f"Qwen2 can): use --format {OTHER_FORMAT}"
        )
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"{name} uses hidden_act {config.hidden_act!r}, Nemotron-NAS readers need silu: use --format {OTHER_FORMAT}"
    if mt == "mistral" and getattr(config, "sliding_window", None) is not None:
        return (
            f"{name} uses a sliding window ({config.sliding_window}), which Nemotron-NAS cannot express: "
            f"use --format {OTHER_FORMAT}"
        )
    if mt == "qwen2" and getattr(config, "use_sliding_window", False):
        return f"{name} uses sliding-window layers, which Nemotron-NAS cannot express: use --format {OTHER_FORMAT}"
    if config.num_attention_heads % int(getattr(config, "num_key_value_heads", None) or 1):
        return f"{name}: the attention heads are not a multiple of the KV heads: use --format {OTHER_FORMAT}"
    return None


def ffn_mult_for(intermediate_size: int, hidden_size: int) -> float:
    """An `ffn_mult` that every reader turns back into `intermediate_size` exactly, or a one-line refusal."""
    exact = 1.5 * intermediate_size / hidden_size
    candidates = [round(exact, d) for d in range(1, 9)] + [exact]
    for mult in candidates:
        if ffn_mult_to_intermediate_size(mult, hidden_size) == intermediate_size:
            return float(mult)
    raise FinercutError(
        f"intermediate_size {intermediate_size} cannot be written as a Nemotron-NAS ffn_mult (readers "
        f"round int(2 * ffn_mult * {hidden_size} / 3) up to a multiple of 256): use --format {OTHER_FORMAT}"
    )


def block_configs(config, removed: set[str], blocks: Sequence[int]) -> list[dict[str, Any]]:
    """One entry per kept block, every key written (readers index the raw JSON)."""
    heads = int(config.num_attention_heads)
    group = heads // int(getattr(config, "num_key_value_heads", None) or heads)
    mult = ffn_mult_for(int(config.intermediate_size), int(config.hidden_size))
    out = []
    for b in blocks:
        attn_gone, mlp_gone = f"{b}.attn" in removed, f"{b}.mlp" in removed
        out.append(
            {
                "attention": {
                    "no_op": attn_gone,
                    "replace_with_linear": False,
                    "n_heads_in_group": None if attn_gone else group,
                },
                "ffn": {
                    "no_op": mlp_gone,
                    "replace_with_linear": False,
                    "ffn_mult": None if mlp_gone else mult,
                },
            }
        )
    return out


def nas_config(pm: PrunableModel, removed: set[str], blocks: Sequence[int], info: dict[str, Any]) -> dict:
    """config.json of the folder, as a dict."""
    config = copy.deepcopy(pm.config)
    data = config.to_dict()
    for key in ("layer_types", "max_window_layers", "use_sliding_window", "sliding_window", "auto_map"):
        data.pop(key, None)
    bias = pm.config.model_type == "qwen2" or bool(getattr(pm.config, "attention_bias", False))
    data.update(
        architectures=["DeciLMForCausalLM"],
        model_type=FORMAT,
        auto_map=dict(AUTO_MAP),
        num_hidden_layers=len(blocks),
        num_key_value_heads=int(
            getattr(pm.config, "num_key_value_heads", None) or pm.config.num_attention_heads
        ),
        head_dim=int(
            getattr(pm.config, "head_dim", None) or pm.config.hidden_size // pm.config.num_attention_heads
        ),
        attention_bias=bias,
        mlp_bias=bool(getattr(pm.config, "mlp_bias", False)),
        block_configs=block_configs(pm.config, removed, blocks),
        dtype=str(pm.model.dtype).removeprefix("torch."),
    )
    data[CONFIG_KEY] = info
    return data


def nas_state_dict(pm: PrunableModel, blocks: Sequence[int]) -> dict[str, torch.Tensor]:
    """The kept tensors under Llama names, blocks renumbered; Qwen2 gets a zero o_proj bias."""
    new_index = {b: i for i, b in enumerate(blocks)}
    prefix = pm.arch.blocks + "."
    state: dict[str, torch.Tensor] = {}
    for key, tensor in pm.model.state_dict().items():
        if key.startswith(prefix):
            index, rest = key[len(prefix) :].split(".", 1)
            if int(index) not in new_index:
                continue
            key = f"{prefix}{new_index[int(index)]}.{rest}"
        state[key] = tensor
    if pm.config.model_type == "qwen2" and not getattr(pm.config, "attention_bias", False):
        for b in blocks:
            weight = state.get(f"{prefix}{new_index[b]}.self_attn.o_proj.weight")
            if weight is not None:
                state[f"{prefix}{new_index[b]}.self_attn.o_proj.bias"] = weight.new_zeros(weight.shape[0])
    return state


def how_to_load_lines(out_name: str = "DIR") -> list[str]:
    """The card's "How to load" section for this format."""
    return [
        "A Nemotron-NAS (DeciLM) folder: only the kept attention and MLP sublayers are built, and only the "
        "kept attention layers hold a KV cache.",
        "",
        "```bash",
        f"vllm serve {out_name} --trust-remote-code",
        f"python -m sglang.launch_server --model-path {out_name} --trust-remote-code",
        "```",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f'model = AutoModelForCausalLM.from_pretrained("{out_name}", trust_remote_code=True)',
        f'tokenizer = AutoTokenizer.from_pretrained("{out_name}", trust_remote_code=True)',
        "```",
    ]


def vllm_note(removed: set[str], blocks: Sequence[int]) -> str | None:
    """One line when vLLM (<= 0.32) cannot serve the folder: its first layer must have attention."""
    if blocks and f"{blocks[0]}.attn" in removed:
        return (
            "note: the first kept block has no attention; vLLM 0.32 cannot serve that (its residual starts at "
            "the first attention): transformers and llama.cpp (--format gguf) can"
        )
    return None


def write_folder(pm: PrunableModel, out: Path, config: dict, state: dict, max_shard_size: int | str) -> None:
    """Weights, config.json, the two remote-code files, generation config and tokenizer."""
    check_materialised(state)
    out.mkdir(parents=True, exist_ok=True)
    clear_stale(out)
    write_safetensors(state, out, max_shard_size=max_shard_size)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    for name in (CONFIG_FILE, MODELING_FILE):
        shutil.copyfile(REMOTE_CODE / name, out / name)
    if getattr(pm.model, "generation_config", None) is not None:
        pm.model.generation_config.save_pretrained(out)
    if pm.tokenizer is not None:
        pm.tokenizer.save_pretrained(out)


def export_nemotron_nas(
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
    """Write `pm` with `removed` applied to `out_dir` as a Nemotron-NAS folder; `pm`'s state is restored."""
    reason = refuse_reason(pm.config)
    if reason:
        raise FinercutError(reason)
    ffn_mult_for(int(pm.config.intermediate_size), int(pm.config.hidden_size))  # refuse before writing
    with staged_export(pm, out_dir, removed, force) as staged:
        out, gone = staged.out, set(staged.ids)
        blocks = kept_blocks(gone, pm.num_blocks)
        if not blocks:
            raise FinercutError(
                f"every sublayer is removed: there is no model to write; use --format {OTHER_FORMAT}"
            )
        info = {
            "removed": staged.ids,
            "source_model": source_model,
            "session": str(session_path) if session_path is not None else None,
            "step": step,
            "source_num_blocks": pm.num_blocks,
            "format": FORMAT,
            "kept_blocks": blocks,
        }
        write_folder(pm, out, nas_config(pm, gone, blocks, info), nas_state_dict(pm, blocks), max_shard_size)
        result = staged.result(pm, FORMAT, blocks)
        write_card(
            pm,
            result,
            how_to_load_lines(),
            source_model=source_model,
            session=session,
            session_path=session_path,
            step=step,
            order=removed,
        )
        progress(
            f"nemotron-nas: {len(blocks)} blocks ({pm.num_blocks - len(blocks)} dropped whole), "
            f"{result.kept_attention} with attention"
        )
        note = vllm_note(gone, blocks)
        if note:
            progress(note)
        return result
