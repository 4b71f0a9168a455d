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


def resident_bytes() -> int | None:
    """The process's resident set (anonymous and file-backed pages) now; None where the
    system does not say (not Linux)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as stream:
            resident_pages = int(stream.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


class _MallInfo2(ctypes.Structure):
    """glibc's `struct mallinfo2` (2.33 and later)."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
            "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def _mallinfo2() -> Callable[[], _MallInfo2] | None:
    try:
        function = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return None
    function.restype = _MallInfo2
    return function


_MALLINFO2 = _mallinfo2()


def restart_peak_resident() -> bool:
    """Start the resident set's high-water mark (VmHWM) again from now; False where the
    system cannot (not Linux, or /proc/self/clear_refs is not writable)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as stream:
            stream.write("5")
    except OSError:
        return False
    return True


def peak_resident_bytes() -> int | None:
    """The most the resident set reached since it started or its mark was restarted."""
    try:
        with open("/proc/self/status", encoding="ascii") as stream:
            for line in stream:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def held_bytes() -> int | None:
    """The bytes the process holds for its objects now: what malloc has handed out and not
    got back (glibc), else the resident set; None where neither can be read.

    The allocator's count rather than the resident set: glibc keeps a block freed at the top
    of a thread's arena resident (malloc_trim returns only the main arena's top), so the
    resident set after a load sometimes holds a freed copy of the weights as well, which the
    next load reuses. Blocking (it walks every arena): call it from a thread."""
    if _MALLINFO2 is not None:
        info = _MALLINFO2()
        return int(info.uordblks + info.hblkhd)
    return_freed_memory()
    return resident_bytes()


def prime_runtime() -> None:
    """Run one tiny model once, so that what ONNX Runtime sets up for the first session of
    a process (its environment, kernel registries, the first thread pool) counts as the
    server's own memory rather than as the first model's measured cost (blocking)."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    tensor = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    result = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "prime", [tensor], [result]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    session.run(None, {"x": np.ones(1, dtype=np.float32)})
