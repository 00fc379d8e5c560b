"""Peak-memory measurement for benchmarks: CUDA allocator peaks, or the process's peak RSS on Linux."""

from __future__ import annotations

import contextlib
import ctypes
import resource
from pathlib import Path

import torch


def current_rss_mb() -> float:
    """Resident memory of this process now (Linux), else 0."""
    return _status_field("VmRSS:") or 0.0


def release_heap() -> None:
    """Returns the heap this process freed to the system (glibc ``malloc_trim``; elsewhere nothing).

    glibc keeps freed memory for the process, so a later peak sits on top of what an earlier step freed:
    trimming after a step that frees tens of MB keeps the next step's peak down (after each batch's forward
    pass of a whole-slide prediction; after a slide's thumbnail and tissue mask, which held 90 MB of a
    40k-px slide before its tiles were read).
    """
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def reset_peak_memory(device: torch.device | None = None) -> float:
    """Starts a new peak window (CUDA peak stats, or Linux peak RSS after returning freed heap); returns RSS."""
    if device is not None and device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    release_heap()
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    return current_rss_mb()


def peak_memory_mb(device: torch.device | None = None) -> float:
    """Peak since :func:`reset_peak_memory`: CUDA allocated bytes on a GPU, else the process's peak RSS."""
    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = _status_field("VmHWM:")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _status_field(name: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(name):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None
