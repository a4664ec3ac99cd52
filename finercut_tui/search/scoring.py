"""Scoring candidates fast: reference logits once, block inputs cached per greedy step.

Prefix caching: all candidates in block b share the residual stream entering block b. Once per
greedy step we run the current pruned model with pre-hooks that keep every block's input (from
the first block the last change touched, stopping before the head); a candidate in block b is
then scored by running the real model's forward with blocks 0..b-1 swapped for a stand-in that
returns the cached input of block b. Embeddings, masks, the final norm, soft-capping and the head
all run through the model's own code, so this works for every architecture in the adapter table
and with blocks spread over devices (`device_map="auto"`).

On CPU the head runs in vocabulary slices (sliced_head.py) and freed memory stays in the process
(allocator.py): together they take about a quarter off a late-block candidate on SmolLM2-135M.

For developers: FINERCUT_FAULT_OOM_AT makes the scorer raise a CUDA out-of-memory error at chosen
forwards, so the batch-halving fallback can be caused on any machine (search/faults.py). Unset, it
does nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from finercut_tui.domain.sublayers import expand, split_id
from finercut_tui.errors import is_out_of_memory
from finercut_tui.model.surgery import PrunableModel
from finercut_tui.search.allocator import keep_freed_memory
from finercut_tui.search.faults import OomPlan
from finercut_tui.search.metrics import NEEDS_REFERENCE, TOKEN_LOCAL, Reference, get_metric, prepare_reference
from finercut_tui.search.sliced_head import HeadSlicer

PREFIX_CACHE_MODES = ("gpu", "cpu", "off")


class CachedPrefix(nn.Module):
    """Stands in for blocks 0..b-1: ignores its input and returns block b's cached input (the search's
    prefix cache, and the repair's walk through the model)."""

    def __init__(self) -> None:
        super().__init__()
        self.value: torch.Tensor | None = None
        self.as_tuple = False

    def forward(self, *args, **kwargs):
        return (self.value,) if self.as_tuple else self.value


class _StopForward(Exception):
    """Raised after the last block while capturing block inputs: the head's output is not needed."""


class Scorer:
    """Scores "the current pruned model with one more sublayer removed" against the original model."""

    def __init__(
        self,
        pm: PrunableModel,
        input_ids: torch.Tensor,
        metric: str = "js",
        batch_size: int | None = None,
        prefix_cache: str = "gpu",
        log: Callable[[str], None] = lambda message: None,
        distance_dtype: torch.dtype | None = torch.float32,
    ):
        """`distance_dtype`: the dtype the distance is computed in (None: the model's own, as
        FinerCut's reference code does for bf16 runs)."""
        self.pm = pm
        self.distance_dtype = distance_dtype or pm.model.dtype
        self.metric_name = metric
        self.metric = get_metric(metric)
        self.input_ids = input_ids.to(pm.input_device)
        self.batch_size = batch_size or int(input_ids.shape[0])
        if prefix_cache not in PREFIX_CACHE_MODES:
            raise ValueError(f"prefix_cache must be one of {PREFIX_CACHE_MODES}")
        self.prefix_cache = prefix_cache
        self.log = log
        self._reference: list[Reference] | None = None
        self._block_inputs: list[list[torch.Tensor]] | None = None  # [batch][block]
        self._captured_for: frozenset[str] | None = None  # the removed set the cache was made for
        self._block_devices = pm.block_devices()
        self._tuple_outputs = False
        self._stub = CachedPrefix()
        self._sliced_head = HeadSlicer(pm.model)
        self._faults = OomPlan.from_env()
        if self.input_ids.device.type == "cpu":
            keep_freed_memory()

    # -- batching --------------------------------------------------------------------------------
    def _batches(self) -> list[slice]:
        n = int(self.input_ids.shape[0])
        return [slice(i, min(i + self.batch_size, n)) for i in range(0, n, self.batch_size)]

    def _with_oom_fallback(self, fn):
        """Run fn(); on out-of-memory halve the batch size (dropping caches) and retry."""
        while True:
            try:
                return fn()
            except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
                if not is_out_of_memory(exc) or self.batch_size == 1:
                    raise
                self.batch_size = max(1, self.batch_size // 2)
                self._reference = None
                self._block_inputs = None
                self._captured_for = None
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                self.log(f"out of memory: retrying with --batch-size {self.batch_size}")

    def _forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self._faults is not None:
            self._faults.tick()
        with self._sliced_head():
            return self.pm.model(input_ids=ids, use_cache=False).logits

    # -- reference -------------------------------------------------------------------------------
    def reference(self) -> list[Reference]:
        """Logits of the original (unpruned) model, per batch, computed once."""
        if self._reference is None and NEEDS_REFERENCE[self.metric_name]:
            self._with_oom_fallback(self._compute_reference)
        return self._reference or []

    def _compute_reference(self) -> None:
        removed = self.pm.removed
        self.pm.restore_all()
        try:
            with torch.inference_mode():
                self._reference = [
                    prepare_reference(
                        self._forward(self.input_ids[b]).to(self.distance_dtype), self.metric_name
                    )
                    for b in self._batches()
                ]
        finally:
            self.pm.set_removed(removed)

    # -- per greedy step ---------------------------------------------------------------------------
    def begin_step(self) -> None:
        """Cache the input of every block for the current pruned model.

        Only blocks after the first changed one are recomputed (block b's input depends on blocks
        before b alone), and the forward stops after the last block: no norm, head or logits.
        """
        if self.prefix_cache == "off":
            self._block_inputs = None
            return
        self._with_oom_fallback(self._capture_block_inputs)

    def _stale_range(self, removed: frozenset[str]) -> tuple[int, int] | None:
        """(run from, capture from): the blocks to run and the first block whose cached input is out
        of date for `removed`; None when every cached input is current."""
        if self._block_inputs is None or self._captured_for is None:
            return 0, 0
        changed = removed ^ self._captured_for
        if not changed:
            return None
        first = min(split_id(sid)[0] for sid in changed)  # its input is still current
        return (first, first + 1) if first + 1 < self.pm.num_blocks else None

    def _capture_block_inputs(self) -> None:
        removed = frozenset(self.pm.removed)
        stale = self._stale_range(removed)
        if stale is None:
            self._captured_for = removed
            return
        run_from, start = stale
        to_cpu = self.prefix_cache == "cpu"
        blocks = self.pm.blocks
        captured: list[torch.Tensor] = []

        def keep(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            captured.append(hidden.detach().to("cpu", non_blocking=True) if to_cpu else hidden.detach())

        def note_output_and_stop(module, args, output):
            self._tuple_outputs = isinstance(output, tuple)
            raise _StopForward

        handles = [
            blocks[j].register_forward_pre_hook(keep, with_kwargs=True) for j in range(start, len(blocks))
        ]
        handles.append(blocks[-1].register_forward_hook(note_output_and_stop))
        per_batch = self._block_inputs if start > 0 else [[] for _ in self._batches()]
        try:
            with torch.inference_mode():
                for i, b in enumerate(self._batches()):
                    captured = []
                    with contextlib.suppress(_StopForward):
                        self._run_from(run_from, i, self.input_ids[b])
                    per_batch[i] = per_batch[i][:start] + captured
        finally:
            for h in handles:
                h.remove()
        self._block_inputs = per_batch
        self._captured_for = removed

    # -- candidates --------------------------------------------------------------------------------
    def score(self, sid: str) -> float:
        """Distance to the original model of the current model with `sid` (a sublayer, or `<b>.block`
        for both) also removed; the prefix cache serves sublayers and blocks alike."""
        self.reference()
        self.begin_step()  # a no-op unless the model changed since the last capture
        with self.pm.removed_also(*expand([sid])):
            return self._with_oom_fallback(lambda: self._score_current(split_id(sid)[0]))

    def _score_current(self, first_block: int) -> float:
        reference = (
            self.reference()
        )  # after an out-of-memory retry the prefix cache may be gone: full forward
        total, count = None, 0
        with torch.inference_mode():
            for i, b in enumerate(self._batches()):
                ids = self.input_ids[b]
                logits = self._run_from(first_block, i, ids)
                for r0, r1, t0, t1 in self._chunks(logits):
                    ref = reference[i].rows(r0, r1).tokens(t0, t1) if reference else None
                    out = logits[r0:r1, t0:t1].to(self.distance_dtype)
                    values = self.metric(ref, out, ids[r0:r1, t0:t1])
                    part = values.double().sum()
                    total = part if total is None else total + part.to(total.device)
                    count += values.numel()
        return float(total) / count  # one device sync per candidate

    # the distance's working set: per token chunk on CPU, per group of rows (x6 temporaries) on GPUs
    CPU_CHUNK_BYTES = 2 << 20
    GPU_CHUNK_BYTES = 1 << 30

    @staticmethod
    def _chunk_tokens(device: torch.device) -> bool:
        """Split rows into token chunks (CPU) rather than group whole rows (GPUs)."""
        return device.type == "cpu"

    def _chunks(self, logits: torch.Tensor):
        """(rows, tokens) slices for the distance. On CPU a few tokens at a time, so each of the
        metric's elementwise passes stays in cache (5x faster, same numbers); on GPUs whole rows under
        a 1 GiB budget, since many small kernels would cost more than they save."""
        n, t, vocab = logits.shape
        if not TOKEN_LOCAL[self.metric_name]:
            step_rows, step_tokens = 1, t
        elif self._chunk_tokens(logits.device):
            step_rows, step_tokens = 1, max(1, self.CPU_CHUNK_BYTES // (vocab * 4))
        else:
            step_rows, step_tokens = max(1, min(n, self.GPU_CHUNK_BYTES // max(t * vocab * 4 * 6, 1))), t
        for r in range(0, n, step_rows):
            for s in range(0, t, step_tokens):
                yield r, min(r + step_rows, n), s, min(s + step_tokens, t)

    def _run_from(self, first_block: int, batch: int, ids: torch.Tensor) -> torch.Tensor:
        """The model's own forward with blocks 0..first_block-1 replaced by block first_block's
        cached input (a full forward when nothing is cached)."""
        if first_block == 0 or self._block_inputs is None:
            return self._forward(ids)
        cached = self._block_inputs[batch][first_block]
        device = self._block_devices[first_block]
        self._stub.value = cached.to(device, non_blocking=True)
        self._stub.as_tuple = self._tuple_outputs
        blocks = self.pm.blocks
        originals = [blocks[j] for j in range(first_block)]
        try:
            for j in range(first_block):
                blocks[j] = self._stub
            return self._forward(ids)
        finally:
            for j, module in enumerate(originals):
                blocks[j] = module
            self._stub.value = None
