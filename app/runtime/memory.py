"""Give a released model's memory back to the operating system.

glibc's malloc keeps what a process frees for reuse: its arenas' free pages stay resident,
and its mmap threshold rises to the largest block freed (up to 32 MiB), so that after the
first model is freed the weights and buffers of the next ones are carved from the arenas,
where small allocations made between them pin the pages after they go. Two calls undo that:
a fixed threshold (`fix_mmap_threshold`, once at start), so large blocks are mapped on their
own and unmapped when freed, and `return_freed_memory` (malloc_trim) after an unload. Other
C libraries (musl, macOS, an allocator preloaded in their place) have neither: there these
do nothing.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable

#: mallopt's parameter for the mmap threshold (glibc's malloc.h).
M_MMAP_THRESHOLD = -3


def _glibc_function(name: str, *argtypes: type) -> Callable[..., int] | None:
    """A function of glibc's malloc, looked up among the symbols the process already has."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:  # no dynamic loader to ask (a static build)
        return None
    function = getattr(libc, name, None)
    if function is None:
        return None
    function.argtypes = list(argtypes)
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]


_MALLOC_TRIM = _glibc_function("malloc_trim", ctypes.c_size_t)
_MALLOPT = _glibc_function("mallopt", ctypes.c_int, ctypes.c_int)


def _threshold_set_by_environment() -> bool:
    """Whether the user set glibc's mmap threshold themselves (theirs is kept)."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return "MALLOC_MMAP_THRESHOLD_" in os.environ or "malloc.mmap_threshold" in tunables


def fix_mmap_threshold(threshold_bytes: int) -> bool:
    """Map blocks of at least `threshold_bytes` on their own, for good (glibc then stops
    raising the threshold); False where glibc is not the allocator, the environment sets
    the threshold, or `threshold_bytes` is 0 (keep glibc's own)."""
    if _MALLOPT is None or threshold_bytes <= 0 or _threshold_set_by_environment():
        return False
    return bool(_MALLOPT(M_MMAP_THRESHOLD, threshold_bytes))


def return_freed_memory() -> bool:
    """Hand the allocator's free pages back to the OS; False where the C library cannot.
    It walks every arena (milliseconds): call it from a thread."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True
