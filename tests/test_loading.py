"""Loading errors are one line, name the problem and the fix, and print no traceback."""

import subprocess
import sys

import pytest
import torch
from builders import save_tiny_checkpoint
from tiny_models import tiny_model

from finercut_tui.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("finercut-tui: error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_missing_local_path(capsys):
    code, _, err = run_cli(capsys, "info", "--model", "./no/such/model")
    assert code == 2
    assert "no model folder at './no/such/model'" in one_error_line(err)


def test_hub_unreachable_says_offline(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run_cli(capsys, "info", "--model", "some-org/some-model-that-is-not-cached")
    assert code == 2
    assert "offline?" in one_error_line(err) and "local model folder" in err


def test_unsupported_architecture_lists_supported(capsys, tmp_path):
    from transformers import BertConfig

    BertConfig(
        num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=32
    ).save_pretrained(tmp_path)
    code, _, err = run_cli(capsys, "info", "--model", str(tmp_path))
    line = one_error_line(err)
    assert code == 2 and "unsupported architecture" in line and "llama" in line and "gpt_neox" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when CUDA is absent")
def test_cuda_asked_but_absent(capsys, tmp_path):
    tiny_model("llama").save_pretrained(tmp_path)
    code, _, err = run_cli(capsys, "info", "--model", str(tmp_path), "--device", "cuda")
    assert code == 2 and "CUDA is not available" in one_error_line(err) and "--device cpu" in err


def test_out_of_gpu_memory_says_what_to_try(capsys, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    tiny_model("llama").save_pretrained(tmp_path)

    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", oom)
    code, _, err = run_cli(capsys, "info", "--model", str(tmp_path))
    line = one_error_line(err)
    assert code == 2 and "out of GPU memory loading" in line and "--dtype bfloat16" in line


def test_info_on_a_local_tiny_model(capsys, tmp_path):

    save_tiny_checkpoint(tmp_path, "gpt_neox")
    code, out, _ = run_cli(capsys, "info", "--model", str(tmp_path))
    assert code == 0
    assert "GPTNeoXForCausalLM (gpt_neox, parallel residual)" in out
    assert "blocks       4  (sublayers: 8)" in out
    assert "0.attn, 0.mlp, 1.attn, 1.mlp, ..., 3.attn, 3.mlp" in out


def test_cli_subprocess_prints_one_line_and_no_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "finercut_tui.cli", "info", "--model", "/nonexistent/dir"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("finercut-tui: error: no model folder")
