"""`tune_allocator`: faster CPU training without changing a number; torch-free. Each step frees and re-allocates
the hidden layer's 88 MB gradient and activations as large, which glibc serves with ``mmap``: the kernel zero-fills
fresh pages every step (docs/performance.md). Kept in the heap, they are reused; where tensors live, not what is
computed, changes."""

from __future__ import annotations

import ctypes
import os
import platform
from pathlib import Path
from typing import Optional

ENV = "LIT_CIFAR_MALLOC"  # "default": leave glibc's allocator as it is (to measure the difference)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc <malloc.h>
TRIM_THRESHOLD = 1 << 30  # bytes of free heap top kept before trimming: above one 88 MB gradient
PRELOADED = ("tcmalloc", "jemalloc", "mimalloc")  # allocators that replace glibc's malloc when preloaded
_state: dict[str, str] = {}


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it (``lscpu``'s "Model name"), else what Python knows."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine() or "unknown CPU"


def preloaded_allocator() -> Optional[str]:
    """The malloc replacement mapped into this process (``LD_PRELOAD``), or None."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    return next((name for name in PRELOADED if f"lib{name}" in maps), None)


def _glibc() -> Optional[ctypes.CDLL]:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.mallopt  # noqa: B018 - present in glibc only
        return libc
    except (OSError, AttributeError):
        return None


def trim_heap() -> None:
    """Hand the heap's free memory back to the kernel (glibc ``malloc_trim(0)``); a no-op elsewhere."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def tune_allocator() -> str:
    """Keep large freed blocks in glibc's heap (no ``mmap``, trim above 1 GiB), once per process; returns how the
    allocator is set up (a no-op without glibc, under a preloaded malloc or with ``LIT_CIFAR_MALLOC=default``)."""
    if "allocator" not in _state:
        preloaded = preloaded_allocator()
        libc = None if preloaded else _glibc()
        if preloaded:
            text = f"{preloaded} (preloaded), left as it is"
        elif os.environ.get(ENV, "").lower() == "default":
            text = f"glibc malloc, defaults ({ENV}=default)"
        elif libc is None:
            text = "the C library's malloc, unchanged (not glibc)"
        elif libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD):
            version = libc.gnu_get_libc_version().decode()
            text = f"glibc {version} malloc: no mmap for large blocks, trim threshold {TRIM_THRESHOLD >> 20} MiB"
        else:
            text = "glibc malloc, defaults (mallopt refused the settings)"
        _state["allocator"] = text
    return _state["allocator"]


def allocator() -> str:
    """How this process's allocator is set up: what `tune_allocator` did, or what is in place without it."""
    if "allocator" in _state:
        return _state["allocator"]
    preloaded = preloaded_allocator()
    return f"{preloaded} (preloaded)" if preloaded else "malloc, defaults (tune_allocator not called)"
