"""Have glibc's malloc keep freed memory for reuse, so CPU tensors stop paying page faults every step.

PyTorch allocates CPU tensors with the C library's ``malloc``. With glibc's defaults, a block of
hundreds of kilobytes or more comes from a fresh ``mmap`` (or from the top of the heap, which ``free``
gives back to the system once enough of it is unused), so the next step's activations land on new
pages that the kernel must fault in and zero, one 4 KiB page at a time. A training or attack step
that allocates the same tensors every step pays that again and again; a double backward (ADV² against
GRAD, Hessian-vector products) allocates the most and pays the most.

:func:`keep_freed_memory` raises the ``mmap`` threshold to glibc's maximum (32 MiB: smaller blocks come
from the heap) and turns heap trimming off (``mallopt(M_MMAP_THRESHOLD)``, ``mallopt(M_TRIM_THRESHOLD)``;
the same as the environment variables ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_``), so freed
blocks are reused. The price: the process keeps its peak heap size instead of shrinking between steps.
Numbers do not change, only where tensors live. ``train.py`` and the benchmarks call it at start;
``AID_KEEP_FREED_MEMORY=0`` turns it off. It does nothing off Linux/glibc, and where the user set
glibc's malloc variables or tunables themselves, or preloads another allocator (jemalloc, tcmalloc).
"""

from __future__ import annotations

import ctypes
import os
import sys

#: ``mallopt`` parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: glibc refuses an mmap threshold above this on 64-bit systems (HEAP_MAX_SIZE / 2).
MMAP_THRESHOLD_MAX = 32 * 2**20
#: Set to ``0`` to leave malloc's settings alone.
ENV_SWITCH = "AID_KEEP_FREED_MEMORY"
#: Environment variables by which a user tunes malloc (or replaces it) themselves.
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_ARENA_MAX")

_state: dict[str, str] = {}


def keep_freed_memory() -> bool:
    """Apply the malloc settings above once per process; True if they are in force (now or before).

    The reason when they are not: :func:`allocator_setting`."""
    if "setting" not in _state:
        _state["setting"] = _apply()
    return _state["setting"] == "keep freed memory"


def allocator_setting() -> str:
    """What :func:`keep_freed_memory` did, in words (``"not asked"`` before it was called); for logs and results."""
    return _state.get("setting", "not asked")


def _apply() -> str:
    if os.environ.get(ENV_SWITCH, "1").strip() in ("0", "false", "no", "off"):
        return f"off ({ENV_SWITCH}=0)"
    if not sys.platform.startswith("linux"):
        return f"unchanged ({sys.platform} malloc)"
    preload = os.environ.get("LD_PRELOAD", "")
    if any(name in preload for name in ("jemalloc", "tcmalloc", "mimalloc")):
        return "unchanged (another allocator is preloaded)"
    if any(v in os.environ for v in USER_SETTINGS) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return "unchanged (malloc settings from the environment)"
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 -- glibc only: musl's mallopt ignores these parameters
    except (OSError, AttributeError):
        return "unchanged (not glibc)"
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 on success; -1 as the trim threshold means "never trim" (mallopt(3)).
    if mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) != 1 or mallopt(M_TRIM_THRESHOLD, -1) != 1:
        return "unchanged (mallopt refused)"
    return "keep freed memory"
