"""`finercut-tui info`: what the model is made of and how its sublayers are addressed."""

from __future__ import annotations

from finercut_tui.commands.common import add_model_args, model_spec, progress_printer


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "info",
        help="architecture, blocks, parameters per sublayer kind, sublayer ids",
        description="Load a model and describe its prunable sublayers.",
    )
    add_model_args(p)
    p.set_defaults(func=run)


def describe(lm) -> str:
    pm = lm.pm
    per_kind = pm.parameters_by_kind()
    total = sum(per_kind.values())
    devices = sorted(set(lm.device_map.values()))
    first, last = pm.sublayers[:4], pm.sublayers[-2:]
    lines = [
        f"model        {lm.spec.gguf_file or lm.spec.name_or_path}",
        f"architecture {lm.architecture} ({pm.config.model_type}"
        f"{', parallel residual' if pm.parallel_residual else ''})",
        f"blocks       {pm.num_blocks}  (sublayers: {2 * pm.num_blocks})",
        f"parameters   {total:,} total",
        f"  attention  {per_kind['attn']:,}  ({per_kind['attn'] / pm.num_blocks:,.0f} per block, "
        f"{100 * per_kind['attn'] / total:.1f}%)",
        f"  mlp        {per_kind['mlp']:,}  ({per_kind['mlp'] / pm.num_blocks:,.0f} per block, "
        f"{100 * per_kind['mlp'] / total:.1f}%)",
        f"  other      {per_kind['other']:,}  (embeddings, final norm, head)",
        f"dtype        {lm.dtype}",
        f"device map   {', '.join(devices)}"
        + (f" ({len(lm.device_map)} parts)" if len(lm.device_map) > 1 else ""),
        f"sublayer ids {', '.join(first)}, ..., {', '.join(last)}  (whole blocks: 0.block .. {pm.num_blocks - 1}.block)",
    ]
    return "\n".join(lines)


def run(args) -> int:
    from finercut_tui.model.loading import load_model

    lm = load_model(model_spec(args), progress=progress_printer())
    print(describe(lm))
    return 0
