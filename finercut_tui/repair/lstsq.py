"""Training-free repair: a least-squares linear patch per run of removed sublayers, folded into weights.

Notation (a pre-norm decoder, sequential residual): the residual stream before sublayer s is S_s,
and s adds its branch output z_s = g_s W_s (+ b_s), W_s its output projection (the adapter table's
`attn_out` / `mlp_out`: o_proj, down_proj, c_proj, ...). For a run R of removed sublayers (runs.py)
whose nearest kept sublayer before it is p:

- D: the dense model's stream right after R;
- P: the pruned model's stream before p (with the patches of earlier runs applied);
- z_p: p's branch output in that model, so the pruned stream after R is P + z_p.

T = argmin_T ||P + z_p T - D||^2 + lam ||T - I||^2 = (G + lam I)^-1 (C + lam I), with G = z_p^T z_p and
C = z_p^T (D - P) summed over every calibration token in float64 (N x d activations are never held).
Then W_p <- W_p T and b_p <- b_p T, so p now writes z_p T. No parameter is added: every export format
holds. The ridge is relative: lam = ridge * trace(G) / d (ridge times the mean eigenvalue of G), so
its meaning does not change with the token count or the activations' scale. The default, 0.1, was
the best of 0, 1e-3, 1e-2, 0.1 and 1 on held-out text for SmolLM2-135M at 10 removals (README);
`ridge=0` is plain least squares and needs at least d tokens.

Runs are handled front to back. One forward of the dense model and about one of the pruned model are
spent in all: each side keeps, per calibration batch, the input of the block it reached (the dense
side the block after the last run end, the pruned side the patched block, whose output the patch
changes) and the next run starts from there through the model's own forward (the blocks before are
swapped for a stand-in that returns the cached input, as the search's prefix cache does).

Parallel residual (GPT-NeoX): both branches of a block read the block input S_b. The order stays
attn, mlp, and the stream "between" them is the sum S_b + z_attn: at block boundaries it is the real
stream, so a patch that ends a run at a block boundary matches the dense stream exactly as in a
sequential model; a run that ends at an attention whose MLP is kept is matched at that virtual point,
and the MLP still reads the unpatched block input.

A run that starts at 0.attn has no kept sublayer before it and gets no patch (noted in the result).
Refused in one line: a family without a foldable projection in the adapter table (Gemma 2/3 put a
norm after it), post-norm models (OPT-350m), and fewer calibration tokens than the hidden size
when the ridge is 0.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from finercut_tui.domain.repairs import DEFAULT_RIDGE, OBJECTIVE  # torch-free: the CLI reads them too
from finercut_tui.domain.sublayers import expand, sort_key, split_id
from finercut_tui.errors import FinercutError
from finercut_tui.model.surgery import PrunableModel
from finercut_tui.repair.projections import check_calibration, check_repairable, output_projection
from finercut_tui.repair.runs import Run, removal_runs
from finercut_tui.search.scoring import CachedPrefix


# -- results -----------------------------------------------------------------------------------------
@dataclass
class Patch:
    """One run's patch: where it went, and the stream error before and after, relative to ||D||.

    `relative` = ||P + z_p T - D|| / ||P + z_p - D||: the share of the unpatched error left."""

    run: Run
    sublayer: str | None  # the patched sublayer; None: the run starts at 0.attn, not patched
    tokens: int = 0
    lam: float | None = None  # the absolute ridge used
    error_before: float | None = None  # ||P + z_p - D|| / ||D||
    error_after: float | None = None  # ||P + z_p T - D|| / ||D||
    note: str | None = None
    t: torch.Tensor | None = None  # the map (float64, CPU) when asked for

    @property
    def relative(self) -> float | None:
        if self.error_before is None or self.error_after is None or self.error_before == 0:
            return None
        return self.error_after / self.error_before


@dataclass
class RepairOutcome:
    patches: list[Patch]
    ridge: float
    tokens: int
    seconds: float
    objective: str = OBJECTIVE
    removed: list[str] = field(default_factory=list)

    @property
    def patched(self) -> list[Patch]:
        return [p for p in self.patches if p.sublayer is not None]


# -- statistics --------------------------------------------------------------------------------------
class Stats:
    """G = z^T z, C = z^T (D - P), ||D - P||^2 and ||D||^2, in float64, summed over tokens."""

    def __init__(self, d: int, device: torch.device):
        self.g = torch.zeros(d, d, dtype=torch.float64, device=device)
        self.c = torch.zeros(d, d, dtype=torch.float64, device=device)
        self.r2 = 0.0
        self.d2 = 0.0
        self.tokens = 0

    def add(self, p: torch.Tensor, z: torch.Tensor, d: torch.Tensor) -> None:
        dev = self.g.device
        d_ = d.reshape(-1, d.shape[-1]).to(dev, torch.float64)
        z_ = z.reshape(-1, z.shape[-1]).to(dev, torch.float64)
        r = d_ - p.reshape(-1, p.shape[-1]).to(dev, torch.float64)
        self.g.addmm_(z_.T, z_)
        self.c.addmm_(z_.T, r)
        self.r2 += float((r * r).sum())
        self.d2 += float((d_ * d_).sum())
        self.tokens += int(z_.shape[0])

    def error2(self, t: torch.Tensor | None) -> float:
        """||z T - (D - P)||^2 (T = I when None), from the sums alone."""
        if t is None:
            value = float(torch.trace(self.g) - 2 * torch.trace(self.c)) + self.r2
        else:
            value = float(((self.g @ t) * t).sum() - 2 * (self.c * t).sum()) + self.r2
        return max(value, 0.0)

    def solve(self, ridge: float, what: str) -> tuple[torch.Tensor, float]:
        """T = (G + lam I)^-1 (C + lam I) with lam = ridge * trace(G) / d; returns (T, lam)."""
        n = self.g.shape[0]
        eye = torch.eye(n, dtype=torch.float64, device=self.g.device)
        lam = ridge * float(torch.trace(self.g)) / n
        try:
            t = torch.linalg.solve(self.g + lam * eye, self.c + lam * eye)
        except RuntimeError as exc:  # torch.linalg.LinAlgError: singular
            raise FinercutError(
                f"the least-squares patch for {what} is singular on this calibration set "
                f"({self.tokens} tokens): pass --ridge > 0 or more calibration tokens"
            ) from exc
        if not bool(torch.isfinite(t).all()):
            raise FinercutError(
                f"the least-squares patch for {what} is not finite: pass --ridge > 0 or more calibration tokens"
            )
        return t, lam


# -- running the model from a cached block input ----------------------------------------------------
class _Stop(Exception):
    """Raised after the last block a walk needs: nothing later runs."""


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _branch_name(pm: PrunableModel, kind: str) -> str:
    """The group module whose output is the sublayer's contribution (the last one that is not a norm)."""
    group = pm.arch.attn if kind == "attn" else pm.arch.mlp
    return [name for name, role in group if role != "norm"][-1]


class _Walker:
    """Walks the calibration batches through the model's blocks, keeping one block input per batch."""

    def __init__(self, pm: PrunableModel, input_ids: torch.Tensor, batch_size: int):
        self.pm = pm
        self.ids = input_ids
        n = int(input_ids.shape[0])
        self.batches = [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
        self.frontier = 0  # the block whose input `cached` holds (0: run from the embeddings)
        self.cached: list[torch.Tensor | None] = [None] * len(self.batches)
        self._next: list[tuple[int, torch.Tensor | None]] = [(0, None)] * len(self.batches)
        self._stub = CachedPrefix()
        self.tuple_outputs = False

    def walk(self, i: int, to_block: int, keep: str) -> None:
        """Run batch i from the frontier through block `to_block`; afterwards the frontier will be
        `to_block` (keep="input") or `to_block + 1` (keep="output"), once `commit` is called."""
        pm, blocks, f = self.pm, self.pm.blocks, self.frontier
        kept: dict[str, torch.Tensor] = {}

        def keep_input(module, args, kwargs):
            kept["x"] = (args[0] if args else kwargs["hidden_states"]).detach()

        def stop(module, args, output):
            self.tuple_outputs = isinstance(output, tuple)
            if keep == "output":
                kept["x"] = _first(output).detach()
            raise _Stop

        handles = []
        if keep == "input":
            handles.append(blocks[to_block].register_forward_pre_hook(keep_input, with_kwargs=True))
        handles.append(blocks[to_block].register_forward_hook(stop))
        originals = [blocks[j] for j in range(f)]
        try:
            if f > 0:
                value = self.cached[i]
                assert value is not None
                self._stub.value = value
                self._stub.as_tuple = self.tuple_outputs
                for j in range(f):
                    blocks[j] = self._stub
            with contextlib.suppress(_Stop):
                pm.model(input_ids=self.ids[self.batches[i]].to(pm.input_device), use_cache=False)
        finally:
            for j, module in enumerate(originals):
                blocks[j] = module
            self._stub.value = None
            for h in handles:
                h.remove()
        self._next[i] = (to_block if keep == "input" else to_block + 1, kept.get("x"))

    def commit(self) -> None:
        """Every batch has walked: move the frontier to where the walks left it."""
        frontiers = {f for f, _ in self._next}
        assert len(frontiers) == 1, frontiers
        self.frontier = frontiers.pop()
        self.cached = [x for _, x in self._next]


@contextlib.contextmanager
def _hooks(pairs: Iterable[tuple[nn.Module, str, Callable]]):
    handles = []
    try:
        for module, kind, fn in pairs:
            if kind == "pre":
                handles.append(module.register_forward_pre_hook(fn, with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(fn))
        yield
    finally:
        for h in handles:
            h.remove()


def _capture_point(pm: PrunableModel, block: int, after: str, store: dict[str, torch.Tensor]):
    """Hooks that leave in store["s"] the stream after sublayer `block.after` (`after` = attn: block
    input + attention output; mlp: the block output), and in store["in"] the block input."""
    blk = pm.blocks[block]

    def on_input(module, args, kwargs):
        store["in"] = (args[0] if args else kwargs["hidden_states"]).detach()

    def on_attn(module, args, output):
        store["attn"] = _first(output).detach()

    def on_output(module, args, output):
        store["out"] = _first(output).detach()

    pairs = [(blk, "pre", on_input), (blk, "post", on_output)]
    attn_sid = f"{block}.attn"
    if attn_sid not in pm.removed:
        pairs.append((getattr(blk, _branch_name(pm, "attn")), "post", on_attn))
    return pairs


def _stream_after(store: dict[str, torch.Tensor], after: str) -> torch.Tensor:
    if after == "mlp":
        return store["out"]
    x = store["in"]
    return x + store["attn"].to(x.dtype) if "attn" in store else x


def _capture_branch(pm: PrunableModel, sid: str, store: dict[str, torch.Tensor]):
    """Hooks that leave in store the pruned side of `sid`'s patch: "z" (its branch output) and "p"
    (the stream before it: the block input, plus the attention output when `sid` is an MLP)."""
    block, kind = split_id(sid)
    blk = pm.blocks[block]

    def on_input(module, args, kwargs):
        store["in"] = (args[0] if args else kwargs["hidden_states"]).detach()

    def on_attn(module, args, output):
        store["attn"] = _first(output).detach()

    def on_branch(module, args, output):
        store["z"] = _first(output).detach()

    pairs = [(blk, "pre", on_input), (getattr(blk, _branch_name(pm, kind)), "post", on_branch)]
    if kind == "mlp" and f"{block}.attn" not in pm.removed:
        pairs.append((getattr(blk, _branch_name(pm, "attn")), "post", on_attn))
    return pairs


def _stream_before(store: dict[str, torch.Tensor], kind: str) -> torch.Tensor:
    x = store["in"]
    if kind == "mlp" and "attn" in store:
        return x + store["attn"].to(x.dtype)
    return x


# -- the repair --------------------------------------------------------------------------------------
def _patch_run(
    pm: PrunableModel, ids, run: Run, dense, pruned, devices, ridge: float, keep_maps: bool
) -> Patch:
    """Fit one run's T over every calibration batch (dense target D, pruned P and z_p), and fold it."""
    projection = output_projection(pm, run.patched)
    end_block, end_kind = split_id(run.last)
    p_block, p_kind = split_id(run.patched)
    stats = Stats(pm.hidden_size, devices[p_block])
    for i in range(len(dense.batches)):
        pm.set_removed(())  # the dense model (with no patch in the blocks it runs)
        target: dict[str, torch.Tensor] = {}
        with _hooks(_capture_point(pm, end_block, end_kind, target)), torch.no_grad():
            dense.walk(i, end_block, keep="output")
        d = _stream_after(target, end_kind)
        pm.set_removed(ids)
        side: dict[str, torch.Tensor] = {}
        with _hooks(_capture_branch(pm, run.patched, side)), torch.no_grad():
            pruned.walk(i, p_block, keep="input")
            stats.add(_stream_before(side, p_kind), side["z"], d)
    dense.commit()
    pruned.commit()
    t, lam = stats.solve(ridge, f"{run.describe()} (folded into {run.patched})")
    projection.fold(t)
    norm = math.sqrt(stats.d2) or 1.0
    return Patch(
        run,
        run.patched,
        tokens=stats.tokens,
        lam=lam,
        error_before=math.sqrt(stats.error2(None)) / norm,
        error_after=math.sqrt(stats.error2(t)) / norm,
        t=t.cpu() if keep_maps else None,
    )


def repair_model(
    pm: PrunableModel,
    input_ids: torch.Tensor,
    removed: Iterable[str],
    *,
    ridge: float = DEFAULT_RIDGE,
    batch_size: int | None = None,
    keep_maps: bool = False,
    progress: Callable[[str], None] = lambda message: None,
) -> RepairOutcome:
    """Fit and fold one least-squares patch per run of `removed` (ids, `.block` allowed), in place.

    `input_ids` (samples x seq_len) are the calibration tokens; `batch_size` samples go through the
    model at a time (default: all). Afterwards `pm` has exactly `removed` removed and the patched
    weights. `keep_maps` keeps each T (float64, CPU) in its `Patch`.
    """
    start = time.perf_counter()
    ids = sorted(set(expand(removed)), key=sort_key)
    if not ids:
        raise FinercutError("nothing is removed: there is nothing to repair")
    runs = removal_runs(ids, pm.num_blocks)
    check_repairable(pm, runs)
    tokens = int(input_ids.numel())
    check_calibration(tokens, pm.hidden_size, ridge)
    batch = batch_size or int(input_ids.shape[0])
    dense = _Walker(pm, input_ids, batch)
    pruned = _Walker(pm, input_ids, batch)
    devices = pm.block_devices()
    patches: list[Patch] = []
    try:
        for run in runs:
            if run.patched is None:
                patches.append(
                    Patch(run, None, note="no kept sublayer before it (it starts at 0.attn): not patched")
                )
                continue
            patch = _patch_run(pm, ids, run, dense, pruned, devices, ridge, keep_maps)
            patches.append(patch)
            progress(
                f"patched {run.patched} for {run.describe()}: stream error {patch.error_before:.4f} -> "
                f"{patch.error_after:.4f} of ||D|| ({100 * (patch.relative or 0):.1f}% left)"
            )
    finally:
        pm.set_removed(ids)
    return RepairOutcome(
        patches=patches,
        ridge=ridge,
        tokens=tokens,
        seconds=time.perf_counter() - start,
        removed=ids,
    )


@contextlib.contextmanager
def repaired(
    pm: PrunableModel,
    input_ids: torch.Tensor,
    removed: Iterable[str],
    *,
    ridge: float = DEFAULT_RIDGE,
    batch_size: int | None = None,
    progress: Callable[[str], None] = lambda message: None,
):
    """A what-if: `pm` repaired for `removed` inside the block (yields the `RepairOutcome`); on exit
    every patched projection gets its weights back and the removed set is what it was before. For
    evaluating a model repaired next to the same model unrepaired (the search goes on unrepaired)."""
    before = pm.removed
    ids = sorted(set(expand(removed)), key=sort_key)
    saved = []
    for run in removal_runs(ids, pm.num_blocks) if ids else []:
        if run.patched is not None:
            proj = output_projection(pm, run.patched)
            saved.append(
                (
                    proj,
                    proj.weight.detach().clone(),
                    None if proj.bias is None else proj.bias.detach().clone(),
                )
            )
    try:
        yield repair_model(pm, input_ids, ids, ridge=ridge, batch_size=batch_size, progress=progress)
    finally:
        with torch.no_grad():
            for proj, weight, bias in saved:
                proj.weight.copy_(weight)
                if bias is not None:
                    proj.bias.copy_(bias)
        pm.set_removed(before)
