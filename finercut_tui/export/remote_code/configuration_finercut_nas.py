"""Nemotron-NAS / DeciLM configuration, as written by finercut-tui: a LlamaConfig plus `block_configs`.

`block_configs[i]` is ``{"attention": {"no_op", "replace_with_linear", "n_heads_in_group"},
"ffn": {"no_op", "replace_with_linear", "ffn_mult"}}``. Sections read both as dicts and as attributes
(``block.attention.no_op``), the way vLLM's and SGLang's ``nemotron_nas`` code reads them.
"""

from transformers import LlamaConfig


class BlockSection(dict):
    """A dict whose keys read as attributes too (a missing key is a missing attribute)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def ffn_mult_to_intermediate_size(ffn_mult: float, hidden_size: int) -> int:
    """The readers' rule: int(2 * ffn_mult * hidden / 3), rounded up to a multiple of 256."""
    size = int(2 * ffn_mult * hidden_size / 3)
    return size if size % 256 == 0 else size + 256 - size % 256


def _block(value):
    return BlockSection({k: BlockSection(v) if isinstance(v, dict) else v for k, v in dict(value).items()})


class DeciLMConfig(LlamaConfig):
    model_type = "nemotron-nas"

    block_configs: list | None = None

    def __post_init__(self, **kwargs):
        self.block_configs = [_block(b) for b in self.block_configs or []]
        super().__post_init__(**kwargs)

    def to_dict(self):
        out = super().to_dict()
        out["block_configs"] = [{k: dict(v) for k, v in b.items()} for b in self.block_configs]
        return out
