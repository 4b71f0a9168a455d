"""Warm-up before a version reports ready: on the config's sample, or on synthetic inputs.

A configured sample (`[warmup] file`) is the user's statement of what the model accepts, so
its failure fails the load. Synthetic inputs (zeros, strings "0") are only a guess at what
the graph accepts: a model whose graph refuses them (a lookup it indexes with the input, a
parser of its strings) still serves, so their failure is logged, not fatal.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from app.errors import ModelLoadError
from app.runtime import OnnxInstance

log = logging.getLogger(__name__)


def warm_up(
    instances: Sequence[OnnxInstance],
    *,
    label: str,
    sizes: Sequence[int],
    batches: bool,
    sample: dict[str, np.ndarray] | None,
) -> None:
    """Warm every instance at every size; see the module docstring for failures."""
    for instance in instances:
        try:
            instance.warm_up(sizes, batches=batches, sample=sample)
        except Exception as exc:
            if sample is not None:
                raise ModelLoadError(f"warm-up on the [warmup] sample failed: {exc}") from None
            log.warning(
                "%s: warm-up on synthetic inputs failed on %s (%s); it serves all the same, "
                "its first requests may be slower. Give it a [warmup] file of real inputs.",
                label, instance.label, exc,
            )  # fmt: skip
            return
