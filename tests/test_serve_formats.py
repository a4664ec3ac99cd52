"""export's format registry: `write_export(fmt, ...)` picks the writer; `auto` picks the format that
serves the model best; unknown names and misplaced options are one-line refusals."""

import pytest
from serve_models import BLOCKS_ONLY, REMOVED, serve_model
from tiny_models import tiny_model
from tiny_tokenizer import tiny_tokenizer

from finercut_tui.errors import FinercutError
from finercut_tui.export.formats import DEFAULT_FORMAT, FORMATS, resolve_format, write_export
from finercut_tui.model.surgery import PrunableModel


def test_auto_picks_the_format_that_serves_best():
    pm = serve_model("llama")
    assert DEFAULT_FORMAT == "finercut" and set(FORMATS) == {"auto", "finercut", "nemotron-nas", "gguf"}
    assert resolve_format(None, pm, REMOVED) == "finercut"
    assert resolve_format("auto", pm, REMOVED) == "nemotron-nas"
    assert resolve_format("auto", pm, BLOCKS_ONLY) == "finercut"  # a plain checkpoint with fewer layers
    gpt2 = PrunableModel(tiny_model("gpt2"), tiny_tokenizer())
    assert resolve_format("auto", gpt2, ["1.attn"]) == "finercut"
    small = PrunableModel(tiny_model("llama"), tiny_tokenizer())  # intermediate_size 128: no ffn_mult
    assert resolve_format("auto", small, ["1.attn"]) == "finercut"
    assert resolve_format("GGUF", pm, REMOVED) == "gguf"


def test_write_export_dispatches_and_refuses_in_one_line(tmp_path):
    pm = serve_model("qwen2")
    kw = dict(source_model="tiny", progress=lambda _m: None)
    assert write_export("auto", pm, tmp_path / "a", REMOVED, **kw).format == "nemotron-nas"
    assert write_export(None, pm, tmp_path / "d", REMOVED, **kw).format == "sublayers"  # the default
    assert write_export("finercut", pm, tmp_path / "b", REMOVED, **kw).format == "sublayers"
    result = write_export("gguf", pm, tmp_path / "c", REMOVED, outtype="f32", **kw)
    assert result.format == "gguf" and (tmp_path / "c" / "model-f32.gguf").is_file()
    for fmt, outtype, words in [
        ("onnx", None, "unknown --format"),
        ("nemotron-nas", "q8_0", "--outtype is for --format gguf"),
        ("gguf", "q2_k", "unknown --outtype"),
    ]:
        with pytest.raises(FinercutError) as err:
            write_export(fmt, pm, tmp_path / "x", REMOVED, outtype=outtype, **kw)
        assert "\n" not in str(err.value) and words in str(err.value)
        assert not (tmp_path / "x").exists()


def test_load_hint_names_the_engine_command(tmp_path):
    from finercut_tui.export.formats import load_hint

    pm = serve_model("llama")
    kw = dict(source_model="tiny", progress=lambda _m: None)
    hints = {
        fmt: load_hint(write_export(fmt, pm, tmp_path / fmt, removed, **kw))
        for fmt, removed in [("nemotron-nas", REMOVED), ("gguf", REMOVED), ("finercut", BLOCKS_ONLY)]
    }
    assert hints["nemotron-nas"].startswith("vllm serve ") and "--trust-remote-code" in hints["nemotron-nas"]
    assert hints["gguf"].startswith("llama-cli -m ") and "model-f16.gguf" in hints["gguf"]
    assert hints["finercut"].startswith("AutoModelForCausalLM.from_pretrained(")


def test_format_args_are_checked_without_a_model():
    from finercut_tui.export.formats import check_format_args

    check_format_args(None, None)
    check_format_args("gguf", "Q8_0")
    for fmt, outtype in [("onnx", None), ("auto", "f16"), ("gguf", "q4_0")]:
        with pytest.raises(FinercutError) as err:
            check_format_args(fmt, outtype)
        assert "\n" not in str(err.value)
