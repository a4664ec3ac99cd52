"""`--model FILE.gguf` loads the file as `--gguf-file` does; several GGUF files ask for one by name."""

from __future__ import annotations

import pytest

from finercut_tui.cli import main
from finercut_tui.errors import FinercutError
from finercut_tui.model.loading import ModelSpec, gguf_in, load_model
from finercut_tui.session import Session


def test_which_gguf_a_model_argument_means(tmp_path):
    assert gguf_in(str(tmp_path / "nothing-here")) is None  # a hub id or a missing folder: not ours
    with pytest.raises(FinercutError, match="GGUF file not found: .*missing.gguf"):
        gguf_in(str(tmp_path / "missing.gguf"))
    one = tmp_path / "one"
    one.mkdir()
    (one / "m.Q4.gguf").write_bytes(b"")
    assert gguf_in(str(one)) == str(one / "m.Q4.gguf")
    (one / "config.json").write_text("{}")
    assert gguf_in(str(one)) is None  # an HF folder that also ships a GGUF loads as a folder
    two = tmp_path / "two"
    two.mkdir()
    for name in ("m.Q4.gguf", "m.Q8.gguf"):
        (two / name).write_bytes(b"")
    with pytest.raises(FinercutError, match=r"holds 2 GGUF files \(m.Q4.gguf, m.Q8.gguf\).*--gguf-file NAME"):
        gguf_in(str(two))


def test_a_hub_repo_with_several_gguf_files_asks_for_one(monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # config.json cannot be fetched: the repo is looked at
    monkeypatch.setattr(
        huggingface_hub,
        "list_repo_files",
        lambda name, revision=None: ["README.md", "x.Q4_0.gguf", "x.Q8_0.gguf"],
    )
    with pytest.raises(FinercutError, match=r"hub repo org/x-GGUF holds 2 GGUF files .*--gguf-file NAME"):
        load_model(ModelSpec("org/x-GGUF", device="cpu"), progress=lambda m: None)


def test_info_and_run_take_a_gguf_file_as_model(smollm, smollm_gguf, tmp_path, capsys):
    # `smollm` converted the file already (cached by content), so this loads in seconds
    assert main(["info", "--model", str(smollm_gguf), "--device", "cpu", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "LlamaForCausalLM" in out and "30" in out
    session = tmp_path / "g.yaml"
    argv = ["run", "--model", str(smollm_gguf), "--device", "cpu", "--dtype", "float32", "--calib", "pydoc"]
    argv += ["--calib-samples", "1", "--seq-len", "8", "--method", "attn-drop", "--target", "1"]
    assert main([*argv, "--session", str(session), "--quiet"]) == 0
    recorded = Session.load(session)
    assert recorded.model.name_or_path == str(smollm_gguf) and recorded.num_blocks == 30
    assert len(recorded.steps) == 1
    capsys.readouterr()
    # resuming needs no --model: the session names the file
    assert main(["run", "--session", str(session), "--resume", "--target", "2", "--quiet"]) == 0
    assert len(Session.load(session).steps) == 2
