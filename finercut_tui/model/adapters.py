"""One table that says, per architecture, where the decoder blocks and their sublayers live.

A sublayer is a *group* of modules inside a block, listed in forward order with a role:
`norm` (replaced by Identity when removed), `attn` (returns zeros and no attention weights),
`mlp` / `fc_out` (return zeros of the hidden size), `fc_in` (returns an empty feature axis).
Pre-norms belong to their sublayer: removing `3.mlp` of a Llama also skips its RMSNorm.
The last module of a group produces the sublayer's contribution to the residual stream.
Adding an architecture is one row here (plus a tiny config in tests/tiny_models.py).

`attn_out` / `mlp_out` name each sublayer's output projection, dotted from the block (a module with
`weight` and maybe `bias`, or a parameter such as a MoE's stacked expert `down_proj`): the map W whose
output is the sublayer's contribution, so `finercut_tui.repair` can fold a patch into it. None where
something non-linear follows it (Gemma 2/3's post-norms): such a family cannot be repaired.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from finercut_tui.errors import FinercutError

Group = tuple[tuple[str, str], ...]  # ((attribute name in the block, role), ...)


@dataclass(frozen=True)
class Architecture:
    blocks: str  # dotted path from the *ForCausalLM module to the ModuleList of blocks
    attn: Group
    mlp: Group
    parallel_residual: Callable[[object], bool] = field(default=lambda config: False)
    # post-norm models apply a norm *after* the residual add; that norm stays when a sublayer goes.
    post_norm: Callable[[object], bool] = field(default=lambda config: False)
    attn_out: str | None = None  # the attention's output projection, dotted from the block
    mlp_out: str | None = None  # the MLP's output projection (down projection), dotted from the block

    def attention_name(self) -> str:
        return next(name for name, role in self.attn if role == "attn")


_LLAMA_LIKE = Architecture(
    blocks="model.layers",
    attn=(("input_layernorm", "norm"), ("self_attn", "attn")),
    mlp=(("post_attention_layernorm", "norm"), ("mlp", "mlp")),
    attn_out="self_attn.o_proj",
    mlp_out="mlp.down_proj",
)
_MIXTRAL = replace(_LLAMA_LIKE, mlp_out="mlp.experts.down_proj")  # (experts, hidden, intermediate)
_SANDWICH = Architecture(  # Gemma 2/3: a norm before and after each sublayer
    blocks="model.layers",
    attn=(("input_layernorm", "norm"), ("self_attn", "attn"), ("post_attention_layernorm", "norm")),
    mlp=(("pre_feedforward_layernorm", "norm"), ("mlp", "mlp"), ("post_feedforward_layernorm", "norm")),
)
_GPT2 = Architecture(
    blocks="transformer.h",
    attn=(("ln_1", "norm"), ("attn", "attn")),
    mlp=(("ln_2", "norm"), ("mlp", "mlp")),
    attn_out="attn.c_proj",  # Conv1D: weight is (in, out)
    mlp_out="mlp.c_proj",
)
_GPT_NEOX = Architecture(
    blocks="gpt_neox.layers",
    attn=(("input_layernorm", "norm"), ("attention", "attn")),
    mlp=(("post_attention_layernorm", "norm"), ("mlp", "mlp")),
    parallel_residual=lambda config: bool(getattr(config, "use_parallel_residual", True)),
    attn_out="attention.dense",
    mlp_out="mlp.dense_4h_to_h",
)
_OPT_PRE_NORM = Architecture(
    blocks="model.decoder.layers",
    attn=(("self_attn_layer_norm", "norm"), ("self_attn", "attn")),
    mlp=(("final_layer_norm", "norm"), ("fc1", "fc_in"), ("fc2", "fc_out")),
    attn_out="self_attn.out_proj",
    mlp_out="fc2",
)
_OPT_POST_NORM = Architecture(  # OPT-350m: norms after the residual add are not part of the sublayer
    blocks="model.decoder.layers",
    attn=(("self_attn", "attn"),),
    mlp=(("fc1", "fc_in"), ("fc2", "fc_out")),
    post_norm=lambda config: True,
)

ARCHITECTURES: dict[str, Architecture] = {
    "llama": _LLAMA_LIKE,  # also SmolLM, Llama 2/3, Vicuna, ...
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "phi3": _LLAMA_LIKE,
    "mixtral": _MIXTRAL,  # `mlp` is the sparse MoE block
    "gemma2": _SANDWICH,
    "gemma3_text": _SANDWICH,
    "gpt2": _GPT2,
    "gpt_neox": _GPT_NEOX,
    "opt": _OPT_PRE_NORM,
}


def architecture_for(config) -> Architecture:
    """The table row for a transformers config, or a one-line error listing what is supported."""
    model_type = getattr(config, "model_type", None)
    arch = ARCHITECTURES.get(model_type)
    if arch is None:
        names = getattr(config, "architectures", None) or [model_type]
        raise FinercutError(
            f"unsupported architecture {names[0]} (model_type {model_type!r}); "
            f"supported model types: {', '.join(sorted(ARCHITECTURES))}"
        )
    if model_type == "opt" and not getattr(config, "do_layer_norm_before", True):
        return _OPT_POST_NORM
    return arch
