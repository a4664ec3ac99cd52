"""Tiny pruned Llama / Qwen2 models shaped for the serving engines (no hub).

Head size 32 (vLLM's CPU attention needs >= 32), intermediate_size 256 (Nemotron-NAS readers round the
FFN size to a multiple of 256), six blocks. `REMOVED` covers every case the engines treat apart: a
first block without attention, an attention-free block, FFN-free blocks (the last one included) and a
whole removed block.
"""

from __future__ import annotations

import torch
from tiny_tokenizer import tiny_tokenizer

from finercut_tui.model.surgery import PrunableModel

VOCAB = 128
REMOVED = ["0.attn", "1.mlp", "2.block", "3.attn", "5.mlp"]
# vLLM 0.32 cannot start with an attention-free layer: the same prune with 0.attn kept
REMOVED_VLLM = ["1.mlp", "2.block", "3.attn", "5.mlp"]
BLOCKS_ONLY = ["1.block", "4.block"]

_SHAPE = dict(
    vocab_size=VOCAB,
    hidden_size=128,
    num_hidden_layers=6,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=256,
    max_position_embeddings=256,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


def serve_config(family: str, **overrides):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    kwargs = {**_SHAPE, **overrides}
    if family == "llama":
        return LlamaConfig(**kwargs)
    if family == "llama3":  # Llama-3.1 rope scaling
        rope = {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        }
        return LlamaConfig(**kwargs, rope_parameters=rope)
    if family == "qwen2":
        return Qwen2Config(**kwargs)
    if family == "mistral":
        return MistralConfig(**kwargs, sliding_window=None)
    raise KeyError(family)


def serve_model(family: str = "llama", seed: int = 0, **overrides) -> PrunableModel:
    """A tiny fp32 eval-mode model with scaled-up random weights (biases too), wrapped for pruning."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = serve_config(family, **overrides)
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.08)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.5)
            else:  # norms: not all ones, so a wrongly kept or dropped norm shows
                p.uniform_(0.5, 1.5)
    return PrunableModel(model.eval(), tiny_tokenizer())


def prompt_ids(n: int = 12, seed: int = 1) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return [1] + torch.randint(4, 100, (n - 1,), generator=g).tolist()


def pruned_logits(pm: PrunableModel, removed, ids) -> torch.Tensor:
    """Logits [T, V] of `pm` with `removed` applied (state restored)."""
    before = pm.removed
    try:
        from finercut_tui.domain.sublayers import expand

        pm.set_removed(expand(removed))
        with torch.no_grad():
            return pm.model(torch.tensor([ids])).logits[0].float()
    finally:
        pm.set_removed(before)
