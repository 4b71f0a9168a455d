"""`--write`: put a recommendation into a model's config.toml, keeping everything else.

tomlkit edits the document in place, so comments, key order, spacing and every key the
recommendation does not concern survive; values are replaced where they are (inline comments
kept), new keys go after the last key of their table. Only the profiled device's
`[[instances]]` lines are replaced (a GPU line stays when CPU is profiled, and the other way
round). The result is validated as the server validates it before the file is replaced, and
the file is replaced atomically, so a polling server never reads half of it.
"""

from __future__ import annotations

import os
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from app.optimize.errors import require
from app.profile.errors import ProfileError
from app.profile.report import instance_tables
from app.repository.config import CONFIG_FILE, ModelConfig
from app.tuning.plan import Plan

#: Inline comment on keys that --write adds (keys it replaces keep their own comments).
MARK = "batchserve profile"


def apply(text: str, recommendation: Plan, device: str) -> str:
    """`text` (a config.toml, possibly empty) with the recommendation in it."""
    require("tomlkit", "batchserve profile --write")
    import tomlkit
    from tomlkit.exceptions import TOMLKitError

    try:
        document = tomlkit.parse(text)
    except TOMLKitError as exc:
        raise ProfileError(f"the config is not valid TOML, so it was not changed: {exc}") from None
    if recommendation.max_batch_size is not None:
        _set(document, "max_batch_size", recommendation.max_batch_size)
        if "batching" not in document:
            document.add("batching", tomlkit.table())
        batching: Any = document["batching"]
        _set(batching, "preferred_batch_sizes", list(recommendation.preferred_batch_sizes))
    line, *low_load = instance_tables(recommendation, device)
    if "instances" not in document:
        document.add("instances", tomlkit.aot())
    instances: Any = document["instances"]
    mine = [i for i, table in enumerate(instances) if table.get("device", "cpu") == device]
    if not mine:
        instances.append(tomlkit.item(line))
    else:
        first = instances[mine[0]]
        for key, value in line.items():
            _set(first, key, value)
        if not recommendation.spinning and "spinning" in first:
            first["spinning"] = False
        if "low_load_only" in first:  # the line becomes the layout's, for any request
            del first["low_load_only"]
        for index in reversed(mine[1:]):
            del instances[index]
    for table in low_load:
        instances.append(tomlkit.item(table))
    return tomlkit.dumps(document)


def _set(container: Any, key: str, value: Any) -> None:
    """Replace `key` where it is, or add it after the last key of `container` (a table;
    the document itself puts a new top-level key before its first table)."""
    import tomlkit

    if key in container:
        container[key] = value
        return
    item = tomlkit.item(value)
    item.comment(MARK)
    if not isinstance(container, tomlkit.items.Table):
        container.add(key, item)
        return
    body: Any = container.value  # the table's Container
    plain = [
        index
        for index, (k, v) in enumerate(body.body)
        if k is not None and not isinstance(v, tomlkit.items.Table | tomlkit.items.AoT)
    ]
    insert_at = getattr(body, "_insert_at", None)
    if plain and plain[-1] + 1 < len(body.body) and insert_at is not None:
        # Right after the last key, ahead of comments that trail the table (they are usually
        # about the next one). tomlkit has no public insert, so this uses `_insert_at`
        # (0.12-0.15; 0.15.3 dropped `_insert_after`) and pyproject caps the version.
        insert_at(plain[-1] + 1, key, item)
    else:
        container.add(key, item)


def validate(text: str, path: Path) -> ModelConfig:
    """The config as the server reads it, or an error naming what is wrong."""
    try:
        return ModelConfig.model_validate(tomllib.loads(text))
    except tomllib.TOMLDecodeError as exc:
        problem = str(exc)
    except ValidationError as exc:
        problem = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '(top level)'}: {error['msg']}"
            for error in exc.errors()
        )
    raise ProfileError(
        f"{path} with the recommendation would not load ({problem}); it was not changed"
    )


def write_config(model_dir: Path, recommendation: Plan, device: str) -> Path:
    """Apply the recommendation to `<model_dir>/config.toml` (created if absent)."""
    path = model_dir / CONFIG_FILE
    try:
        text = path.read_text(encoding="utf-8") if path.exists() else ""
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{path}: cannot be read: {exc}") from None
    updated = apply(text, recommendation, device)
    validate(updated, path)
    handle, temporary = tempfile.mkstemp(prefix=".config-", suffix=".toml", dir=model_dir)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(updated)
        os.chmod(temporary, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(temporary, path)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        raise ProfileError(f"{path}: cannot be written: {exc}") from None
    return path
