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
from app.runtime.memory import held_bytes

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
) -> dict[int, LoadedVersion]:
    """Load the selected versions one by one, each measured (app.runtime.memory.held_bytes)
    and its cost kept in `costs` for the next load to know beforehand."""
    loaded: dict[int, LoadedVersion] = {}
    for version in selected:
        observer = observer_factory(model, version) if observer_factory else None
        before = held_bytes()
        version_dir = model_dir / str(version)
        try:
            loaded[version] = load_version(
                model, version, version_dir, config=config, defaults=defaults, observer=observer
            )
        except ModelLoadError as exc:
            raise ModelLoadError(f"version {version}: {exc}") from None
        after = held_bytes()
        if before is not None and after is not None:
            cost = loaded[version].memory_bytes = max(0, after - before)
            if costs is not None:
                costs.write(version_dir, cost)
    return loaded
