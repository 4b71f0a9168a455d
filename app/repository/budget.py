"""The memory budget for resident models: parsed from the setting, sized from the container.

`BATCHSERVE_MODEL_MEMORY` is bytes (`8GiB`, `512MB`, `1073741824`) or a share of the memory
the process may use (`0.5`, `50%`): the cgroup's limit inside a container, else the machine's
physical memory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from app.errors import ModelLoadError

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1 << 10,
    "m": 1000**2, "mb": 1000**2, "mib": 1 << 20,
    "g": 1000**3, "gb": 1000**3, "gib": 1 << 30,
    "t": 1000**4, "tb": 1000**4, "tib": 1 << 40,
}  # fmt: skip
_AMOUNT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_SHARE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%?)\s*$")

#: Where cgroup v2 and v1 keep the limit of the group this process runs in.
_CGROUP_LIMITS = (
    Path("/sys/fs/cgroup/memory.max"),
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
)
#: cgroup v1 writes "no limit" as a huge number rather than "max".
_NO_LIMIT_ABOVE = 1 << 60


def parse_memory_budget(text: str, *, available: int | None = None) -> int:
    """Bytes the setting `text` allows; a share (`0.5`, `50%`) is of `available`, or of
    `memory_limit_bytes()` when None."""
    share = _SHARE.match(text)
    if share and (share.group(2) == "%" or "." in share.group(1) or share.group(1) == "0"):
        fraction = float(share.group(1)) / (100.0 if share.group(2) else 1.0)
        if not 0 < fraction <= 1:
            raise ModelLoadError(
                f"model memory budget {text!r}: a share must be above 0 and at most 1 (100%)"
            )
        total = memory_limit_bytes() if available is None else available
        return int(total * fraction)
    amount = _AMOUNT.match(text)
    unit = _UNITS.get(amount.group(2).lower()) if amount else None
    if amount is None or unit is None:
        raise ModelLoadError(
            f"model memory budget {text!r} is neither bytes (8GiB, 512MB, 1073741824) nor a "
            "share of the memory limit (0.5, 50%)"
        )
    budget = int(float(amount.group(1)) * unit)
    if budget <= 0:
        raise ModelLoadError(f"model memory budget {text!r} must be above 0 bytes")
    return budget


def memory_limit_bytes() -> int:
    """The memory this process may use: its cgroup's limit, else physical memory."""
    for path in _CGROUP_LIMITS:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < _NO_LIMIT_ABOVE:
            return int(text)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def shown_bytes(count: int) -> str:
    """`1.5 GiB`, `230 MiB`, `12 KiB`: sizes as a message shows them."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(count) >= size:
            return f"{count / size:.1f} {unit}" if count < 10 * size else f"{count // size} {unit}"
    return f"{count} B"
