"""What the app asks of the machine it runs on: where the model sits and how much memory it takes, and
a CPU core kept free for the interface. Torch is only used when something else imported it already."""

from __future__ import annotations

import os
import sys
from typing import Any


def leave_a_core_for_the_ui(job: Any) -> None:
    """On CPU, torch's OpenMP threads spin on every core and starve the UI thread (a 2-core box ran
    the search ~20x slower): keep one core free for the interface."""
    torch = sys.modules.get("torch")
    device_map = _device_map(job)
    if torch is None or not device_map or any(str(d) not in ("cpu", "disk") for d in device_map.values()):
        return
    cores = os.cpu_count() or 1
    if cores > 1 and torch.get_num_threads() >= cores:
        torch.set_num_threads(cores - 1)


def device_summary(job: Any) -> str:
    """`cuda:0 · 13.2/80 GiB`, `cpu · RSS 1.2 GiB`: where the job's model sits and the memory it takes."""
    devices = sorted({str(d) for d in _device_map(job).values()}) or ["?"]
    where = ",".join(devices) if len(devices) <= 3 else f"{devices[0]}..{devices[-1]}"
    return f"{where} · {memory_text(devices)}"


def memory_text(devices: list[str]) -> str:
    """GPU memory allocated by torch when on CUDA, else this process's resident memory."""
    torch = sys.modules.get("torch")
    if torch is not None and any(d.isdigit() or d.startswith("cuda") for d in devices):
        try:
            if torch.cuda.is_available():
                count = torch.cuda.device_count()
                used = sum(torch.cuda.memory_allocated(i) for i in range(count))
                total = sum(torch.cuda.get_device_properties(i).total_memory for i in range(count))
                return f"{used / 2**30:.1f}/{total / 2**30:.0f} GiB"
        except Exception:  # noqa: BLE001 - the header must never fail
            pass
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return f"RSS {pages * os.sysconf('SC_PAGE_SIZE') / 2**30:.1f} GiB"
    except (OSError, ValueError, IndexError):
        return ""


def _device_map(job: Any) -> dict[str, Any]:
    return getattr(getattr(job, "loaded", None), "device_map", None) or {}
