"""Write a pruned model as one GGUF file for llama.cpp and ollama (`export --format gguf`).

- Single sublayers removed: architecture ``deci`` with per-layer ``head_count``, ``head_count_kv`` and
  ``feed_forward_length`` arrays (0 = absent); removed tensors are absent.
- Whole blocks only (or nothing): the plain ``llama`` (``qwen2``) architecture with fewer layers.

Blocks that lost both sublayers are dropped and the rest renumbered. Q and K are permuted the way
llama.cpp's converter does for the Llama rope layout, Llama-3 rope scaling becomes a ``rope_freqs``
tensor, and the tokenizer (with its chat template) goes into the metadata. An ollama ``Modelfile``
is written next to the file.

llama.cpp's ``deci`` code has three limits, each worked around exactly:

- a layer that keeps attention but has ``n_ff == 0`` drops that attention's output, and an FFN-free
  last layer aborts decoding: an FFN-free layer that keeps attention gets a stand-in MLP of width 32
  whose weights are all zero (its output is exactly zero);
- the head size is read from layer 0's head count, so a first layer without attention fails to load:
  it gets a stand-in "linear attention" (``head_count_kv`` 0, no KV cache) with a zero output
  projection.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from finercut_tui.domain.sublayers import expand
from finercut_tui.errors import FinercutError
from finercut_tui.export.gguf_vocab import write_tokenizer
from finercut_tui.export.result import ExportResult
from finercut_tui.export.serving import kept_blocks, staged_export, write_card
from finercut_tui.model.checkpoint import check_materialised
from finercut_tui.model.surgery import PrunableModel

FORMAT = "gguf"
OUTTYPES = ("f32", "f16", "bf16", "q8_0")
DEFAULT_OUTTYPE = "f16"
FAMILIES = ("llama", "mistral", "qwen2")
STAND_IN_FF = 32  # the stand-in MLP's width: one q8_0 block
MODELFILE = "Modelfile"


@dataclass(frozen=True)
class LayerPlan:
    source: int  # block of the source model
    attention: bool
    ffn: bool  # the source block keeps its MLP
    stand_in_ffn: bool  # a zero MLP written so llama.cpp keeps the attention output
    stand_in_linear: bool = False  # a zero "linear attention" so llama.cpp reads the head size


def check_outtype(outtype: str | None) -> str:
    outtype = (outtype or DEFAULT_OUTTYPE).lower()
    if outtype not in OUTTYPES:
        raise FinercutError(f"unknown --outtype {outtype!r} for gguf: pick one of {', '.join(OUTTYPES)}")
    return outtype


def refuse_reason(config) -> str | None:
    mt = getattr(config, "model_type", None)
    name = (getattr(config, "architectures", None) or [mt])[0]
    if mt not in FAMILIES:
        return f"{name} (model_type {mt!r}) cannot be written as GGUF here (Llama, SmolLM, Mistral and Qwen2 can): use --format finercut"
    if getattr(config, "hidden_act", "silu") != "silu":
        return (
            f"{name} uses hidden_act {config.hidden_act!r}; the GGUF writer needs silu: use --format finercut"
        )
    if mt == "mistral" and getattr(config, "sliding_window", None) is not None:
        return f"{name} uses a sliding window ({config.sliding_window}), which this GGUF writer does not write: use --format finercut"
    if mt == "qwen2" and getattr(config, "use_sliding_window", False):
        return (
            f"{name} uses sliding-window layers, which this GGUF writer does not write: use --format finercut"
        )
    if getattr(config, "mlp_bias", False):
        return f"{name} has MLP biases, which llama.cpp's deci graph does not read: use --format finercut"
    rope = _rope(config)
    if rope.get("rope_type", "default") not in ("default", "llama3", "linear"):
        return f"{name} uses {rope.get('rope_type')!r} rope scaling, which this GGUF writer does not write: use --format finercut"
    return None


def _rope(config) -> dict:
    rope = getattr(config, "rope_parameters", None) or {}
    if "full_attention" in rope:
        rope = rope["full_attention"]
    rope = dict(rope)
    if "rope_theta" not in rope:
        rope["rope_theta"] = float(getattr(config, "rope_theta", 10000.0))
    legacy = getattr(config, "rope_scaling", None)
    if legacy and "rope_type" not in rope:
        rope.update(legacy)
    return rope


def plan_layers(removed: set[str], num_blocks: int) -> list[LayerPlan]:
    plan = [
        LayerPlan(
            source=b,
            attention=f"{b}.attn" not in removed,
            ffn=f"{b}.mlp" not in removed,
            stand_in_ffn=f"{b}.mlp" in removed and f"{b}.attn" not in removed,
        )
        for b in kept_blocks(removed, num_blocks)
    ]
    if plan and not plan[0].attention:
        first = plan[0]
        plan[0] = LayerPlan(first.source, False, first.ffn, False, stand_in_linear=True)
    return plan


def permute(weights: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF's rotate-half Q/K rows to llama.cpp's interleaved rope layout (as convert_hf_to_gguf.py)."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def llama3_rope_factors(rope: dict, dim: int) -> np.ndarray:
    """The `rope_freqs` tensor for Llama-3 rope scaling (as convert_hf_to_gguf.py writes it)."""
    base = rope.get("rope_theta", 10000.0)
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor = rope.get("factor", 8.0)
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old = rope.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old / low, old / high
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def _qtype(name: str, array: np.ndarray, outtype: str):
    from gguf import GGMLQuantizationType as Q

    if array.ndim < 2 or outtype == "f32" or name.endswith("_norm.weight") or name == "rope_freqs.weight":
        return Q.F32
    if outtype == "f16":
        return Q.F16
    if outtype == "bf16":
        return Q.BF16
    return Q.Q8_0 if array.shape[-1] % 32 == 0 else Q.F16


def _file_type(outtype: str):
    from gguf import LlamaFileType as F

    return {"f32": F.ALL_F32, "f16": F.MOSTLY_F16, "bf16": F.MOSTLY_BF16, "q8_0": F.MOSTLY_Q8_0}[outtype]


# -- tensors ------------------------------------------------------------------------------------------
def gguf_tensors(pm: PrunableModel, plan: Sequence[LayerPlan], arch: str, outtype: str):
    """(name, numpy array) in llama.cpp's layout for every tensor of the file."""
    cfg = pm.config
    state = pm.model.state_dict()
    check_materialised(state)
    H = int(cfg.hidden_size)
    n_head = int(cfg.num_attention_heads)
    n_kv = int(getattr(cfg, "num_key_value_heads", None) or n_head)
    head_dim = int(getattr(cfg, "head_dim", None) or H // n_head)
    permute_qk = arch != "qwen2"  # qwen2 uses NEOX rope in llama.cpp: HF's layout as is
    p = pm.arch.blocks + "."

    def np32(t: torch.Tensor) -> np.ndarray:
        return t.detach().to("cpu", torch.float32).contiguous().numpy()

    yield "token_embd.weight", np32(state["model.embed_tokens.weight"])
    yield "output_norm.weight", np32(state["model.norm.weight"])
    tied = getattr(pm.model.config, "tie_word_embeddings", False) or (
        state["lm_head.weight"].data_ptr() == state["model.embed_tokens.weight"].data_ptr()
    )
    if not tied:
        yield "output.weight", np32(state["lm_head.weight"])
    rope = _rope(cfg)
    if rope.get("rope_type") == "llama3":
        yield "rope_freqs.weight", llama3_rope_factors(rope, head_dim)
    for i, layer in enumerate(plan):
        src = f"{p}{layer.source}."
        blk = f"blk.{i}."
        if layer.attention:
            yield blk + "attn_norm.weight", np32(state[src + "input_layernorm.weight"])
            q, k = state[src + "self_attn.q_proj.weight"], state[src + "self_attn.k_proj.weight"]
            yield blk + "attn_q.weight", np32(permute(q, n_head) if permute_qk else q)
            yield blk + "attn_k.weight", np32(permute(k, n_kv) if permute_qk else k)
            yield blk + "attn_v.weight", np32(state[src + "self_attn.v_proj.weight"])
            yield blk + "attn_output.weight", np32(state[src + "self_attn.o_proj.weight"])
            for proj, heads in (("q", n_head), ("k", n_kv), ("v", None)):
                bias = state.get(src + f"self_attn.{proj}_proj.bias")
                if bias is not None:
                    yield (
                        blk + f"attn_{proj}.bias",
                        np32(permute(bias, heads) if permute_qk and heads else bias),
                    )
            bias = state.get(src + "self_attn.o_proj.bias")
            if bias is not None:
                yield blk + "attn_output.bias", np32(bias)
        elif layer.stand_in_linear:
            yield blk + "attn_norm.weight", np.ones(H, dtype=np.float32)
            yield blk + "attn_output.weight", np.zeros((H, H), dtype=np.float32)
        if layer.ffn:
            yield blk + "ffn_norm.weight", np32(state[src + "post_attention_layernorm.weight"])
            yield blk + "ffn_gate.weight", np32(state[src + "mlp.gate_proj.weight"])
            yield blk + "ffn_up.weight", np32(state[src + "mlp.up_proj.weight"])
            yield blk + "ffn_down.weight", np32(state[src + "mlp.down_proj.weight"])
        elif layer.stand_in_ffn:
            yield blk + "ffn_norm.weight", np.ones(H, dtype=np.float32)
            yield blk + "ffn_gate.weight", np.zeros((STAND_IN_FF, H), dtype=np.float32)
            yield blk + "ffn_up.weight", np.zeros((STAND_IN_FF, H), dtype=np.float32)
            yield blk + "ffn_down.weight", np.zeros((H, STAND_IN_FF), dtype=np.float32)


def _write_hparams(writer, cfg, plan: Sequence[LayerPlan], sublayers: bool, outtype: str) -> None:
    """The architecture keys: per-layer arrays for deci (0 = absent), scalars for llama / qwen2."""
    import gguf

    H = int(cfg.hidden_size)
    n_head = int(cfg.num_attention_heads)
    n_kv = int(getattr(cfg, "num_key_value_heads", None) or n_head)
    head_dim = int(getattr(cfg, "head_dim", None) or H // n_head)
    n_ff = int(cfg.intermediate_size)
    rope = _rope(cfg)
    writer.add_block_count(len(plan))
    writer.add_context_length(int(cfg.max_position_embeddings))
    writer.add_embedding_length(H)
    if sublayers:
        writer.add_head_count([n_head if lp.attention or lp.stand_in_linear else 0 for lp in plan])
        writer.add_head_count_kv([n_kv if lp.attention else 0 for lp in plan])
        writer.add_feed_forward_length(
            [n_ff if lp.ffn else STAND_IN_FF if lp.stand_in_ffn else 0 for lp in plan]
        )
    else:
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_kv)
        writer.add_feed_forward_length(n_ff)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    if rope.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    writer.add_vocab_size(int(cfg.vocab_size))
    writer.add_file_type(_file_type(outtype))


def write_gguf(
    pm: PrunableModel,
    path: str | os.PathLike,
    removed: Sequence[str],
    *,
    outtype: str | None = None,
    source_model: str = "",
    name: str | None = None,
) -> dict:
    """Write `pm` with `removed` applied (by tensor, whatever `pm`'s state) to the GGUF file `path`."""
    import gguf

    outtype = check_outtype(outtype)
    reason = refuse_reason(pm.config)
    if reason:
        raise FinercutError(reason)
    cfg = pm.config
    gone = set(expand(removed))
    plan = plan_layers(gone, pm.num_blocks)
    if not plan:
        raise FinercutError("every sublayer is removed: there is no model to write; use --format finercut")
    sublayers = any(not (lp.attention and lp.ffn) for lp in plan)
    family = "qwen2" if cfg.model_type == "qwen2" else "llama"
    arch = "deci" if sublayers else family
    if pm.tokenizer is None:
        raise FinercutError("the model has no tokenizer: llama.cpp needs one in the GGUF file")
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(name or Path(source_model).name or "pruned")
    _write_hparams(writer, cfg, plan, sublayers, outtype)
    write_tokenizer(writer, pm.tokenizer, cfg, source_model)
    n_tensors = 0
    for tname, array in gguf_tensors(pm, plan, arch, outtype):
        qtype = _qtype(tname, array, outtype)
        data = gguf.quants.quantize(array, qtype)
        writer.add_tensor(tname, data, raw_dtype=qtype)
        n_tensors += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {
        "arch": arch,
        "layers": len(plan),
        "stand_in_ffn": [lp.source for lp in plan if lp.stand_in_ffn],
        "stand_in_linear": [lp.source for lp in plan if lp.stand_in_linear],
        "tensors": n_tensors,
        "outtype": outtype,
    }


def modelfile(gguf_name: str, pm: PrunableModel) -> str:
    lines = [f"FROM ./{gguf_name}"]
    template = getattr(pm.tokenizer, "chat_template", None)
    if not template:
        lines.append('TEMPLATE """{{ .Prompt }}"""')
    lines.append("")
    return "\n".join(lines)


def how_to_load_lines(file_name: str) -> list[str]:
    return [
        f"One GGUF file, `{file_name}`, for llama.cpp and ollama (removed sublayers are absent; only "
        "kept attention layers hold a KV cache):",
        "",
        "```bash",
        f"llama-cli -m {file_name}",
        f"llama-server -m {file_name}",
        "ollama create pruned -f Modelfile && ollama run pruned",
        "```",
    ]


def export_gguf(
    pm: PrunableModel,
    out_dir: str | os.PathLike,
    removed: Sequence[str],
    *,
    outtype: str | None = None,
    source_model: str,
    session=None,
    session_path: str | os.PathLike | None = None,
    step: int | None = None,
    force: bool = False,
    progress: Callable[[str], None] = print,
) -> ExportResult:
    """A folder with `model-<outtype>.gguf`, an ollama Modelfile and PRUNING.md."""
    outtype = check_outtype(outtype)
    reason = refuse_reason(pm.config)
    if reason:
        raise FinercutError(reason)
    file_name = f"model-{outtype}.gguf"
    with staged_export(pm, out_dir, removed, force) as staged:
        out = staged.out
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("*.gguf"):
            old.unlink()
        info = write_gguf(pm, out / file_name, staged.ids, outtype=outtype, source_model=source_model)
        for line in stand_in_lines(info):
            progress(line)
        (out / MODELFILE).write_text(modelfile(file_name, pm), encoding="utf-8")
        result = staged.result(pm, FORMAT, [lp.source for lp in plan_layers(set(staged.ids), pm.num_blocks)])
        write_card(
            pm,
            result,
            how_to_load_lines(file_name),
            source_model=source_model,
            session=session,
            session_path=session_path,
            step=step,
            order=removed,
        )
        progress(f"gguf: {file_name}, architecture {info['arch']}, {info['layers']} layers, {outtype}")
        return result


def stand_in_lines(info: dict) -> list[str]:
    """One line per kind of exact stand-in the file holds."""
    lines = []
    if info["stand_in_ffn"]:
        lines.append(
            f"gguf: blocks {', '.join(map(str, info['stand_in_ffn']))} keep attention without an MLP; llama.cpp "
            f"needs an MLP there, so each gets a zero MLP of width {STAND_IN_FF} (exact)"
        )
    if info["stand_in_linear"]:
        lines.append(
            f"gguf: block {info['stand_in_linear'][0]} is the first and has no attention; llama.cpp reads the "
            "head size from the first layer, so it gets a zero linear-attention stand-in (exact, no KV cache)"
        )
    return lines
