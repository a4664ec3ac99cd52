"""The output head in vocabulary slices, for scoring on CPU.

Every candidate evaluation needs the full logits, so the head runs once per candidate: for
SmolLM2-135M its 49152 x 576 matrix is a fifth of the weights and the largest single cost of a
late-block candidate. MKL's fp32 GEMM runs such a wide, shallow matrix about a quarter faster in
slices of 1024 rows (measured on a 2-core AMD EPYC): each slice of the weight stays in cache
while every token uses it. Each slice computes the same dot products, so the logits are the
same (bitwise on that machine; tests/test_sliced_head.py checks them to 1e-6).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

SLICE_ROWS = 1024


class SlicedHead(nn.Module):
    """Computes `head(x)` one block of `rows` vocabulary entries at a time."""

    def __init__(self, head: nn.Linear, rows: int = SLICE_ROWS):
        super().__init__()
        self.head = head
        self.rows = rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.head.weight, self.head.bias
        if torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad):
            return self.head(x)  # out= products cannot be differentiated; scoring never needs that
        rows = x.reshape(-1, x.shape[-1])
        out = rows.new_empty(rows.shape[0], weight.shape[0])
        for i in range(0, weight.shape[0], self.rows):
            part = out[:, i : i + self.rows]  # written in place: no concatenation copy
            if bias is None:
                torch.mm(rows, weight[i : i + self.rows].t(), out=part)
            else:
                torch.addmm(bias[i : i + self.rows], rows, weight[i : i + self.rows].t(), out=part)
        return out.view(*x.shape[:-1], weight.shape[0])


def _head_slot(model: nn.Module) -> tuple[nn.Module, str, nn.Linear] | None:
    """(parent, attribute, head) when the head is a plain fp32 CPU linear worth slicing."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if type(head) is not nn.Linear or hasattr(head, "_hf_hook"):
        return None
    weight = head.weight
    if weight.device.type != "cpu" or weight.dtype != torch.float32 or weight.shape[0] < 4 * SLICE_ROWS:
        return None
    for name, module in model.named_modules():
        if module is head and name:
            parent_name, _, attribute = name.rpartition(".")
            parent = functools.reduce(getattr, parent_name.split("."), model) if parent_name else model
            return parent, attribute, head
    return None


class HeadSlicer:
    """Finds the head once; `with slicer():` runs the model with it sliced (a no-op unless the
    head is a plain fp32 linear on CPU)."""

    def __init__(self, model: nn.Module):
        self.slot = _head_slot(model)
        self._sliced = None if self.slot is None else SlicedHead(self.slot[2])

    @contextmanager
    def __call__(self) -> Iterator[None]:
        if self.slot is None:
            yield
            return
        parent, attribute, head = self.slot
        setattr(parent, attribute, self._sliced)
        try:
            yield
        finally:
            setattr(parent, attribute, head)
