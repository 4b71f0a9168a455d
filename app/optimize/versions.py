"""Versions of a model in a repository: which to start from, and writing the next one.

A model's config.toml sits beside its version directories and applies to all of them, so a
new version needs nothing copied: the variants made here keep the inputs and outputs of the
version they came from (app.optimize.evaluate checks), so its batching, padding and tokenizer
settings fit. What can change is which versions the server loads: that is the config's
version_policy, and `serving_note` says what it will do with the new one.

A version is written into a staging directory in the repository root (a dot-name, which the
server's scan skips) and renamed into place in one step, so a polling server never sees half
of it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import onnx

from app.errors import ModelLoadError
from app.optimize.errors import OptimizeError
from app.repository.config import load_model_config
from app.repository.loader import MODEL_FILE
from app.repository.lookup import MODEL_NAME


def model_dir(repository: Path, model: str) -> Path:
    """`<repository>/<model>`, which must exist and be a valid model name."""
    if not MODEL_NAME.match(model):
        raise OptimizeError(f"'{model}' is not a valid model name (letters, digits, _ . -)")
    path = repository / model
    if not path.is_dir():
        found = (
            sorted(p.name for p in repository.glob("*") if p.is_dir())
            if repository.is_dir()
            else []
        )
        raise OptimizeError(f"no model directory {path} (models in {repository}: {found})")
    return path


def versions_on_disk(directory: Path) -> list[int]:
    """Version numbers that hold a model file, ascending."""
    return sorted(
        int(p.name)
        for p in directory.iterdir()
        if p.is_dir() and p.name.isascii() and p.name.isdigit() and (p / MODEL_FILE).is_file()
    )


def source_path(directory: Path, version: int | None) -> tuple[int, Path]:
    """The version to start from (the highest when None) and its model file."""
    available = versions_on_disk(directory)
    if not available:
        raise OptimizeError(f"{directory} has no version directory with a {MODEL_FILE}")
    chosen = available[-1] if version is None else version
    if chosen not in available:
        raise OptimizeError(f"{directory} has no version {chosen}; versions: {available}")
    return chosen, directory / str(chosen) / MODEL_FILE


def next_version(directory: Path) -> int:
    """One above every numbered directory, with a model or not (never reuse a number a
    client may have used)."""
    numbers = [
        int(p.name)
        for p in directory.iterdir()
        if p.is_dir() and p.name.isascii() and p.name.isdigit()
    ]
    return max(numbers, default=0) + 1


def model_files(path: Path) -> list[Path]:
    """The model file and the external-data files it names, all in its directory."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise OptimizeError(f"{path} is not a readable ONNX model: {exc}") from None
    files = [path]
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            target = path.parent / location
            if target not in files:
                files.append(target)
    return files


def publish(
    directory: Path, model_path: Path, reports: dict[str, str], version: int | None = None
) -> tuple[int, Path]:
    """Write `model_path` (with its external data) and `reports` (file name -> text) as the
    next version of the model in `directory`; returns the version and its directory."""
    number = next_version(directory) if version is None else version
    target = directory / str(number)
    staging = directory.parent / f".{directory.name}.{number}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        for index, source in enumerate(model_files(model_path)):
            name = MODEL_FILE if index == 0 else source.name
            shutil.copyfile(source, staging / name)
        for name, text in reports.items():
            (staging / name).write_text(text, encoding="utf-8")
        try:
            staging.rename(target)
        except OSError as exc:
            raise OptimizeError(
                f"cannot write version {number}: {target} appeared meanwhile ({exc}); run again"
            ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return number, target


def serving_note(directory: Path, version: int) -> str:
    """What the server will serve of this model now that `version` exists, read from the
    model's config.toml (whose version_policy decides it)."""
    try:
        config = load_model_config(directory)
    except ModelLoadError as exc:
        return f"warning: the model's config does not load, so the server will not serve it: {exc}"
    served = config.version_policy.select(versions_on_disk(directory))
    default = f"the URL without a version goes to v{served[-1]}" if served else ""
    if version not in served:
        return (
            f"note: {directory / 'config.toml'}'s version_policy serves versions {served}, not "
            f"v{version}; set [version_policy] all = true (or specific = [...]) to serve it"
        )
    if len(served) == 1:
        return (
            f"note: the server will serve only v{version} of {directory.name} (its "
            "version_policy loads the highest version only); to serve versions side by side "
            f"and A/B them by URL, set [version_policy] all = true in {directory / 'config.toml'}"
        )
    return f"the server will serve versions {served} side by side; {default}"
