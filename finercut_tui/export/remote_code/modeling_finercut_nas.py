"""Nemotron-NAS / DeciLM model, as written by finercut-tui: transformers' Llama, block by block.

A block builds only what its `block_configs` entry keeps: attention (with its norm and its own KV
head count) and the MLP (with its norm, sized by `ffn_mult`). Kept attention layers are numbered
0..K-1, and `generate()` gets a cache with exactly those K layers.
"""

import copy
import inspect

from torch import nn
from transformers import DynamicCache
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    LlamaForCausalLM,
    LlamaMLP,
    LlamaModel,
    LlamaPreTrainedModel,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
)

from .configuration_finercut_nas import DeciLMConfig, ffn_mult_to_intermediate_size


def kept_attention_layers(config) -> list[int]:
    return [i for i, b in enumerate(config.block_configs) if not b.attention.no_op]


class DeciLMDecoderLayer(nn.Module):
    def __init__(self, config: DeciLMConfig, layer_idx: int):
        super().__init__()
        block = config.block_configs[layer_idx]
        self.has_attention = not block.attention.no_op
        self.has_ffn = not block.ffn.no_op
        if self.has_attention:
            attn_config = copy.copy(config)
            attn_config.num_key_value_heads = config.num_attention_heads // block.attention.n_heads_in_group
            cache_idx = kept_attention_layers(config).index(layer_idx)
            self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
            self.self_attn = LlamaAttention(attn_config, layer_idx=cache_idx)
        if self.has_ffn:
            ffn_config = copy.copy(config)
            ffn_config.intermediate_size = ffn_mult_to_intermediate_size(
                block.ffn.ffn_mult, config.hidden_size
            )
            self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
            self.mlp = LlamaMLP(ffn_config)

    def forward(self, hidden_states, **kwargs):
        if self.has_attention:
            attn_out, _ = self.self_attn(hidden_states=self.input_layernorm(hidden_states), **kwargs)
            hidden_states = hidden_states + attn_out
        if self.has_ffn:
            hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states


class DeciLMPreTrainedModel(LlamaPreTrainedModel):
    config_class = DeciLMConfig
    _no_split_modules = ["DeciLMDecoderLayer"]
    _can_record_outputs = {"hidden_states": DeciLMDecoderLayer, "attentions": LlamaAttention}


class DeciLMModel(DeciLMPreTrainedModel, LlamaModel):
    def __init__(self, config: DeciLMConfig):
        DeciLMPreTrainedModel.__init__(self, config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(DeciLMDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()


class DeciLMForCausalLM(DeciLMPreTrainedModel, LlamaForCausalLM):
    def __init__(self, config: DeciLMConfig):
        DeciLMPreTrainedModel.__init__(self, config)
        self.model = DeciLMModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def make_cache(self):
        """A DynamicCache with one layer per kept attention layer."""
        kv_config = copy.copy(self.config)
        kv_config.num_hidden_layers = len(kept_attention_layers(self.config))
        return DynamicCache(config=kv_config)

    def generate(self, *args, **kwargs):
        params = inspect.signature(self.forward).parameters
        cache_kw = "cache" if "cache" in params else "past_key_values"
        if not kept_attention_layers(self.config):
            kwargs["use_cache"] = False
        elif kwargs.get(cache_kw) is None and kwargs.get("use_cache", True):
            kwargs[cache_kw] = self.make_cache()
        return super().generate(*args, **kwargs)


__all__ = ["DeciLMForCausalLM", "DeciLMModel", "DeciLMPreTrainedModel"]
