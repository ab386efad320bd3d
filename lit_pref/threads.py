"""The number of CPU threads PyTorch uses: the cores that are actually free, unless told otherwise.

PyTorch's default takes every core; on a machine where other work runs, its threads wait on each other and a
training step gets several times slower than with fewer threads.
"""

from __future__ import annotations

import os


def free_cores() -> int:
    """Cores this process may run on (``os.sched_getaffinity``) minus the 1-minute load average, at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        load = os.getloadavg()[0]
    except OSError:  # no load average on this platform
        load = 0.0
    return max(1, min(cores, cores - round(load)))


def default_threads() -> int:
    """``OMP_NUM_THREADS`` when set (a positive integer), else :func:`free_cores`."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else free_cores()


def set_threads(threads: int | None = None) -> int:
    """Make PyTorch use ``threads`` CPU threads (``None``: :func:`default_threads`); returns the number set."""
    import torch

    threads = default_threads() if threads is None else threads
    if threads < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)
    return threads
