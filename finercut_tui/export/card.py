"""The PRUNING.md model card an export writes next to the weights.

It says which model was pruned and how (session, method), how to load the folder, what was removed,
the parameters and KV cache saved, and the evals recorded in the session (formatted by
`finercut_tui.domain.evals`). Torch-free: it reads only the `ExportResult` and the session.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from finercut_tui.domain.evals import describe_eval, fmt_value, retained_text
from finercut_tui.domain.sublayers import sort_key
from finercut_tui.export.result import ExportResult

CARD_NAME = "PRUNING.md"


def model_card(
    result: ExportResult,
    *,
    source_model: str,
    architecture: str,
    session=None,
    session_path=None,
    step: int | None = None,
    order: Sequence[str] = (),
    healing=None,
    how_to_load: Sequence[str] | None = None,
) -> str:
    """PRUNING.md: what was removed from which model, how it was chosen, what it cost and saved;
    `healing` (a `HealRecord`) adds what fine-tune the weights had after pruning; `how_to_load`
    replaces the folder format's loading lines (an engine format's own)."""
    sections = [
        _header(result, source_model, architecture, session, session_path, step),
        ["## How to load", "", *(how_to_load if how_to_load is not None else _how_to_load(result))],
        ["## Removed", "", *_removed(result, order)],
        ["## Parameters", "", *_parameters(result)],
        ["## KV cache", "", *_kv_cache(result)],
        ["## Evals recorded in the session", "", *_evals(session)],
    ]
    if healing is not None:
        sections.insert(1, ["## Healing", "", *_healing(healing)])
    return "\n\n".join("\n".join(lines) for lines in sections) + "\n"


def _header(
    result: ExportResult, source_model: str, architecture: str, session, session_path, step: int | None
) -> list[str]:
    L = result.num_blocks
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
    return lines


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        out: list[tuple[str, Any]] = []
        for k, v in value.items():
            out.extend(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return [(prefix, value)]


def _how_to_load(result: ExportResult) -> list[str]:
    if result.format == "blocks":
        return [
            f"Only whole blocks were removed, so this is a standard checkpoint with "
            f"{result.num_blocks - len(result.dropped_blocks)}"
            f" layers (source blocks {', '.join(map(str, result.dropped_blocks))} dropped, the rest renumbered):",
            "",
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "model = AutoModelForCausalLM.from_pretrained(DIR)",
            "tokenizer = AutoTokenizer.from_pretrained(DIR)",
            "```",
        ]
    return [
        "Single sublayers were removed: the weights here lack them, and config.json lists them under "
        "`finercut.removed`. Load with finercut-tui (plain `from_pretrained` would re-create the removed "
        "modules with random weights):",
        "",
        "```python",
        "import finercut_tui",
        "model, tokenizer = finercut_tui.load_pruned(DIR)",
        "```",
    ]


def _removed(result: ExportResult, order: Sequence[str]) -> list[str]:
    L = result.num_blocks
    ids = set(result.removed)
    attn = sorted((s for s in ids if s.endswith(".attn")), key=sort_key)
    mlp = sorted((s for s in ids if s.endswith(".mlp")), key=sort_key)
    both = [b for b in range(L) if f"{b}.attn" in ids and f"{b}.mlp" in ids]
    return [
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
    ]


def _parameters(result: ExportResult) -> list[str]:
    saved = result.params_before - result.params_after
    return [
        f"- before: {result.params_before:,}",
        f"- after: {result.params_after:,} ({100 * result.params_after / result.params_before:.1f}%; "
        f"{saved:,} removed)",
    ]


def _kv_cache(result: ExportResult) -> list[str]:
    kept, L = result.kept_attention, result.num_blocks
    return [
        f"Attention is kept in {kept} of {L} blocks, so generation caches keys and values "
        f"for {kept} layers: {100 * kept / L:.1f}% of the original cache "
        "at any context length (`finercut-tui speed` measures it).",
    ]


def _evals(session) -> list[str]:
    evals = list(getattr(session, "evals", None) or [])
    return [f"- step {e.step}: {describe_eval(e)}; retained {retained_text(e)}" for e in evals] or [
        "(none recorded)"
    ]


def _healing(heal) -> list[str]:
    """What the LoRA heal did (a `HealRecord`): the weights here are the pruned ones plus its deltas."""
    data, lora, train = heal.data, heal.lora, heal.training
    length = f"{heal.steps} steps" + (f" ({train['epochs']} epochs)" if train.get("epochs") else "")
    lines = [
        "After pruning, the kept sublayers were fine-tuned with LoRA and the deltas merged into their "
        "weights (removed sublayers have no weights and got no adapter). The adapter alone is in "
        f"`{Path(heal.adapter).name if heal.adapter else 'adapter'}/` (peft; module names of the source "
        "model with this step's removals applied).",
        "",
        f"- LoRA: rank {lora.get('rank')}, alpha {fmt_value(lora.get('alpha'))}, dropout "
        f"{fmt_value(lora.get('dropout'))}, on {lora.get('modules')} linear layers "
        f"({lora.get('trainable_parameters', 0):,} trainable parameters)",
        f"- data: `{data.get('source')}` ({data.get('format')}; {data.get('examples')} examples, "
        f"{data.get('tokens', 0):,} tokens; fingerprint `{str(data.get('fingerprint', ''))[:23]}...`)",
        f"- training: {length}, lr {fmt_value(train.get('lr'))}, batch {train.get('batch_size')} x "
        f"{train.get('grad_accum')} accumulation, seq len {train.get('seq_len')}, seed {train.get('seed')}, "
        f"{train.get('dtype')} on {train.get('device')}",
    ]
    if heal.first_loss is not None:
        lines.append(
            f"- loss: {heal.first_loss:.4f} (first step) -> {heal.final_loss:.4f} (last 10% of steps); "
            f"{heal.seconds:.0f} s"
        )
    if heal.before is not None and heal.after is not None:
        lines += [
            "",
            "| | results | retained |",
            "|---|---|---:|",
            f"| before healing | {describe_eval(heal.before)} | {retained_text(heal.before)} |",
            f"| after healing | {describe_eval(heal.after)} | {retained_text(heal.after)} |",
        ]
    return lines
