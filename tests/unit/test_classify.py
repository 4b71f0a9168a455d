"""Triton's classification extension (app.dataplane.classify): the top K of each sample in a
stable sort's order (highest first, equal scores by index, NaN never above a number), as
"score:index:label" strings."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from app.dataplane.classify import top_classes
from app.errors import InvalidInputError


def stable_top(scores: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-scores, axis=-1, kind="stable")[..., :k]


def indices(strings: np.ndarray) -> np.ndarray:
    return np.vectorize(lambda text: int(text.split(":")[1]))(strings)


# Few distinct values, NaN among them: ties and NaN are what tell orders apart.
SCORES = arrays(np.float32, st.tuples(st.integers(1, 3), st.integers(1, 12)),
                elements=st.sampled_from([-1.0, 0.0, 0.5, 2.0, float("nan")]))  # fmt: skip


@given(scores=SCORES, count=st.integers(1, 14))
def test_the_top_k_is_a_stable_sorts_order(scores: np.ndarray, count: int) -> None:
    k = min(count, scores.shape[-1])
    result = top_classes("logits", scores, count, None)
    assert result.shape == (*scores.shape[:-1], k)
    np.testing.assert_array_equal(indices(result), stable_top(scores, k))


def test_top_1_of_ties_is_the_first_and_carries_score_and_label() -> None:
    scores = np.array([[0.25, 0.75, 0.75], [np.nan, 0.5, -1.0]], dtype=np.float32)
    result = top_classes("logits", scores, 1, ("cat", "dog", "fox"))
    assert result.tolist() == [["0.750000:1:dog"], ["0.500000:1:dog"]]


def test_samples_with_more_axes_are_classified_along_the_last() -> None:
    scores = np.arange(24, dtype=np.int64).reshape(2, 3, 4)
    result = top_classes("logits", scores, 2, None)
    assert result.shape == (2, 3, 2)
    assert result[1, 2].tolist() == ["23.000000:3", "22.000000:2"]


@pytest.mark.parametrize("scores", [np.zeros(5, np.float32), np.array([["a", "b"]])])
def test_outputs_that_are_not_class_scores_are_refused(scores: np.ndarray) -> None:
    with pytest.raises(InvalidInputError, match="classification needs per-sample"):
        top_classes("logits", scores, 1, None)
