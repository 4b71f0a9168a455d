"""Errors of `batchserve optimize`, each written for the user who has to act on it."""

from __future__ import annotations

import importlib.util


class OptimizeError(Exception):
    """The command cannot do what was asked; the message says why and what to change."""


class PruneRefused(OptimizeError):
    """The graph cannot be pruned safely; the message names the node that stopped it."""


class GuardMissed(OptimizeError):
    """The variant lost more than the accuracy guard allows, so it was not written."""


#: The extra that installs what `batchserve optimize` needs beyond the server's runtime.
EXTRA = "optimize"


def require(module: str, needed_for: str) -> None:
    """Fail early, naming the extra to install, when an optional dependency is missing
    (instead of an ImportError from deep inside ONNX Runtime halfway through a command)."""
    if importlib.util.find_spec(module) is None:
        raise OptimizeError(
            f"{needed_for} needs the Python package '{module}', which is not installed; "
            f"install batchserve's '{EXTRA}' extra: pip install 'batchserve[{EXTRA}]' "
            f"(from a checkout: pip install -e '.[{EXTRA}]')"
        )
