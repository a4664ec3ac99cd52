"""export --format gguf: llama.cpp itself (npm's node-llama-cpp prebuilt CPU library) reads the file and
gives the in-memory pruned model's next-token logits: f32 to 1e-4, q8_0 within 0.2 (cosine > 0.995)."""

import numpy as np
import pytest
import torch
from engines import llama_cpp_convert, llama_cpp_logits
from serve_models import BLOCKS_ONLY, REMOVED, prompt_ids, pruned_logits, serve_model

from finercut_tui.errors import FinercutError
from finercut_tui.export.gguf import export_gguf, write_gguf
from finercut_tui.export.nemotron_nas import export_nemotron_nas

pytestmark = pytest.mark.engine
Q8_TOL = 0.2  # q8_0 quantizes weights and, on CPU, the matmul inputs: |delta logit| seen <= 0.11 here


def gguf_logits(pm, path, removed, outtype):
    write_gguf(pm, path, removed, outtype=outtype, source_model="tiny")
    ids = prompt_ids()
    info, got = llama_cpp_logits(path, ids)
    return info, torch.tensor(got), pruned_logits(pm, removed, ids)[-1]


@pytest.mark.parametrize("family", ["llama", "qwen2", "llama3"])
def test_sublayer_prune_as_deci_matches_f32_and_q8(tmp_path, family):
    import gguf

    pm = serve_model(family)
    info, got, expected = gguf_logits(pm, tmp_path / "m.gguf", REMOVED, "f32")
    assert got.shape == expected.shape
    assert (got - expected).abs().max() < 1e-4
    reader = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    fields = {k: v.contents() for k, v in reader.fields.items()}
    assert fields["general.architecture"] == "deci"
    # blocks 0 (linear-attention stand-in), 1, 3, 4, 5; block 2 is gone
    assert fields["deci.attention.head_count"] == [4, 4, 0, 4, 4]
    assert fields["deci.attention.head_count_kv"] == [0, 2, 0, 2, 2]
    assert fields["deci.feed_forward_length"] == [256, 32, 256, 256, 32]
    names = {t.name for t in reader.tensors}
    assert "blk.2.attn_q.weight" not in names and "blk.0.attn_q.weight" not in names
    assert ("rope_freqs.weight" in names) == (family == "llama3")
    assert all(not n.startswith("blk.5") for n in names)
    # KV cache: keys only for the 3 kept attention layers (values are padded to every layer by llama.cpp)
    k_mib = float(info["kv_line"].split("K (f32):")[1].split("MiB")[0])
    full_k = 256 * 6 * 2 * 32 * 4 / 2**20  # 256 cells x 6 layers x 2 KV heads x 32 x f32 (unpruned)
    assert k_mib == pytest.approx(full_k * 3 / 6, abs=0.01)

    _, got8, _ = gguf_logits(pm, tmp_path / "q8.gguf", REMOVED, "q8_0")
    assert (got8 - expected).abs().max() < Q8_TOL
    assert torch.nn.functional.cosine_similarity(got8, expected, dim=0) > 0.995


@pytest.mark.parametrize("family,arch", [("llama", "llama"), ("qwen2", "qwen2")])
def test_block_only_prune_is_a_plain_architecture(tmp_path, family, arch):
    import gguf

    pm = serve_model(family)
    _, got, expected = gguf_logits(pm, tmp_path / "b.gguf", BLOCKS_ONLY, "f32")
    assert (got - expected).abs().max() < 1e-4
    fields = {k: v.contents() for k, v in gguf.GGUFReader(str(tmp_path / "b.gguf")).fields.items()}
    assert fields["general.architecture"] == arch and fields[f"{arch}.block_count"] == 4


@pytest.mark.parametrize("outtype", ["f16", "bf16"])
def test_half_outtypes_load_and_agree(tmp_path, outtype):
    pm = serve_model("llama")
    _, got, expected = gguf_logits(pm, tmp_path / "h.gguf", REMOVED, outtype)
    assert (got - expected).abs().max() < 0.05


def test_export_folder_modelfile_card_tokenizer_and_refusals(tmp_path):
    import gguf

    pm = serve_model("llama")
    pm.tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    messages = []
    result = export_gguf(
        pm, tmp_path / "out", REMOVED, outtype="q8_0", source_model="tiny", progress=messages.append
    )
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["Modelfile", "PRUNING.md", "model-q8_0.gguf"]
    assert (tmp_path / "out" / "Modelfile").read_text().startswith("FROM ./model-q8_0.gguf")
    card = (tmp_path / "out" / "PRUNING.md").read_text()
    assert "llama-cli -m model-q8_0.gguf" in card and "ollama create" in card
    assert any("zero MLP" in m for m in messages) and any("linear-attention" in m for m in messages)
    assert result.format == "gguf" and result.kept_attention == 3 and pm.removed == frozenset()
    fields = {
        k: v.contents() for k, v in gguf.GGUFReader(str(tmp_path / "out" / "model-q8_0.gguf")).fields.items()
    }
    assert fields["tokenizer.chat_template"] == pm.tokenizer.chat_template
    assert fields["tokenizer.ggml.bos_token_id"] == 1 and fields["tokenizer.ggml.eos_token_id"] == 2
    assert len(fields["tokenizer.ggml.tokens"]) == 128

    for bad in ("q4_k", "int8"):
        with pytest.raises(FinercutError) as err:
            export_gguf(pm, tmp_path / bad, REMOVED, outtype=bad, source_model="tiny")
        assert "\n" not in str(err.value) and "f32, f16, bf16, q8_0" in str(err.value)
        assert not (tmp_path / bad).exists()
    with pytest.raises(FinercutError) as err:
        export_gguf(pm, tmp_path / "out", REMOVED, source_model="tiny")
    assert "--force" in str(err.value)
    from tiny_models import tiny_model
    from tiny_tokenizer import tiny_tokenizer

    from finercut_tui.model.surgery import PrunableModel

    with pytest.raises(FinercutError) as err:
        export_gguf(
            PrunableModel(tiny_model("gpt2"), tiny_tokenizer()), tmp_path / "g", ["1.attn"], source_model="t"
        )
    assert "\n" not in str(err.value) and "--format finercut" in str(err.value)
    assert not (tmp_path / "g").exists()


def _read(path):
    import gguf

    reader = gguf.GGUFReader(str(path))
    fields = {k: v.contents() for k, v in reader.fields.items() if k.startswith("deci.")}
    tensors = {t.name: np.array(t.data, dtype=np.float32).reshape(-1) for t in reader.tensors}
    return fields, tensors


@pytest.mark.parametrize("family", ["qwen2", "llama3"])
def test_llama_cpp_converter_on_the_nemotron_folder_gives_the_same_file(tmp_path, family):
    """convert_hf_to_gguf.py (DeciModel) on the nemotron-nas export equals our GGUF, tensor for tensor,
    except for our stand-ins, which are exactly where llama.cpp would misread the converter's file."""
    pm = serve_model(family)
    export_nemotron_nas(pm, tmp_path / "nas", REMOVED, source_model="tiny", progress=lambda _m: None)
    llama_cpp_convert(tmp_path / "nas", tmp_path / "conv.gguf")
    write_gguf(pm, tmp_path / "ours.gguf", REMOVED, outtype="f32", source_model="tiny")
    conv_fields, conv = _read(tmp_path / "conv.gguf")
    our_fields, ours = _read(tmp_path / "ours.gguf")
    # ours: block 0 gets a linear-attention stand-in, blocks 1 and 5 (layers 1 and 4) a zero MLP
    stand_ins = {"blk.0.attn_norm.weight", "blk.0.attn_output.weight"} | {
        f"blk.{i}.{t}.weight" for i in (1, 4) for t in ("ffn_norm", "ffn_gate", "ffn_up", "ffn_down")
    }
    assert set(ours) - set(conv) == stand_ins
    # the folder's zero o_proj bias (Qwen2's q/k/v biases as attention_bias) is left out of ours
    extra = set(conv) - set(ours)
    assert all(n.endswith("attn_output.bias") and not conv[n].any() for n in extra)
    assert bool(extra) == (family == "qwen2")
    for name, data in conv.items():
        if name in extra:
            continue
        assert np.array_equal(data, ours[name]), name
    assert conv_fields["deci.attention.head_count"] == [0, 4, 0, 4, 4]
    assert conv_fields["deci.feed_forward_length"] == [256, 0, 256, 256, 0]
    same = {
        k: v
        for k, v in our_fields.items()
        if k not in ("deci.attention.head_count", "deci.feed_forward_length")
    }
    assert same == {k: conv_fields[k] for k in same}


def test_smollm2_pruned_gguf_tokenizes_and_predicts_like_the_model(tmp_path):
    """The embedded SmolLM2-135M at step 10 of the committed session, as q8_0: llama.cpp splits text
    into the same tokens as the HF tokenizer and predicts the pruned model's next token."""
    from pathlib import Path

    from engines import llama_cpp

    from finercut_tui.domain.sublayers import expand
    from finercut_tui.model.loading import ModelSpec, load_model
    from finercut_tui.session import Session

    pm = load_model(ModelSpec("smollm2-135m", dtype="float32", device="cpu"), progress=lambda _m: None).pm
    session = Path(__file__).resolve().parents[1] / "sessions" / "smollm2-finercut-all.yaml"
    removed = expand(Session.load(session).removed_at(10))
    path = tmp_path / "s.gguf"
    write_gguf(pm, path, removed, outtype="q8_0", source_model="smollm2-135m")
    text = "The quick brown fox jumps over the lazy dog. def f(x):\n    return x ** 2  # 3.14 ünïcode"
    assert (
        llama_cpp("tokenize", path, text)["tokens"]
        == pm.tokenizer(text, add_special_tokens=False)["input_ids"]
    )
    ids = pm.tokenizer("The capital of France is", add_special_tokens=False)["input_ids"]
    _, got = llama_cpp_logits(path, ids)
    pm.set_removed(removed)
    with torch.no_grad():
        expected = pm.model(torch.tensor([ids])).logits[0, -1]
    got = torch.tensor(got)
    assert got.argmax() == expected.argmax()
    assert torch.nn.functional.cosine_similarity(got, expected, dim=0) > 0.995
