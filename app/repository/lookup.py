"""Finding models: their directories in the repository, the versions a request names, and
the repository index as the v2 repository extension lists it."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from app.errors import ModelLoadError, NotFoundError, UnavailableError
from app.repository.state import LoadedVersion, ModelEntry, ModelState

Models = dict[str, ModelEntry]
#: Model names are directory names: letters, digits, `_`, `-`, `.`; never a path.
MODEL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")

log = logging.getLogger(__name__)


def model_dirs(root: Path) -> list[Path]:
    """Model directories under `root`, sorted; other entries are skipped with a log."""
    if not root.is_dir():
        raise ModelLoadError(f"model repository {root} is not a directory")
    found = []
    for path in sorted(root.iterdir()):
        if not path.is_dir() or path.name.startswith((".", "_")):
            continue
        if not MODEL_NAME.match(path.name):
            log.warning("skipping %s: not a valid model name", path)
            continue
        found.append(path)
    return found


def model_dir(root: Path, name: str) -> Path:
    """`<root>/<name>`, only for a valid name naming a directory directly in `root`."""
    if not MODEL_NAME.match(name):
        raise NotFoundError(f"'{name}' is not a valid model name")
    path = root / name
    if not path.is_dir() or path.resolve().parent != root.resolve():
        raise NotFoundError(f"no model directory '{name}' in the repository")
    return path


def find_entry(models: Models, name: str) -> ModelEntry:
    entry = models.get(name)
    if entry is None:
        # "Request for unknown model: ..." is Triton's wording, which its clients match.
        raise NotFoundError(
            f"Request for unknown model: '{_shown(name)}' is not found; see POST "
            "/v2/repository/index for the models this server has"
        )
    return entry


def find_version(models: Models, name: str, version: str | None = None) -> LoadedVersion:
    """The version asked for (the highest loaded one when None), ready to serve."""
    entry = find_entry(models, name)
    if entry.state is not ModelState.READY:
        detail = f": {entry.reason}" if entry.reason else ""
        if entry.state is ModelState.LOADING:
            raise UnavailableError(f"model '{name}' is not ready yet (LOADING){detail}")
        raise UnavailableError(
            f"Request for unknown model: '{name}' has no available versions ({entry.state}{detail})"
        )
    if version is None or version == "":
        loaded = entry.latest()
        assert loaded is not None
        return loaded
    number = parse_version(version)
    chosen = entry.versions.get(number) if number is not None else None
    if chosen is None:
        raise NotFoundError(
            f"Request for unknown model: '{name}' version {_shown(version)} is not found; "
            f"loaded versions: {sorted(entry.versions)}"
        )
    return chosen


def index_rows(models: Models) -> list[dict[str, Any]]:
    """One row per loaded version (with what it measured to hold), one per model not
    loaded, with the reason."""
    rows: list[dict[str, Any]] = []
    for entry in models.values():
        if entry.versions:
            rows.extend(
                {
                    "name": entry.name,
                    "version": str(v),
                    "state": entry.state.value,
                    "reason": entry.reason,
                    **_memory(entry.versions[v].memory_bytes),
                }
                for v in sorted(entry.versions)
            )
        else:
            rows.append({"name": entry.name, "state": entry.state.value, "reason": entry.reason})
    return rows


def _memory(measured: int | None) -> dict[str, int]:
    return {} if measured is None else {"memory_bytes": measured}


#: A version is a positive decimal number of at most this many digits (an int64).
MAX_VERSION_DIGITS = 18


def parse_version(text: str) -> int | None:
    """The version number `text` names, or None when it names none that could exist."""
    if not (0 < len(text) <= MAX_VERSION_DIGITS and text.isascii() and text.isdigit()):
        return None
    return int(text)


def _shown(text: str, limit: int = 64) -> str:
    """`text` as an error message may quote it: shortened, so a huge path stays short."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
