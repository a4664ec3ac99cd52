"""LLM-Drop importance in one forward pass: 1 - mean cosine(input, output) per module.

For block b with residual input X: attention Y = X + attn(X) (after its residual add); MLP input
is that Y (or X when the attention is removed), output Y + mlp(Y); block: cos(X, block output).
Parallel-residual blocks (GPT-NeoX) have both sublayers read X: attention Y = X + attn(X), MLP
Y = X + mlp(X). Sublayer contributions are taken from the output of each group's last module
(Gemma's post-norm included), via forward hooks, for all modules at once; cosines in fp32,
averaged over every calibration token.

As LLM-Drop does (`get_layer_similarities`, drop_norm): a sublayer's Y for its score is
X.float() + f(X).float(), cast first and added in fp32, not the model-dtype sum cast afterwards (the
same in fp32, not in bf16/fp16). The MLP's X is what the model itself feeds it: the residual after
attention as summed in the model's dtype. A block's output is the block's own, cast to fp32.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from finercut_tui.errors import FinercutError, is_out_of_memory
from finercut_tui.model.surgery import PrunableModel
from finercut_tui.search.faults import OomPlan


@dataclass
class Similarities:
    attn: dict[int, float] = field(default_factory=dict)  # block -> mean cosine
    mlp: dict[int, float] = field(default_factory=dict)
    block: dict[int, float] = field(default_factory=dict)
    # residual stream entering each block and leaving the last one, at each sample's last token
    last_token: list[torch.Tensor] = field(default_factory=list)  # L+1 tensors of shape (N, d)


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def default_batch_size(input_ids: torch.Tensor, tokens_per_forward: int = 32768) -> int:
    """LLM-Drop scores 256 x 2048 tokens: one forward over all of them would not fit a GPU."""
    return max(1, min(int(input_ids.shape[0]), tokens_per_forward // int(input_ids.shape[1])))


def measure_similarities(
    pm: PrunableModel,
    input_ids: torch.Tensor,
    batch_size: int | None = None,
    log=lambda message: None,
    world=None,
) -> Similarities:
    """All module similarities of the current model; halves the batch on out-of-memory.

    With an active `world` (search/distributed.py) each rank measures its contiguous slice of the
    rows and the sums are all-reduced: equal to one process up to float summation order."""
    if pm.arch.post_norm(pm.config):
        raise FinercutError(
            "similarity drop needs a pre-norm model (the residual stream is normalised after each sublayer in "
            "this post-norm OPT); use --method finercut"
        )
    batch = batch_size or default_batch_size(input_ids)
    faults = OomPlan.from_env()
    if world is not None and world.active:
        return _measure_world(pm, input_ids, batch, world, log, faults)
    sums, last_token, tokens = _sums_fitting(pm, input_ids, batch, log, faults)
    result = Similarities(last_token=[torch.cat([t.cpu() for t in parts]) for parts in last_token])
    for (kind, b), parts in sums.items():
        getattr(result, kind)[b] = float(sum(p.cpu() for p in parts)) / tokens
    return result


def _sums_fitting(pm: PrunableModel, input_ids: torch.Tensor, batch: int, log, faults):
    """`_sums`, halving the batch on out-of-memory down to 1 (under torchrun each rank on its own:
    the batch size only changes the summation order)."""
    while True:
        try:
            return _sums(pm, input_ids, batch, faults)
        except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
            if not is_out_of_memory(exc) or batch == 1:
                raise
            batch = max(1, batch // 2)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            log(f"out of memory measuring similarities: retrying with batches of {batch} samples")


def _measure_world(
    pm: PrunableModel, input_ids: torch.Tensor, batch: int, world, log, faults
) -> Similarities:
    """This rank's rows, then the float64 sums all-reduced and the last-token states gathered."""
    from finercut_tui.search.distributed import rows_of

    rows = rows_of(int(input_ids.shape[0]), world.rank, world.size)
    mine = input_ids[rows]
    error, sums, last_token = None, {}, [[] for _ in range(pm.num_blocks + 1)]
    try:
        if mine.shape[0]:
            sums, last_token, _ = _sums_fitting(pm, mine, batch, log, faults)
    except Exception as exc:  # every rank reaches the collectives below, then all raise
        error = exc
    world.agree(error)
    keys = sorted({k for ks in world.all_gather(sorted(sums)) for k in ks})
    local = torch.zeros(len(keys), dtype=torch.float64)
    for i, key in enumerate(keys):
        if key in sums:
            local[i] = sum(p.cpu() for p in sums[key])
    total = world.all_reduce_sum(local)
    states = [torch.cat([t.cpu() for t in parts]) if parts else None for parts in last_token]
    gathered = world.all_gather(states)  # in rank order = row order
    result = Similarities(
        last_token=[torch.cat([s[i] for s in gathered if s[i] is not None]) for i in range(pm.num_blocks + 1)]
    )
    tokens = int(input_ids.numel())
    for i, (kind, b) in enumerate(keys):
        getattr(result, kind)[b] = float(total[i]) / tokens
    return result


def _sums(pm: PrunableModel, input_ids: torch.Tensor, batch: int, faults: OomPlan | None = None):
    """Per-module device sums of the token cosines, the last-token states per block, and the tokens."""
    L = pm.num_blocks
    sums: dict[tuple[str, int], list[torch.Tensor]] = {}  # summed on the device; one sync at the end
    state: dict[int, dict[str, torch.Tensor]] = {}
    last_token: list[list[torch.Tensor]] = [[] for _ in range(L + 1)]

    def add(kind: str, b: int, x: torch.Tensor, y: torch.Tensor) -> None:
        cos = F.cosine_similarity(x.float(), y.float(), dim=-1)
        sums.setdefault((kind, b), []).append(cos.double().sum())

    def add_residual(kind: str, b: int, x: torch.Tensor, fx: torch.Tensor) -> None:
        x32 = x.float()
        add(kind, b, x32, x32 + fx.view_as(x).float())  # LLM-Drop: cast, then add in fp32

    def on_input(b):
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            state[b] = {"x": x, "mid": x}
            last_token[b].append(x[:, -1].float())

        return hook

    def on_attn(b):
        def hook(module, args, output):
            x = state[b]["x"]
            fx = _first(output)
            add_residual("attn", b, x, fx)
            if not pm.parallel_residual:
                state[b]["mid"] = x + fx.view_as(x)  # the MLP's input, as the model sums it

        return hook

    def on_mlp(b):
        def hook(module, args, output):
            add_residual("mlp", b, state[b]["mid"], _first(output))

        return hook

    def on_output(b):
        def hook(module, args, kwargs, output):
            out = _first(output)
            add("block", b, state.pop(b)["x"], out)
            if b == L - 1:
                last_token[L].append(out[:, -1].float())

        return hook

    handles = []
    for b, block in enumerate(pm.blocks):
        handles.append(block.register_forward_pre_hook(on_input(b), with_kwargs=True))
        handles.append(block.register_forward_hook(on_output(b), with_kwargs=True))
        for kind, hook in (("attn", on_attn(b)), ("mlp", on_mlp(b))):
            if f"{b}.{kind}" not in pm.removed:
                group = pm.arch.attn if kind == "attn" else pm.arch.mlp
                handles.append(pm.original_modules(f"{b}.{kind}")[group[-1][0]].register_forward_hook(hook))
    ids = input_ids.to(pm.input_device)
    try:
        with torch.inference_mode():
            for start in range(0, ids.shape[0], batch):
                if faults is not None:
                    faults.tick()
                pm.model(input_ids=ids[start : start + batch], use_cache=False, logits_to_keep=1)
    finally:
        for h in handles:
            h.remove()
    return sums, last_token, ids.numel()


def run_gaps(last_token: list[torch.Tensor], n: int, metric: str = "angular-gap") -> dict[int, float]:
    """Per start b, how far the last token's h_b and h_{b+n} lie apart, averaged over samples:
    arccos(cos)/pi for "angular-gap" (Gromov et al.), 1 - cos for "cosine-gap" (ReplaceMe)."""
    L = len(last_token) - 1
    out = {}
    for b in range(L - n + 1):
        cos = F.cosine_similarity(last_token[b].double(), last_token[b + n].double(), dim=-1).clamp(-1.0, 1.0)
        gap = torch.arccos(cos) / torch.pi if metric == "angular-gap" else 1.0 - cos
        out[b] = float(gap.mean())
    return out


def angular_gap(last_token: list[torch.Tensor], n: int) -> dict[int, float]:
    """Gromov et al.: arccos(cos(h_b, h_{b+n})) / pi at the last token, averaged over samples, per start b."""
    return run_gaps(last_token, n, "angular-gap")
