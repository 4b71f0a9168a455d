"""Graphs ONNX Runtime optimized once, kept for the sessions after.

Creating a CPU session spends much of its time in the graph optimizer (the text model's
int8 graph: about 40% of it). The optimized graph is saved the first time and later
sessions read it with the optimizer off, which is ONNX Runtime's own offline-optimization
path. The saved graph may hold operators for this CPU only (its NCHWc layouts), so the
caller keys where it is kept by the model file, the ONNX Runtime version and the CPU.
Anything unreadable is ignored and optimized again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import onnxruntime as ort

log = logging.getLogger(__name__)


def open_optimized(
    kept: Path, options: ort.SessionOptions, providers: Sequence[Any]
) -> ort.InferenceSession | None:
    """A session on the graph kept at `kept`, the optimizer off; None where there is none
    (or it does not load: it is then optimized and written again)."""
    if not kept.is_file():
        return None
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(str(kept), options, providers=list(providers))
    except Exception as exc:  # a torn or foreign file: optimize the model again
        log.warning("optimized graph %s does not load (%s); optimizing again", kept, exc)
        return None


def create_keeping(
    model_path: Path,
    make_options: Callable[[], ort.SessionOptions],
    providers: Sequence[Any],
    kept: Path | None,
) -> ort.InferenceSession:
    """A session on `model_path` whose optimized graph is saved to `kept` (whole or not at
    all: written beside it, moved into place once the session exists), then opened from
    there. Where saving fails (a graph over protobuf's 2 GB, a read-only cache), the
    session is made without it."""
    written = _scratch_beside(kept) if kept is not None else None
    if kept is not None and written is not None:
        options = make_options()
        options.optimized_model_filepath = str(written)
        try:
            session = ort.InferenceSession(str(model_path), options, providers=list(providers))
            os.replace(written, kept)
            # The session that saved the graph holds a second copy of it for its lifetime:
            # serve from one opened on the kept graph instead.
            return open_optimized(kept, make_options(), providers) or session
        except Exception as exc:  # the graph itself may be bad: the plain attempt says so
            log.warning("could not keep %s's optimized graph (%s)", model_path, exc)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(written)
    return ort.InferenceSession(str(model_path), make_options(), providers=list(providers))


def _scratch_beside(kept: Path) -> Path | None:
    try:
        kept.parent.mkdir(parents=True, exist_ok=True)
        handle, written = tempfile.mkstemp(dir=kept.parent, suffix=".tmp")
        os.close(handle)
    except OSError as exc:
        log.warning("cannot keep optimized graphs under %s (%s)", kept.parent, exc)
        return None
    return Path(written)
