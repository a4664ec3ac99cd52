"""Reversible, zero-cost removal of attention / MLP sublayers.

A removed sublayer's modules are swapped for tiny stand-ins that return zeros (a stride-0 view,
no memory, no compute), so the residual stream passes through untouched. The original modules
are kept aside and swapped back on restore: no weight is copied. The model's state is just the
set of removed ids, and `set_removed` moves between any two states exactly.

KV cache: kept attention modules are renumbered 0..K-1 and `generate()` gets a cache with only
those K layers, so a removed attention stores nothing and the sequence length is read from the
first *kept* attention layer (caches read it from layer 0).
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from finercut_tui.domain.sublayers import KINDS, all_sublayers, sort_key, split_id
from finercut_tui.model.adapters import Architecture, architecture_for


class RemovedAttention(nn.Module):
    """Stands in for a removed attention module: zero output, no attention weights, no cache write."""

    def forward(self, hidden_states=None, *args, **kwargs):
        return hidden_states.new_zeros(()).expand_as(hidden_states), None


class ZeroOutput(nn.Module):
    """Stands in for a removed MLP (or its output projection): zeros of the hidden size."""

    def __init__(self, features: int):
        super().__init__()
        self.features = features

    def forward(self, x, *args, **kwargs):
        return x.new_zeros(()).expand(*x.shape[:-1], self.features)

    def extra_repr(self) -> str:
        return f"features={self.features}"


class EmptyFeatures(nn.Module):
    """Stands in for a removed MLP input projection: an empty feature axis, so the activation is free."""

    def forward(self, x, *args, **kwargs):
        return x[..., :0]


def _stand_in(role: str, hidden_size: int) -> nn.Module:
    if role == "norm":
        return nn.Identity()
    if role == "attn":
        return RemovedAttention()
    if role == "fc_in":
        return EmptyFeatures()
    return ZeroOutput(hidden_size)  # "mlp", "fc_out"


def _get_path(root: nn.Module, dotted: str) -> nn.Module:
    return functools.reduce(getattr, dotted.split("."), root)


class PrunableModel:
    """A causal LM whose sublayers can be removed and restored in place."""

    def __init__(self, model: nn.Module, tokenizer=None):
        self.model = model
        self.tokenizer = tokenizer
        self.config = model.config.get_text_config(decoder=True)
        self.arch: Architecture = architecture_for(self.config)
        self.blocks: nn.ModuleList = _get_path(model, self.arch.blocks)
        self.num_blocks = len(self.blocks)
        self.hidden_size = int(self.config.hidden_size)
        self.parallel_residual = self.arch.parallel_residual(self.config)
        self._groups = {"attn": self.arch.attn, "mlp": self.arch.mlp}
        # the original modules of every sublayer, kept whether or not it is currently removed
        self._originals: dict[str, dict[str, nn.Module]] = {
            sid: {name: getattr(self.blocks[b], name) for name, _ in self._groups[kind]}
            for sid in all_sublayers(self.num_blocks)
            for b, kind in [split_id(sid)]
        }
        self._removed: set[str] = set()
        self._install_generate()

    # -- state -----------------------------------------------------------------------------
    @property
    def removed(self) -> frozenset[str]:
        return frozenset(self._removed)

    @property
    def sublayers(self) -> list[str]:
        return all_sublayers(self.num_blocks)

    def original_modules(self, sid: str) -> dict[str, nn.Module]:
        return self._originals[sid]

    def set_removed(self, ids: Iterable[str]) -> None:
        """Make exactly `ids` removed (others restored)."""
        target = set(ids)
        unknown = target - set(self._originals)
        if unknown:
            raise KeyError(f"unknown sublayer ids: {sorted(unknown)}")
        for sid in sorted(self._removed - target, key=sort_key):
            self._swap(sid, remove=False)
        for sid in sorted(target - self._removed, key=sort_key):
            self._swap(sid, remove=True)
        self._removed = target
        self._renumber_attention()

    def remove(self, *ids: str) -> None:
        self.set_removed(self._removed | set(ids))

    def restore(self, *ids: str) -> None:
        self.set_removed(self._removed - set(ids))

    def restore_all(self) -> None:
        self.set_removed(())

    @contextmanager
    def removed_also(self, *ids: str) -> Iterator[None]:
        """Temporarily remove `ids` on top of the current state."""
        before = set(self._removed)
        self.set_removed(before | set(ids))
        try:
            yield
        finally:
            self.set_removed(before)

    def _swap(self, sid: str, remove: bool) -> None:
        block_idx, kind = split_id(sid)
        block = self.blocks[block_idx]
        for name, role in self._groups[kind]:
            module = _stand_in(role, self.hidden_size) if remove else self._originals[sid][name]
            setattr(block, name, module)

    # -- KV cache ----------------------------------------------------------------------------
    def kept_attention_blocks(self) -> list[int]:
        return [b for b in range(self.num_blocks) if f"{b}.attn" not in self._removed]

    def _renumber_attention(self) -> None:
        name = self.arch.attention_name()
        for compact, b in enumerate(self.kept_attention_blocks()):
            self._originals[f"{b}.attn"][name].layer_idx = compact

    def make_cache(self):
        """A DynamicCache with one layer per *kept* attention, of that layer's type (full/sliding)."""
        from transformers import DynamicCache

        config = copy.deepcopy(self.config)
        kept = self.kept_attention_blocks()
        layer_types = getattr(config, "layer_types", None)
        if layer_types is not None:
            config.layer_types = [layer_types[b] for b in kept]
        config.num_hidden_layers = len(kept)
        return DynamicCache(config=config)

    def _install_generate(self) -> None:
        """Wrap this model's `generate` so it uses `make_cache()` unless the caller passes a cache."""
        original = self.model.generate
        if getattr(original, "_finercut_wrapped", False):
            original = original.__wrapped__
        params = inspect.signature(self.model.forward).parameters
        cache_kw = "cache" if "cache" in params else "past_key_values"

        @functools.wraps(original)
        def generate(*args, **kwargs):
            config = kwargs.get("generation_config") or getattr(self.model, "generation_config", None)
            wants_other = kwargs.get("cache_implementation") or getattr(config, "cache_implementation", None)
            if not self._removed or kwargs.get(cache_kw) is not None or wants_other:
                # a static/offloaded cache keeps one layer per block; kept attentions write to the first K
                return original(*args, **kwargs)
            if not self.kept_attention_blocks():
                kwargs["use_cache"] = False  # nothing to cache; positions must come from the full input
            elif kwargs.get("use_cache", True):
                kwargs[cache_kw] = self.make_cache()
            return original(*args, **kwargs)

        generate._finercut_wrapped = True
        self.model.generate = generate

    # -- introspection -----------------------------------------------------------------------
    def sublayer_parameters(self, sid: str) -> int:
        return sum(p.numel() for m in self._originals[sid].values() for p in m.parameters())

    def parameters_by_kind(self) -> dict[str, int]:
        per_kind = {k: 0 for k in KINDS}
        for sid in self.sublayers:
            per_kind[split_id(sid)[1]] += self.sublayer_parameters(sid)
        total = sum(p.numel() for p in self.model.parameters())
        removed_now = sum(self.sublayer_parameters(s) for s in self._removed)
        per_kind["other"] = total - (sum(per_kind[k] for k in KINDS) - removed_now)
        return per_kind

    def block_devices(self) -> list[torch.device]:
        """The device of each block's first parameter (blocks may live on different GPUs)."""
        out = []
        for block in self.blocks:
            hook = getattr(
                block, "_hf_hook", None
            )  # accelerate: where the block runs (weights may be offloaded)
            device = getattr(hook, "execution_device", None)
            if device is None:
                p = next(block.parameters(), None)
                device = p.device if p is not None and p.device.type != "meta" else self.input_device
            out.append(torch.device(device))
        return out

    @property
    def input_device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device
