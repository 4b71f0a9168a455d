"""The accuracy guard: a variant that loses too much is not let into the repository.

With labels, the criterion is accuracy lost against the version the variant came from, in
percentage points (`max_accuracy_drop`, default 1). Without labels it is top-1 agreement with
that version's predictions (`min_agreement`, default 0.99), and optionally the cosine of its
float outputs (`min_cosine`, the worst sample). Each check that misses says by how much.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.optimize.errors import OptimizeError
from app.optimize.evaluate import Evaluation, VariantResult

DEFAULT_MAX_ACCURACY_DROP = 1.0
DEFAULT_MIN_AGREEMENT = 0.99


@dataclass(frozen=True)
class Guard:
    max_accuracy_drop: float | None = None
    min_agreement: float | None = None
    min_cosine: float | None = None


@dataclass(frozen=True)
class Check:
    criterion: str
    measured: float
    limit: float
    passed: bool
    message: str


@dataclass(frozen=True)
class Verdict:
    checks: list[Check]

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def summary(self) -> str:
        return "; ".join(check.message for check in self.checks)


def check(guard: Guard, evaluation: Evaluation, variant: VariantResult) -> Verdict:
    """Apply every criterion the guard sets, or its defaults where it sets none."""
    checks: list[Check] = []
    drop = evaluation.accuracy_drop_pp(variant)
    max_drop = guard.max_accuracy_drop
    min_agreement = guard.min_agreement
    if drop is not None and max_drop is None:
        max_drop = DEFAULT_MAX_ACCURACY_DROP
    if drop is None and min_agreement is None and guard.min_cosine is None:
        min_agreement = DEFAULT_MIN_AGREEMENT
    base = evaluation.variants[0]
    if max_drop is not None:
        if drop is None:
            raise OptimizeError("--max-accuracy-drop needs labels (--labels)")
        passed = drop <= max_drop + 1e-9
        detail = (
            f"accuracy {variant.accuracy:.4f} vs {base.accuracy:.4f} of {base.name}: "
            f"{'a drop' if drop >= 0 else 'a gain'} of {abs(drop):.2f} points"
        )
        message = (
            f"{detail}, within --max-accuracy-drop {max_drop:g}"
            if passed
            else f"{detail}, {drop - max_drop:.2f} points more than --max-accuracy-drop "
            f"{max_drop:g} allows"
        )
        checks.append(Check("max_accuracy_drop", drop, max_drop, passed, message))
    agreement = variant.agreement
    if min_agreement is not None and agreement is not None:
        passed = agreement.top1 >= min_agreement - 1e-12
        detail = f"top-1 agreement with {base.name} {agreement.top1:.4f}"
        message = (
            f"{detail}, at least --min-agreement {min_agreement:g}"
            if passed
            else f"{detail}, {min_agreement - agreement.top1:.4f} below --min-agreement "
            f"{min_agreement:g}"
        )
        checks.append(Check("min_agreement", agreement.top1, min_agreement, passed, message))
    if guard.min_cosine is not None and agreement is not None:
        cosine = agreement.cosine_min
        if cosine is None:
            raise OptimizeError("--min-cosine needs a float output to compare")
        passed = cosine >= guard.min_cosine - 1e-12
        detail = f"worst-sample output cosine with {base.name} {cosine:.4f}"
        message = (
            f"{detail}, at least --min-cosine {guard.min_cosine:g}"
            if passed
            else f"{detail}, {guard.min_cosine - cosine:.4f} below --min-cosine "
            f"{guard.min_cosine:g}"
        )
        checks.append(Check("min_cosine", cosine, guard.min_cosine, passed, message))
    return Verdict(checks)
