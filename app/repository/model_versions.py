"""A model's versions as its version policy selects them from disk, and their load, each
measured: what it added to the memory the process holds.

Blocking (sessions are created and warmed): call from a thread, not the event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from app.batching import BatchObserver
from app.errors import ModelLoadError
from app.repository.config import ModelConfig, load_model_config
from app.repository.loader import MODEL_FILE, ServingDefaults, load_version
from app.repository.lookup import parse_version
from app.repository.residency import CostBook
from app.repository.state import LoadedVersion
from app.runtime.memory import (
    held_bytes,
    peak_resident_bytes,
    resident_bytes,
    restart_peak_resident,
)

ObserverFactory = Callable[[str, int], BatchObserver | None]
#: A model's config, and the versions on disk its version policy selects.
Selection = tuple[ModelConfig, list[int]]


def selected_versions(model_dir: Path) -> Selection:
    """The model's config and the versions on disk its version policy selects."""
    config = load_model_config(model_dir)
    on_disk = [
        number
        for p in model_dir.iterdir()
        if (number := parse_version(p.name)) is not None and (p / MODEL_FILE).is_file()
    ]
    if not on_disk:
        raise ModelLoadError(
            f"{model_dir}: no version directory with a {MODEL_FILE} "
            f"(expected {model_dir}/1/{MODEL_FILE})"
        )
    selected = config.version_policy.select(on_disk)
    if not selected:
        raise ModelLoadError(
            f"{model_dir}: version_policy selects none of the versions on disk {on_disk}"
        )
    return config, selected


def load_measured(
    model: str,
    model_dir: Path,
    *,
    config: ModelConfig,
    selected: list[int],
    defaults: ServingDefaults,
    observer_factory: ObserverFactory | None,
    costs: CostBook | None,
    quiet_mark: Callable[[], tuple[int, int]] | None = None,
) -> dict[int, LoadedVersion]:
    """Load the selected versions one by one, each measured (app.runtime.memory.held_bytes)
    and its cost kept in `costs` for the next load to know beforehand, with how far above
    it the load went on its way (the resident set's high-water mark).

    The process's allocations all count, so a load while requests run measures theirs too
    (a model read three times its size, or a tenth). Only a load that ran alone, as
    `quiet_mark` tells (unchanged, with nothing holding), replaces a cost kept before; a
    load under traffic takes the kept one, and keeps its own only where none is."""
    loaded: dict[int, LoadedVersion] = {}
    for version in selected:
        observer = observer_factory(model, version) if observer_factory else None
        mark = quiet_mark() if quiet_mark is not None else (0, 0)
        peak_known = restart_peak_resident()
        before = held_bytes()
        version_dir = model_dir / str(version)
        try:
            loaded[version] = load_version(
                model, version, version_dir, config=config, defaults=defaults, observer=observer
            )
        except ModelLoadError as exc:
            raise ModelLoadError(f"version {version}: {exc}") from None
        after = held_bytes()
        peak, now = peak_resident_bytes(), resident_bytes()
        if before is None or after is None:
            continue
        cost = max(0, after - before)
        overshoot = max(0, peak - now) if peak_known and peak and now else None
        alone = mark[1] == 0 and (quiet_mark is None or quiet_mark() == mark)
        if costs is not None:
            cost = costs.keep(version_dir, cost, alone=alone, overshoot=overshoot)
        loaded[version].memory_bytes = cost
    return loaded
