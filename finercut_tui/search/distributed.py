"""Many replicas of one search with torch.distributed (torchrun / srun): one process = one replica.

torchrun (or srun with RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT exported, or
SLURM's own SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID with MASTER_ADDR/PORT set) starts the
processes; the process group (gloo on CPU, nccl on CUDA) carries every collective. No sockets or
files of our own.

- `World.check_same` gathers each rank's identity (calibration fingerprint, model architecture,
  blocks, dtype, search spec) and refuses, with one line naming the first differing rank, when a
  rank differs from rank 0. `World.agree` turns an exception raised on some ranks into the same
  FinercutError on all of them, so every collective is reached by every rank.
- FinerCut: `split_by_cost` assigns a step's candidates to ranks with greedy longest-processing-time
  (sorted by cost descending, then model order; a candidate in block b costs (L - b) blocks plus the
  head); `gather_scores` gives every rank the full score dict (the engine then breaks ties exactly as
  one process does, so the order and scores equal the one-process run).
- Similarity drop: `rows_of` splits the calibration rows into contiguous slices; the per-module
  cosine sums are all-reduced in float64 and divided by the total token count. Results equal one
  process up to summation order (and the batch shapes a forward ran with): relative differences of
  ~1e-12 or less in float64 sums of fp32 cosines; the ranking is the same unless two scores tie to
  that precision.

A rank that raises reports it through the next collective; a rank that dies makes the others'
collective fail at once (gloo/nccl see the closed connection) or after `--dist-timeout` seconds;
either way every surviving rank ends with one line (`PeerLost`).
"""

from __future__ import annotations

import contextlib
import datetime
import heapq
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from finercut_tui.domain.spec import DEFAULT_TIMEOUT_S
from finercut_tui.errors import FinercutError, error_line, first_line


class PeerLost(FinercutError):
    """A collective failed: another rank died, hung past the timeout, or the network broke."""


def _env_int(env, *names: str) -> int | None:
    for name in names:
        value = env.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                raise FinercutError(f"{name}={value!r} is not a number") from None
    return None


def detect(env=None) -> tuple[int, int, int]:
    """(rank, world size, local rank) as torchrun or srun set them; (0, 1, 0) in a plain process."""
    env = os.environ if env is None else env
    world = _env_int(env, "WORLD_SIZE")
    if world is None and env.get("MASTER_ADDR"):
        world = _env_int(env, "SLURM_NTASKS")
    if world is None or world <= 1:
        return 0, 1, 0
    rank = _env_int(env, "RANK", "SLURM_PROCID")
    local = _env_int(env, "LOCAL_RANK", "SLURM_LOCALID")
    if rank is None:
        raise FinercutError("WORLD_SIZE is set but RANK is not: start the processes with torchrun or srun")
    if not 0 <= rank < world:
        raise FinercutError(f"RANK {rank} is outside WORLD_SIZE {world}")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not env.get(name):
            raise FinercutError(
                f"{name} is not set: start the processes with torchrun, or export it for srun"
            )
    return rank, world, rank if local is None else local


def cost(uid: str, num_blocks: int) -> int:
    """A candidate in block b runs blocks b..L-1 and the head (counted as one block)."""
    return num_blocks - int(uid.split(".", 1)[0]) + 1


def split_by_cost(candidates: Sequence[str], num_blocks: int, world_size: int) -> list[list[str]]:
    """Candidates per rank, balanced by cost: greedy LPT over (cost desc, model order); deterministic.
    Each rank's list keeps model order."""
    heap = [(0, r) for r in range(world_size)]
    parts: list[list[tuple[int, str]]] = [[] for _ in range(world_size)]
    ranked = sorted(enumerate(candidates), key=lambda ic: (-cost(ic[1], num_blocks), ic[0]))
    for i, uid in ranked:
        load, r = heapq.heappop(heap)
        parts[r].append((i, uid))
        heapq.heappush(heap, (load + cost(uid, num_blocks), r))
    return [[uid for _, uid in sorted(p)] for p in parts]


def rows_of(num_rows: int, rank: int, world_size: int) -> slice:
    """Rank's contiguous slice of the calibration rows (sizes differ by at most one)."""
    base, extra = divmod(num_rows, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    gpus_per_replica: int = 1
    timeout_s: float = DEFAULT_TIMEOUT_S
    initialized: bool = False  # by us: `close` tears it down

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- collectives, each turning a backend failure into one line --------------------------------
    def _collective(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except FinercutError:
            raise
        except Exception as exc:  # DistBackendError, RuntimeError from gloo/nccl, timeouts
            first = first_line(exc, 160)
            raise PeerLost(
                f"rank {self.rank}: lost the other ranks (one died or hung past --dist-timeout "
                f"{self.timeout_s:g}s): {first}; the session holds every finished step, --resume continues"
            ) from exc

    def all_gather(self, obj: Any) -> list[Any]:
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.size
        self._collective(lambda: dist.all_gather_object(out, obj))
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if not self.active:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        self._collective(lambda: dist.broadcast_object_list(box, src=0))
        return box[0]

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return t
        import torch.distributed as dist

        dev = t.device
        work = t.to("cuda") if dist.get_backend() == "nccl" else t.cpu()
        self._collective(lambda: dist.all_reduce(work))
        return work.to(dev)

    # -- the process group's key-value store: flags and counters that need no collective ----------
    def store(self) -> Any:
        """torch.distributed's own store (TCPStore under torchrun), or None in one process."""
        if not self.active:
            return None
        try:
            import torch.distributed as dist

            return dist.distributed_c10d._get_default_store() if dist.is_initialized() else None
        except Exception:  # noqa: BLE001 - a missing store only costs the early stop and the shared count
            return None

    def signal_stop(self) -> None:
        """Rank 0 was cancelled mid-step: the others stop after their current candidate."""
        store = self.store()
        if store is not None:
            with contextlib.suppress(Exception):
                store.set(_STOP_KEY, "1")

    def stop_signalled(self) -> bool:
        store = self.store()
        if store is None:
            return False
        try:
            return bool(store.check([_STOP_KEY]))
        except Exception:  # noqa: BLE001 - the next collective reports a broken group
            return False

    # -- agreement --------------------------------------------------------------------------------
    def agree(self, error: BaseException | None) -> None:
        """Every rank calls this; when any rank had an error, all raise the first such rank's line."""
        if not self.active:
            if error is not None:
                raise error
            return
        line = None
        if error is not None:
            line = error_line(error)
        for r, other in enumerate(self.all_gather(line)):
            if other is not None:
                raise FinercutError(f"rank {r}: {other}") from error

    def check_same(self, identity: dict[str, Any]) -> None:
        """Refuse when a rank's identity (ordered mapping of what must match) differs from rank 0's."""
        if not self.active:
            return
        everyone = self.all_gather(identity)
        mine0 = everyone[0]
        for r, theirs in enumerate(everyone[1:], 1):
            for key, value in mine0.items():
                if theirs.get(key) != value:
                    raise FinercutError(
                        f"rank {r} differs from rank 0 in {key}: {_short(theirs.get(key))} vs "
                        f"{_short(value)}; start every rank with the same model and options"
                    )

    def close(self) -> None:
        if self.initialized:
            import torch.distributed as dist

            try:
                if dist.is_initialized():
                    dist.destroy_process_group()
            finally:
                self.initialized = False


_STOP_KEY = "finercut/stop"


def _short(value: Any) -> str:
    text = str(value)
    return text[:77] + "..." if len(text) > 80 else text


SINGLE = World()
_current = SINGLE


def current() -> World:
    """The world this process joined (SINGLE outside torchrun)."""
    return _current


def init_world(
    timeout_s: float = DEFAULT_TIMEOUT_S, device: str = "auto", gpus_per_replica: int = 1
) -> World:
    """Join the process group torchrun/srun describes (nothing to join in a plain process).

    `device` decides the backend (nccl for CUDA, gloo for CPU); with CUDA each rank sees only its
    own `gpus_per_replica` GPUs (local rank r gets GPUs r*G .. r*G+G-1 of the node)."""
    global _current
    if gpus_per_replica < 1:
        raise FinercutError(f"--gpus-per-replica {gpus_per_replica}: give 1 or more")
    if timeout_s <= 0:
        raise FinercutError(f"--dist-timeout {timeout_s:g}: give a positive number of seconds")
    rank, size, local = detect()
    if size > 1 and device.startswith("cuda:"):
        raise FinercutError(
            f"--device {device}: under torchrun each rank takes its own GPUs (local rank r gets "
            f"GPUs r*G..r*G+G-1): give --device cuda or auto"
        )
    mine = None
    if device != "cpu" and (size > 1 or gpus_per_replica > 1) and torch.cuda.device_count() > 0:
        # before anything initialises CUDA: the driver reads CUDA_VISIBLE_DEVICES once, at cuInit
        # (torch.cuda.is_available() is such a call; device_count() asks NVML and is not)
        mine = _pin_gpus(local, gpus_per_replica)
    cuda = device != "cpu" and torch.cuda.is_available()
    if gpus_per_replica > 1 and not cuda:
        raise FinercutError(f"--gpus-per-replica {gpus_per_replica} needs CUDA GPUs; on CPU give 1")
    if mine is not None and torch.cuda.device_count() != len(mine):
        raise FinercutError(
            f"rank {rank}: CUDA started before this rank could take its GPUs ({','.join(mine)}): "
            f"give each rank its GPUs with CUDA_VISIBLE_DEVICES (e.g. srun --gpus-per-task {gpus_per_replica})"
        )
    world = World(rank, size, local, gpus_per_replica, float(timeout_s))
    if size > 1:
        import torch.distributed as dist

        if not dist.is_available():
            raise FinercutError("this torch build has no torch.distributed: run one process")
        backend = "nccl" if cuda else "gloo"
        if cuda:
            torch.cuda.set_device(0)  # the first of this rank's visible GPUs
        try:
            dist.init_process_group(
                backend, rank=rank, world_size=size, timeout=datetime.timedelta(seconds=timeout_s)
            )
        except Exception as exc:
            first = first_line(exc, 160)
            raise FinercutError(f"rank {rank}: could not join the {size} ranks: {first}") from exc
        world.initialized = True
    _current = world
    return world


def _pin_gpus(local_rank: int, per_replica: int) -> list[str]:
    """Show this process only its own GPUs: local rank r takes r*G..r*G+G-1 of those the node shows,
    or all of them when CUDA_VISIBLE_DEVICES already names exactly G (srun --gpus-per-task G)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = (
        [v.strip() for v in visible.split(",") if v.strip()]
        if visible
        else [str(i) for i in range(torch.cuda.device_count())]
    )
    given = visible and len(ids) == per_replica  # the launcher set this process's own GPUs
    mine = ids if given else ids[local_rank * per_replica : (local_rank + 1) * per_replica]
    if len(mine) < per_replica:
        raise FinercutError(
            f"local rank {local_rank} needs GPUs {local_rank * per_replica}..{(local_rank + 1) * per_replica - 1} "
            f"(--gpus-per-replica {per_replica}) but the node shows {len(ids)}: lower --nproc-per-node"
        )
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(mine)
    return mine


def close_world() -> None:
    """Leave the process group; `current()` keeps the rank (the CLI prints errors on rank 0 only)."""
    with contextlib.suppress(Exception):  # a broken group: the process ends anyway
        _current.close()


def reports(exc: BaseException) -> bool:
    """Whether this rank prints `exc`: rank 0 prints errors all ranks share; the others print only
    their own failures and a lost peer (rank 0 may be the one that died)."""
    return current().is_main or isinstance(exc, PeerLost) or not isinstance(exc, FinercutError)
