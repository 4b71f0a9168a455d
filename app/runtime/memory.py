"""Give a released model's memory back to the operating system.

glibc's malloc keeps what a process frees in its arenas for reuse, so the resident set of a
server that unloaded a model stays where it was; `malloc_trim(0)` returns the free pages of
every arena. Other C libraries (musl, macOS) have no such call: there this does nothing.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable


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


def return_freed_memory() -> bool:
    """Hand the allocator's free pages back to the OS; False where the C library cannot.
    It walks every arena (milliseconds): call it from a thread."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True
