"""The export formats by name, and one entry point, `write_export`, for `export --format`.

- ``finercut``: the load_pruned folder (`finercut_tui.export.folder.export_pruned`); whole-block prunes
  give a standard checkpoint with fewer layers. Works for every supported architecture.
- ``nemotron-nas``: a Nemotron-NAS / DeciLM folder for vLLM, SGLang and transformers
  (`trust_remote_code=True`); Llama, SmolLM, Mistral and Qwen2 families.
- ``gguf``: one GGUF file plus an ollama Modelfile, for llama.cpp and ollama; same families;
  ``--outtype`` f32, f16, bf16 or q8_0.
- ``finercut`` is the default (every finercut-tui command reads it back).
- ``auto``: ``finercut`` when only whole blocks are removed (a plain checkpoint every
  engine loads as is), else ``nemotron-nas`` where the family can be written so, else ``finercut``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from finercut_tui.errors import FinercutError
from finercut_tui.export.result import ExportResult

FORMATS = ("auto", "finercut", "nemotron-nas", "gguf")
# the default: the folder every finercut-tui command reads back (speed, load_pruned, heal) and every
# supported architecture can be written as; the engine formats are one --format away
DEFAULT_FORMAT = "finercut"
DESCRIPTIONS = {
    "auto": "finercut for whole-block prunes, nemotron-nas for sublayer prunes where the family allows, else finercut",
    "finercut": "the load_pruned folder (whole blocks: a standard checkpoint); every architecture",
    "nemotron-nas": "DeciLM folder for vLLM / SGLang / transformers (trust_remote_code); Llama, Mistral, Qwen2",
    "gguf": "one GGUF file + ollama Modelfile for llama.cpp / ollama; Llama, Mistral, Qwen2",
}


def check_format_args(fmt: str | None, outtype: str | None) -> None:
    """Refuse an unknown --format or --outtype (or --outtype without gguf) before any model is loaded."""
    fmt = (fmt or DEFAULT_FORMAT).lower()
    if fmt not in FORMATS:
        raise FinercutError(f"unknown --format {fmt!r}: pick one of {', '.join(FORMATS)}")
    if outtype is not None:
        if fmt != "gguf":
            raise FinercutError(f"--outtype is for --format gguf only (this export is {fmt})")
        from finercut_tui.export.gguf import check_outtype

        check_outtype(outtype)


def resolve_format(fmt: str | None, pm, removed: Sequence[str]) -> str:
    """The concrete format `fmt` names for this model and removal list (``auto`` decides here)."""
    fmt = (fmt or DEFAULT_FORMAT).lower()
    if fmt not in FORMATS:
        raise FinercutError(f"unknown --format {fmt!r}: pick one of {', '.join(FORMATS)}")
    if fmt != "auto":
        return fmt
    from finercut_tui.domain.sublayers import expand, parse_id
    from finercut_tui.export.folder import whole_blocks
    from finercut_tui.export.nemotron_nas import ffn_mult_for, refuse_reason

    ids = expand(parse_id(s, pm.num_blocks, allow_block=True) for s in removed)
    if whole_blocks(ids) is not None or not ids:
        return "finercut"
    if refuse_reason(pm.config) is not None:
        return "finercut"
    try:
        ffn_mult_for(int(pm.config.intermediate_size), int(pm.config.hidden_size))
    except FinercutError:
        return "finercut"
    return "nemotron-nas"


def write_export(
    fmt: str | None,
    pm,
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
    """Write `pm` with `removed` applied to `out_dir` in format `fmt` (None: the default).

    `outtype` is read by ``gguf`` only; any other format refuses it. Every refusal is one line
    (`FinercutError`) and leaves no partial output.
    """
    concrete = resolve_format(fmt, pm, removed)
    common = dict(
        source_model=source_model,
        session=session,
        session_path=session_path,
        step=step,
        force=force,
        progress=progress,
    )
    if concrete == "gguf":
        from finercut_tui.export.gguf import check_outtype, export_gguf

        check_outtype(outtype)
        return export_gguf(pm, out_dir, removed, outtype=outtype, **common)
    if outtype is not None:
        raise FinercutError(f"--outtype is for --format gguf only (this export is {concrete})")
    if concrete == "nemotron-nas":
        from finercut_tui.export.nemotron_nas import export_nemotron_nas

        return export_nemotron_nas(pm, out_dir, removed, **common)
    from finercut_tui.export.folder import export_pruned

    return export_pruned(pm, out_dir, removed, **common)


def load_hint(result: ExportResult) -> str:
    """How to load what `write_export` wrote, for the command's summary line."""
    out = result.out_dir
    if result.format == "blocks":
        return f"AutoModelForCausalLM.from_pretrained({str(out)!r})"
    if result.format == "nemotron-nas":
        return f"vllm serve {out} --trust-remote-code (or from_pretrained(..., trust_remote_code=True))"
    if result.format == "gguf":
        files = sorted(out.glob("*.gguf"))
        name = files[0] if files else out / "model.gguf"
        return f"llama-cli -m {name} (or ollama create NAME -f {out / 'Modelfile'})"
    return f"finercut_tui.load_pruned({str(out)!r})"
