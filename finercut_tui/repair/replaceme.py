"""ReplaceMe's block selection (Shopkhoev et al., arXiv 2505.02819; code mts-ai/ReplaceMe).

Among the contiguous runs of n blocks [b, b+n), pick the one whose first block's input h_b and last
block's output h_{b+n} are closest on the dense model: the smallest mean over calibration samples of
the cosine distance 1 - cos(h_b, h_{b+n}) at each sample's last token, as ReplaceMe's code compares
the last non-padded token (calibration rows here carry no padding). `token="all"` averages over every
token instead, `distance="angular"` uses arccos(cos)/pi (Gromov et al.'s angular distance). The run
is then cut and repaired with `repair_model` (ReplaceMe's least-squares variant exactly).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from finercut_tui.errors import FinercutError
from finercut_tui.model.surgery import PrunableModel

DISTANCES = ("cosine", "angular")
TOKENS = ("last", "all")


@dataclass(frozen=True)
class BlockChoice:
    start: int  # first block of the chosen run
    n: int
    distance: float  # its distance
    distances: dict[int, float] = field(default_factory=dict)  # every start b -> distance of [b, b+n)

    @property
    def blocks(self) -> list[int]:
        return list(range(self.start, self.start + self.n))

    @property
    def removed(self) -> list[str]:
        """The run as session ids (`<b>.block`), front to back."""
        return [f"{b}.block" for b in self.blocks]


def _distance(x: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    cos = torch.nn.functional.cosine_similarity(x.float(), y.float(), dim=-1).clamp(-1.0, 1.0)
    return 1.0 - cos if kind == "cosine" else torch.arccos(cos) / math.pi


def replaceme_blocks(
    pm: PrunableModel,
    input_ids: torch.Tensor,
    n: int,
    *,
    batch_size: int | None = None,
    token: str = "last",
    distance: str = "cosine",
) -> BlockChoice:
    """The contiguous run of `n` blocks to cut, ReplaceMe's way, measured on the dense model
    (`pm`'s removed set is restored afterwards). Ties go to the earliest run."""
    if not 1 <= n < pm.num_blocks:
        raise FinercutError(f"ReplaceMe cuts 1..{pm.num_blocks - 1} blocks of this model, not {n}")
    if token not in TOKENS or distance not in DISTANCES:
        raise ValueError(f"token must be one of {TOKENS}, distance one of {DISTANCES}")
    blocks = pm.blocks
    count = pm.num_blocks
    sums = torch.zeros(count - n + 1, dtype=torch.float64)
    seen = 0
    batch = batch_size or int(input_ids.shape[0])
    before = pm.removed
    states: list[torch.Tensor | None] = [None] * (count + 1)

    def on_input(b):
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            states[b] = x[:, -1] if token == "last" else x

        return hook

    def on_last_output(module, args, output):
        x = output[0] if isinstance(output, tuple) else output
        states[count] = x[:, -1] if token == "last" else x

    handles = [blocks[b].register_forward_pre_hook(on_input(b), with_kwargs=True) for b in range(count)]
    handles.append(blocks[count - 1].register_forward_hook(on_last_output))
    try:
        pm.restore_all()
        with torch.no_grad():
            for i in range(0, int(input_ids.shape[0]), batch):
                ids = input_ids[i : i + batch].to(pm.input_device)
                pm.model(input_ids=ids, use_cache=False)
                for b in range(count - n + 1):
                    x, y = states[b], states[b + n]
                    sums[b] += float(_distance(x, y.to(x.device), distance).double().sum())
                seen += int(ids.shape[0]) * (1 if token == "last" else int(ids.shape[1]))
    finally:
        for h in handles:
            h.remove()
        pm.set_removed(before)
    means = (sums / seen).tolist()
    start = min(range(len(means)), key=lambda b: (means[b], b))
    return BlockChoice(start, n, means[start], dict(enumerate(means)))
