"""Where tuning results are kept between loads, keyed by everything that decides them.

A result holds for one model file (its SHA-256), one device (the GPUs' name, or the CPU's
name and flags) and provider, the cores the process may use, one ONNX Runtime version, the
inputs it was measured on and the rule that chose it. The key is stored in the entry as well
as hashed into its name, so a collision or a hand-edited file is caught; anything unreadable
or not matching is measured again, never trusted.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Bumped whenever the measurement or the recommendation rule changes what it chooses.
RULE_VERSION = 11


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/batchserve, else ~/.cache/batchserve."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "batchserve"


def file_sha256(path: Path) -> str:
    """The file's SHA-256, read again only when the file is not the one read last time
    (another inode, size or modification time): a model loaded again, or a copy of one
    already read, costs no pass over its bytes."""
    stat = path.stat()
    return _sha256(str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4096)
def _sha256(path: str, inode: int, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class TuningCache:
    """JSON entries under `<root>/<folder>/`, one per key."""

    def __init__(self, root: Path, folder: str = "tuning") -> None:
        self.folder = root / folder

    def _path(self, key: dict[str, Any]) -> Path:
        name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
        return self.folder / f"{name}.json"

    def read(self, key: dict[str, Any]) -> dict[str, Any] | None:
        """The result stored for `key`, or None (nothing stored, unreadable, or another key)."""
        path = self._path(key)
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("tuning cache entry %s is unreadable (%s): measuring again", path, exc)
            return None
        if not isinstance(entry, dict) or entry.get("key") != key:
            log.warning("tuning cache entry %s is for another key: measuring again", path)
            return None
        result = entry.get("result")
        return result if isinstance(result, dict) else None

    def write(self, key: dict[str, Any], result: dict[str, Any]) -> Path | None:
        """Store `result` for `key` (atomically: a reader never sees half an entry); None
        and a warning where the folder cannot be written (the server serves all the same)."""
        path = self._path(key)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(
                "w", dir=self.folder, suffix=".tmp", delete=False, encoding="utf-8"
            ) as stream:
                json.dump({"key": key, "result": result}, stream, indent=1, sort_keys=True)
            os.replace(stream.name, path)
        except OSError as exc:
            log.warning(
                "cannot write the tuning cache under %s (%s): the next load measures again; "
                "set BATCHSERVE_CACHE_DIR to a writable folder",
                self.folder, exc,
            )  # fmt: skip
            return None
        return path
