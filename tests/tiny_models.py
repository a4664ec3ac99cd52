"""Tiny random models of every supported architecture, built from configs with fixed seeds (no hub)."""

from __future__ import annotations

import torch

VOCAB = 128

_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=128,
    max_position_embeddings=256,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


def _configs():
    from transformers import (
        Gemma2Config,
        Gemma3TextConfig,
        GemmaConfig,
        GPT2Config,
        GPTNeoXConfig,
        LlamaConfig,
        MistralConfig,
        MixtralConfig,
        OPTConfig,
        Phi3Config,
        Qwen2Config,
        Qwen3Config,
    )

    kv = dict(num_key_value_heads=2)
    return {
        "llama": lambda: LlamaConfig(**_COMMON, **kv),
        "mistral": lambda: MistralConfig(**_COMMON, **kv, sliding_window=6),
        "qwen2": lambda: Qwen2Config(**_COMMON, **kv),
        "qwen3": lambda: Qwen3Config(**_COMMON, **kv, head_dim=16),
        "gemma": lambda: GemmaConfig(**_COMMON, **kv, head_dim=16),
        "gemma2": lambda: Gemma2Config(
            **_COMMON,
            **kv,
            head_dim=16,
            sliding_window=6,
            layer_types=["sliding_attention", "full_attention"] * 2,
        ),
        "gemma3_text": lambda: Gemma3TextConfig(
            **_COMMON,
            **kv,
            head_dim=16,
            sliding_window=6,
            layer_types=["sliding_attention", "full_attention"] * 2,
        ),
        "phi3": lambda: Phi3Config(**_COMMON, **kv),
        "mixtral": lambda: MixtralConfig(**_COMMON, **kv, num_local_experts=4, num_experts_per_tok=2),
        "gpt2": lambda: GPT2Config(
            vocab_size=VOCAB, n_embd=64, n_layer=4, n_head=4, n_positions=256, bos_token_id=1, eos_token_id=2
        ),
        "gpt_neox": lambda: GPTNeoXConfig(
            vocab_size=VOCAB,
            hidden_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=256,
            use_parallel_residual=True,
            bos_token_id=1,
            eos_token_id=2,
        ),
        "gpt_neox_seq": lambda: GPTNeoXConfig(
            vocab_size=VOCAB,
            hidden_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=256,
            use_parallel_residual=False,
            bos_token_id=1,
            eos_token_id=2,
        ),
        "opt": lambda: OPTConfig(
            vocab_size=VOCAB,
            hidden_size=64,
            num_hidden_layers=4,
            ffn_dim=128,
            num_attention_heads=4,
            max_position_embeddings=256,
            word_embed_proj_dim=64,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        ),
    }


ARCH_NAMES = list(
    _configs_names := [
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "gemma",
        "gemma2",
        "gemma3_text",
        "phi3",
        "mixtral",
        "gpt2",
        "gpt_neox",
        "gpt_neox_seq",
        "opt",
    ]
)


def tiny_config(name: str, **overrides):
    config = _configs()[name]()
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def tiny_model(name: str = "llama", seed: int = 0, **overrides):
    """A tiny fp32 eval-mode model with scaled-up random weights (so sublayers matter)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(name, **overrides)
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.08)
    return model.eval()


def tiny_inputs(n: int = 2, t: int = 12, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (n, t), generator=g)
