"""Fault injection, for tests and developers; every seam is inert unless its variable is set.

- FINERCUT_FAULT_OOM_AT: CUDA-style out-of-memory errors at chosen forwards (OomPlan), so the
  batch-halving fallbacks can be caused on any machine.
- FINERCUT_FAULT_DIE_AT / FINERCUT_FAULT_HANG_AT: under torchrun the last rank dies or hangs in a
  chosen step (rank_fault), as a crashed or stuck node would.
"""

from __future__ import annotations

import os
import signal

import torch

from finercut_tui.errors import FinercutError

FAULT_OOM_ENV = "FINERCUT_FAULT_OOM_AT"


class OomPlan:
    """FINERCUT_FAULT_OOM_AT lists the forwards of a Scorer (counted from 1 over everything it runs:
    reference, prefix capture, candidates) or of one similarity measurement (from 1 in each) that raise
    torch.cuda.OutOfMemoryError instead of running. `K` fails the K-th forward once; `K+` fails the
    K-th and every later one (so the batch halves down to 1 and the run ends with the out-of-memory
    advice); a comma list combines them, e.g. `3,9` or `5,12+`. Unset or empty: no faults."""

    def __init__(self, spec: str):
        self.spec = spec
        self.once: set[int] = set()
        self.from_on: int | None = None
        self.count = 0
        for part in (p.strip() for p in spec.split(",")):
            try:
                k = int(part[:-1] if part.endswith("+") else part)
            except ValueError:
                k = 0
            if k < 1:
                raise FinercutError(
                    f"{FAULT_OOM_ENV}={spec!r}: give forward numbers from 1, as K, K+ or a comma list"
                )
            if part.endswith("+"):
                self.from_on = k if self.from_on is None else min(self.from_on, k)
            else:
                self.once.add(k)

    @classmethod
    def from_env(cls) -> OomPlan | None:
        spec = os.environ.get(FAULT_OOM_ENV, "").strip()
        return cls(spec) if spec else None

    def tick(self) -> None:
        """Count one forward; raise the out-of-memory error when the plan says so."""
        self.count += 1
        if self.count in self.once or (self.from_on is not None and self.count >= self.from_on):
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate 1.00 GiB (injected by {FAULT_OOM_ENV}="
                f"{self.spec} at forward {self.count})"
            )


FAULT_DIE_ENV = "FINERCUT_FAULT_DIE_AT"
FAULT_HANG_ENV = "FINERCUT_FAULT_HANG_AT"


def rank_fault(step: int, world) -> None:
    """For tests and developers, under torchrun: FINERCUT_FAULT_DIE_AT=K makes the last rank kill
    itself (SIGKILL) after its first candidate of step K, as a crashed node would;
    FINERCUT_FAULT_HANG_AT=K makes it stop (SIGSTOP): alive and silent, as a hung node. Unset, they
    do nothing."""
    if world.rank != world.size - 1 or not world.active:
        return
    for name, sig in ((FAULT_DIE_ENV, signal.SIGKILL), (FAULT_HANG_ENV, signal.SIGSTOP)):
        if os.environ.get(name, "").strip() == str(step):
            os.kill(os.getpid(), sig)
