"""Every file a model version reads must lie inside its own directory.

A repository is often a mounted volume that others write to. A `model.onnx` that is a symlink
to elsewhere, or whose external-data tensors name `../../secret` or `/etc/passwd`, would make
the server read files outside the repository. Recent ONNX Runtime releases refuse the second
case themselves; this check does not depend on the runtime's version and names the offending
tensor in the error. Blocking (it parses the graph): call it from a thread.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx

from app.errors import ModelLoadError


def check_model_files(model_path: Path, version_dir: Path) -> None:
    """Raise ModelLoadError unless `model_path` and its external data resolve inside
    `version_dir` (symlinks followed)."""
    inside = version_dir.resolve()
    if not _within(model_path.resolve(), inside):
        raise ModelLoadError(
            f"{model_path} resolves to {model_path.resolve()}, outside its version directory; "
            "copy the model into the repository instead of linking to it"
        )
    stat = model_path.stat()
    locations = _external_locations(str(model_path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    for name, location in locations:
        target = (model_path.parent / location).resolve()
        if not location or Path(location).is_absolute() or not _within(target, inside):
            raise ModelLoadError(
                f"{model_path}: tensor '{name}' keeps its data at {location!r}, which is "
                f"not a file inside {version_dir}; external data must sit next to the model"
            )


@functools.lru_cache(maxsize=4096)
def _external_locations(
    path: str, inode: int, size: int, mtime_ns: int
) -> tuple[tuple[str, str], ...]:
    """(tensor, location) of every tensor kept outside the graph file. Parsed once per file
    as it is on disk: where they resolve to is checked on every load, since a link beside
    the model may change while the model does not."""
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends: not a model at all
        raise ModelLoadError(f"{path} is not a readable ONNX model: {exc}") from None
    return tuple(
        (tensor.name, next((e.value for e in tensor.external_data if e.key == "location"), ""))
        for tensor in _tensors(model.graph)
        if tensor.data_location == onnx.TensorProto.EXTERNAL
    )


def _within(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents


def _tensors(graph: Any) -> Iterator[Any]:
    """Initializers and constant tensors of `graph` and of every subgraph (If, Loop, Scan)."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _tensors(subgraph)
