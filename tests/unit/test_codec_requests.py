"""app.protocol.codec decoding valid KServe v2 JSON requests: shapes, datatypes, order, ids,
parameters and output selection."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from app.tensors import V2_TO_NUMPY, TensorSpec
from tests.codec_helpers import (
    NUMERIC_DATATYPES,
    X,
    assert_rejected,
    decode,
    decode_single,
    extreme_values,
    same_bits,
    tensor,
    valid_idx,
    valid_x,
)

# --------------------------------------------------------------------------- valid requests


def test_flat_fp32_data_decodes_to_float32_array_of_request_shape() -> None:
    request = decode({"inputs": [valid_x(), valid_idx()]})

    x = request.inputs["x"]
    assert x.dtype == np.float32
    assert x.shape == (2, 3)
    np.testing.assert_array_equal(x, np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32))
    idx = request.inputs["idx"]
    assert idx.dtype == np.int64
    np.testing.assert_array_equal(idx, np.array([7, 8], dtype=np.int64))


def test_nested_fp32_data_decodes_like_flat_data() -> None:
    nested = decode({"inputs": [valid_x(data=[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), valid_idx()]})
    flat = decode({"inputs": [valid_x(), valid_idx()]})

    assert same_bits(nested.inputs["x"], flat.inputs["x"])


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
def test_float32_values_sent_via_tolist_come_back_bit_exact(nested: bool) -> None:
    f32 = np.finfo(np.float32)
    original = np.array(
        [
            [0.1, 1 / 3, -2.5e-7],
            [f32.max, f32.min, f32.tiny],
            [f32.smallest_subnormal, -0.0, 16777217.0],
            [np.pi, -np.e, 1e-30],
        ],
        dtype=np.float32,
    )
    data = original.tolist() if nested else original.reshape(-1).tolist()

    decoded = decode_single(X, tensor("x", "FP32", [4, 3], data))

    assert same_bits(decoded, original)


def test_inputs_come_back_in_model_order_whatever_the_request_order() -> None:
    request = decode({"inputs": [valid_idx(), valid_x()]})

    assert list(request.inputs) == ["x", "idx"]


@pytest.mark.parametrize("datatype", NUMERIC_DATATYPES)
def test_every_v2_datatype_round_trips(datatype: str) -> None:
    dtype = V2_TO_NUMPY[datatype]
    spec = TensorSpec("t", datatype, (-1, 2))
    values = extreme_values(datatype)

    decoded = decode_single(spec, tensor("t", datatype, [2, 2], values))

    expected = np.array(values, dtype=dtype).reshape(2, 2)
    assert decoded.dtype == dtype
    assert same_bits(decoded, expected)


@pytest.mark.parametrize("datatype", sorted(V2_TO_NUMPY))
def test_every_v2_datatype_accepts_empty_batch(datatype: str) -> None:
    spec = TensorSpec("t", datatype, (-1, 4))

    decoded = decode_single(spec, tensor("t", datatype, [0, 4], []))

    assert decoded.dtype == V2_TO_NUMPY[datatype]
    assert decoded.shape == (0, 4)


@pytest.mark.parametrize("datatype", ["FP16", "FP32", "FP64"])
def test_integers_are_accepted_for_float_datatypes(datatype: str) -> None:
    spec = TensorSpec("t", datatype, (3,))

    decoded = decode_single(spec, tensor("t", datatype, [3], [1, -2, 3]))

    assert decoded.dtype == V2_TO_NUMPY[datatype]
    np.testing.assert_array_equal(decoded, [1, -2, 3])


def test_scalar_input_decodes_from_one_element_list() -> None:
    spec = TensorSpec("s", "FP32", ())

    decoded = decode_single(spec, tensor("s", "FP32", [], [2.5]))

    assert decoded.shape == ()
    assert decoded == np.float32(2.5)


def test_id_is_echoed() -> None:
    request = decode({"id": "req-42", "inputs": [valid_x(), valid_idx()]})

    assert request.request_id == "req-42"


def test_id_absent_is_none_and_defaults_are_empty() -> None:
    request = decode({"inputs": [valid_x(), valid_idx()]})

    assert request.request_id is None
    assert request.outputs is None
    assert request.parameters == {}


def test_parameters_are_passed_through() -> None:
    request = decode({"inputs": [valid_x(), valid_idx()], "parameters": {"priority": 3}})

    assert request.parameters == {"priority": 3}


def test_output_selection_is_decoded_in_request_order() -> None:
    request = decode(
        {"inputs": [valid_x(), valid_idx()], "outputs": [{"name": "label"}, {"name": "y"}]}
    )

    assert request.outputs == ["label", "y"]


def test_empty_output_selection_is_an_empty_list() -> None:
    request = decode({"inputs": [valid_x(), valid_idx()], "outputs": []})

    assert request.outputs == []


@pytest.mark.parametrize(
    ("selection", "shown"),
    [
        ([{"name": "nope"}], "'nope'"),
        ([{"name": "y"}, {"name": "probabilities"}], "'probabilities'"),
        ([{}], "None"),
        (["y"], "None"),
        ([{"name": 1}], "1"),
    ],
    ids=["unknown", "one-unknown", "no-name", "not-object", "non-string-name"],
)
def test_unknown_output_is_rejected_listing_model_outputs(selection: Any, shown: str) -> None:
    assert_rejected(
        {"inputs": [valid_x(), valid_idx()], "outputs": selection},
        f"unknown output {shown} requested; the model's outputs are ['label', 'y']",
    )


def test_outputs_not_an_array_is_rejected() -> None:
    assert_rejected(
        {"inputs": [valid_x(), valid_idx()], "outputs": {"name": "y"}},
        "'outputs' must be an array",
    )
