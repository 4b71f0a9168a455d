"""The highest structured sparsity within a quality budget, found by bisection.

Each step prunes the source at one sparsity (with the command's importance, ranking and
reconstruction), measures it against the source on the evaluation data (no timing) and
applies the accuracy guard; quality falls with sparsity, so bisection needs few steps. The
chosen sparsity is picked on the evaluation data, so the quality it then reports there is
the best of several tries: give a validation set as --data and keep a test set apart to quote.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from app.optimize import guard
from app.optimize.data import Dataset
from app.optimize.errors import GuardMissed
from app.optimize.evaluate import BenchSettings, Candidate, evaluate

#: The search never goes above this share of units (an empty layer is no model).
MAX_SPARSITY = 0.95
#: Bisection steps: the answer is within MAX_SPARSITY / 2**STEPS (under 1%) of the limit.
STEPS = 7

#: Writes the source pruned at a sparsity to the given path (what it returns is unused).
Pruner = Callable[[float, Path], object]


@dataclass(frozen=True)
class Step:
    sparsity: float
    passed: bool
    summary: str


def search(
    source: Path,
    prune_to: Pruner,
    data: Dataset,
    limits: guard.Guard,
    output: str | None,
    device: str = "cpu",
) -> tuple[float, list[Step]]:
    """The highest sparsity (to STEPS halvings) whose variant passes `limits`, and every
    step tried; GuardMissed when even the smallest step misses."""
    settings = BenchSettings(device=device, batch_sizes=(), rounds=1)
    low, high = 0.0, MAX_SPARSITY
    steps: list[Step] = []
    with tempfile.TemporaryDirectory(prefix="batchserve-prune-search-") as work:
        target = Path(work) / "model.onnx"
        for _ in range(STEPS):
            middle = (low + high) / 2
            prune_to(middle, target)
            evaluation = evaluate(
                [Candidate("source", source, ""), Candidate("pruned", target, "")],
                data,
                settings,
                output,
            )
            verdict = guard.check(limits, evaluation, evaluation.variants[1])
            steps.append(Step(round(middle, 4), verdict.passed, verdict.summary()))
            if verdict.passed:
                low = middle
            else:
                high = middle
    if low == 0.0:
        raise GuardMissed(
            f"no sparsity down to {high:.1%} stays within the budget ({steps[-1].summary}); "
            "loosen it or add calibration data"
        )
    return round(low, 4), steps
