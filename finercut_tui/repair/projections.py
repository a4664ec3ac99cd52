"""The output projection a repair patch is folded into, and what a repair refuses before it starts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from finercut_tui.domain.repairs import DEFAULT_RIDGE
from finercut_tui.domain.sublayers import split_id
from finercut_tui.errors import FinercutError
from finercut_tui.model.surgery import PrunableModel
from finercut_tui.repair.runs import Run


@dataclass
class Projection:
    """Sublayer `sid`'s output projection: `weight` as F.linear takes it, (..., out, in) (a MoE's
    stacked experts have a leading expert axis), or (in, out) for GPT-2's Conv1D; and its bias."""

    sid: str
    name: str  # dotted from the block
    weight: torch.Tensor
    bias: torch.Tensor | None
    conv1d: bool

    def fold(self, t: torch.Tensor) -> None:
        """Make the projection write z T instead of z: W <- W T (math layout), b <- b T."""
        w = self.weight
        t64 = t.to(device=w.device, dtype=torch.float64)
        with torch.no_grad():
            folded = w.double() @ t64 if self.conv1d else t64.T @ w.double()
            w.copy_(folded.to(w.dtype))
            if self.bias is not None:
                self.bias.copy_((self.bias.double() @ t64.to(self.bias.device)).to(self.bias.dtype))


def _family(pm: PrunableModel) -> str:
    return str(getattr(pm.config, "model_type", None) or type(pm.model).__name__)


def output_projection(pm: PrunableModel, sid: str) -> Projection:
    """The output projection of `sid` (kept or not), or a one-line error when the table has none."""
    block, kind = split_id(sid)
    path = pm.arch.attn_out if kind == "attn" else pm.arch.mlp_out
    if path is None:
        raise FinercutError(
            f"repair is not supported for {_family(pm)}: the adapter table names no foldable output "
            f"projection for its {kind} sublayers (a norm follows it), so a patch cannot be folded in"
        )
    head, _, rest = path.partition(".")
    obj = pm.original_modules(sid)[head]
    for part in rest.split(".") if rest else ():
        obj = getattr(obj, part)
    if isinstance(obj, nn.Parameter):
        weight, bias, conv1d = obj, None, False
    else:
        weight, bias = obj.weight, getattr(obj, "bias", None)
        conv1d = type(obj).__name__ == "Conv1D"
    out_dim = weight.shape[-1] if conv1d else weight.shape[-2]
    if out_dim != pm.hidden_size:
        raise FinercutError(
            f"repair: {path} of {sid} writes {out_dim} features, not the hidden size {pm.hidden_size}: "
            "the adapter table's output projection is wrong for this model"
        )
    return Projection(sid, path, weight, bias, conv1d)


def check_repairable(pm: PrunableModel, runs: Sequence[Run] | None = None) -> None:
    """Raise a one-line FinercutError when this family cannot be repaired (or `runs` cannot)."""
    if pm.arch.post_norm(pm.config):
        raise FinercutError(
            f"repair is not supported for {_family(pm)} with norms after the residual add (post-norm): "
            "the stream a patch would match is normalised after every sublayer"
        )
    kinds = {split_id(r.patched)[1] for r in runs or () if r.patched} if runs is not None else {"attn", "mlp"}
    for kind in sorted(kinds):
        output_projection(pm, f"0.{kind}")


def check_ridge(ridge: float) -> None:
    if not math.isfinite(ridge) or ridge < 0:
        raise FinercutError(f"--ridge {ridge} must be a finite number >= 0 (default {DEFAULT_RIDGE})")


def check_calibration(tokens: int, hidden_size: int, ridge: float) -> None:
    """Plain least squares (ridge 0) needs at least as many tokens as the hidden size."""
    check_ridge(ridge)
    if ridge == 0 and tokens < hidden_size:
        raise FinercutError(
            f"the calibration set has {tokens} tokens, fewer than the hidden size {hidden_size}: least squares "
            f"needs at least {hidden_size} tokens (raise --calib-samples / --seq-len), or pass --ridge > 0"
        )
