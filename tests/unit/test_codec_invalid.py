"""app.protocol.codec refusing invalid KServe v2 JSON requests, each with a message that says
what to fix."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from app.errors import InvalidInputError
from app.protocol.codec import (
    describe_specs,
)
from app.tensors import TensorSpec
from tests.codec_helpers import (
    EXPECTED_INPUTS,
    INPUTS,
    assert_rejected,
    decode,
    decode_single,
    same_bits,
    tensor,
    valid_idx,
    valid_x,
)

# --------------------------------------------------------------------------- invalid requests


@pytest.mark.parametrize("body", [b"", b"{", b'{"inputs": [}', b"not json", b"\xff\xfe"])
def test_malformed_json_is_rejected(body: bytes) -> None:
    assert_rejected(body, "request body is not valid JSON")


@pytest.mark.parametrize("doc", [[], [valid_x()], "inputs", 3, None])
def test_body_that_is_not_an_object_is_rejected(doc: Any) -> None:
    assert_rejected(doc, "request body must be a JSON object with an 'inputs' array")


@pytest.mark.parametrize(
    "doc",
    [{}, {"inputs": []}, {"inputs": None}, {"inputs": valid_x()}, {"inputs": "x"}],
    ids=["missing", "empty", "null", "object", "string"],
)
def test_missing_or_empty_inputs_is_rejected_listing_expected_inputs(doc: Any) -> None:
    assert_rejected(
        doc, f"request must have a non-empty 'inputs' array; the model expects {EXPECTED_INPUTS}"
    )


def test_input_entry_that_is_not_an_object_is_rejected() -> None:
    assert_rejected(
        {"inputs": [valid_x(), ["idx"]]}, "each entry of 'inputs' must be a JSON object"
    )


@pytest.mark.parametrize("name", [None, 3, ["x"]])
def test_input_without_string_name_is_rejected(name: Any) -> None:
    entry = valid_x(name=name)
    assert_rejected(
        {"inputs": [entry, valid_idx()]}, "each entry of 'inputs' needs a string 'name'"
    )


def test_unknown_input_name_is_rejected_listing_expected_inputs() -> None:
    assert_rejected(
        {"inputs": [valid_x(), valid_idx(name="index")]},
        f"unknown input 'index'; the model expects {EXPECTED_INPUTS}",
    )


def test_duplicate_input_is_rejected() -> None:
    assert_rejected(
        {"inputs": [valid_x(), valid_idx(), valid_x()]}, "input 'x' is given more than once"
    )


@pytest.mark.parametrize(
    ("datatype", "shown"),
    [("FP64", "'FP64'"), ("fp32", "'fp32'"), ("BYTES", "'BYTES'"), (None, "None")],
)
def test_wrong_datatype_is_rejected_naming_both(datatype: Any, shown: str) -> None:
    assert_rejected(
        {"inputs": [valid_x(datatype=datatype), valid_idx()]},
        f"input 'x': datatype {shown} does not match the model's FP32",
    )


@pytest.mark.parametrize(
    "shape",
    [[6], [1, 2, 3], [], [2, 4], [2, 2]],
    ids=["rank-too-low", "rank-too-high", "scalar", "fixed-dim-too-big", "fixed-dim-too-small"],
)
def test_shape_not_fitting_the_model_is_rejected_showing_model_shape(shape: list[int]) -> None:
    assert_rejected(
        {"inputs": [valid_x(shape=shape), valid_idx()]},
        f"input 'x': shape {shape} does not match the model's [-1, 3] (-1 is any size)",
    )


def test_fixed_dim_anywhere_is_checked() -> None:
    spec = TensorSpec("img", "UINT8", (3, -1, 2))

    assert_rejected(
        {"inputs": [tensor("img", "UINT8", [4, 1, 2], [0] * 8)]},
        "input 'img': shape [4, 1, 2] does not match the model's [3, -1, 2]",
        inputs=(spec,),
    )


@pytest.mark.parametrize(
    "shape",
    [[-1, 3], [2, -3], [2.0, 3], ["2", 3], [True, 3], [None], None, "2,3", 6, {"0": 2}],
    ids=[
        "negative-batch",
        "negative-dim",
        "float",
        "string-dim",
        "bool-dim",
        "null-dim",
        "null",
        "string",
        "int",
        "object",
    ],
)
def test_negative_or_non_integer_shape_is_rejected(shape: Any) -> None:
    assert_rejected(
        {"inputs": [valid_x(shape=shape), valid_idx()]},
        f"input 'x': 'shape' must be a list of non-negative integers, got {shape!r}",
    )


def test_missing_shape_is_rejected() -> None:
    entry = valid_x()
    del entry["shape"]

    assert_rejected({"inputs": [entry, valid_idx()]}, "input 'x': 'shape' must be a list")


@pytest.mark.parametrize(
    ("shape", "data", "needed", "given"),
    [
        ([2, 3], [1.0, 2.0, 3.0, 4.0, 5.0], 6, 5),
        ([2, 3], [1.0] * 7, 6, 7),
        ([1, 3], [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], 3, 6),
        ([0, 3], [1.0, 2.0, 3.0], 0, 3),
        ([2, 3], [], 6, 0),
    ],
    ids=["too-few", "too-many", "nested-too-many", "empty-batch-with-data", "no-data"],
)
def test_data_length_not_matching_shape_is_rejected_giving_both_numbers(
    shape: list[int], data: list[Any], needed: int, given: int
) -> None:
    assert_rejected(
        {"inputs": [valid_x(shape=shape, data=data), valid_idx()]},
        f"input 'x': shape {shape} needs {needed} values, 'data' has {given}",
    )


@pytest.mark.parametrize(
    "data",
    [[[1.0, 2.0, 3.0], [4.0, 5.0]], [[1.0, 2.0, 3.0], 4.0, 5.0, 6.0], [[1.0], [2.0, [3.0]]]],
    ids=["short-row", "row-and-scalars", "deeper-element"],
)
def test_ragged_nested_data_is_rejected(data: list[Any]) -> None:
    assert_rejected(
        {"inputs": [valid_x(data=data), valid_idx()]},
        "input 'x': 'data' is not a rectangular array of FP32 values",
    )


@pytest.mark.parametrize(
    "data",
    [["1", "2", "3", "4", "5", "6"], [1.0, 2.0, "3", 4.0, 5.0, 6.0]],
    ids=["all-strings", "one-string"],
)
def test_strings_in_numeric_tensor_are_rejected(data: list[Any]) -> None:
    assert_rejected(
        {"inputs": [valid_x(data=data), valid_idx()]},
        "input 'x': 'data' holds string values, which are not valid FP32",
    )


@pytest.mark.parametrize(
    "data",
    [[None] * 6, [1.0, None, 3.0, 4.0, 5.0, 6.0], [{}] * 6],
    ids=["nulls", "one-null", "objects"],
)
def test_non_numeric_values_are_rejected(data: list[Any]) -> None:
    assert_rejected(
        {"inputs": [valid_x(data=data), valid_idx()]},
        "input 'x': 'data' holds non-numeric values, which are not valid FP32",
    )


@pytest.mark.parametrize("datatype", ["INT8", "INT32", "INT64", "UINT8", "UINT64"])
@pytest.mark.parametrize("data", [[1.5, 2.0], [1.0, 2.0], [1, 2.5]], ids=["frac", "whole", "mixed"])
def test_floats_in_int_tensor_are_rejected(datatype: str, data: list[Any]) -> None:
    spec = TensorSpec("t", datatype, (2,))

    assert_rejected(
        {"inputs": [tensor("t", datatype, [2], data)]},
        f"input 't': 'data' holds float values, which are not valid {datatype}",
        inputs=(spec,),
    )


@pytest.mark.parametrize("datatype", ["FP16", "FP32", "FP64", "INT64", "UINT8"])
def test_bools_in_numeric_tensor_are_rejected(datatype: str) -> None:
    spec = TensorSpec("t", datatype, (2,))

    assert_rejected(
        {"inputs": [tensor("t", datatype, [2], [True, False])]},
        f"input 't': 'data' holds boolean values, which are not valid {datatype}",
        inputs=(spec,),
    )


@pytest.mark.parametrize("datatype", ["FP16", "FP32", "INT32", "INT64", "UINT8"])
@pytest.mark.parametrize(
    "data", [[1, True, 2, 3], [[1.5, 2.0], [False, 3.0]]], ids=["flat", "nested"]
)
def test_a_boolean_among_numbers_is_rejected(datatype: str, data: list[Any]) -> None:
    """numpy would take true as 1 (and an all-boolean array is refused anyway)."""
    spec = TensorSpec("t", datatype, (2, 2))
    assert_rejected(
        {"inputs": [tensor("t", datatype, [2, 2], data)]},
        f"input 't': 'data' holds boolean values, which are not valid {datatype}",
        inputs=(spec,),
    )


def test_true_elsewhere_in_the_body_is_no_boolean_in_the_data() -> None:
    doc = {"inputs": [valid_x(), valid_idx()], "parameters": {"binary_data_output": True}}
    np.testing.assert_array_equal(decode(doc).inputs["x"], np.arange(1, 7).reshape(2, 3))


@pytest.mark.parametrize(
    ("datatype", "value", "limit"),
    [("FP32", 1e39, "3.403e+38"), ("FP32", -3.5e38, "3.403e+38"), ("FP16", 70000, "6.55e+04"),
     ("FP16", 65520.0, "6.55e+04")],  # 65520 rounds to infinity in FP16
)  # fmt: skip
def test_a_value_the_float_type_cannot_hold_is_rejected(
    datatype: str, value: float, limit: str
) -> None:
    """Not an infinity: the model would answer a 200 with null probabilities."""
    spec = TensorSpec("t", datatype, (2,))
    assert_rejected(
        {"inputs": [tensor("t", datatype, [2], [value, 1.0])]},
        f"input 't': values out of range for {datatype} (at most {limit} in magnitude)",
        inputs=(spec,),
    )


@pytest.mark.parametrize(("datatype", "value"), [("FP32", 3.4e38), ("FP16", 65504.0)])
def test_the_largest_finite_values_are_accepted(datatype: str, value: float) -> None:
    array = decode_single(TensorSpec("t", datatype, (1,)), tensor("t", datatype, [1], [value]))
    assert np.isfinite(array).all() and array[0] == np.array(value, dtype=array.dtype)


@pytest.mark.parametrize(
    ("data", "kind"),
    [([1, 0], "integer"), ([1.0, 0.0], "float"), (["true", "false"], "string")],
)
def test_non_bool_values_in_bool_tensor_are_rejected(data: list[Any], kind: str) -> None:
    spec = TensorSpec("mask", "BOOL", (2,))

    assert_rejected(
        {"inputs": [tensor("mask", "BOOL", [2], data)]},
        f"input 'mask': 'data' holds {kind} values, which are not valid BOOL",
        inputs=(spec,),
    )


@pytest.mark.parametrize(
    ("datatype", "value", "bounds"),
    [
        ("UINT8", 300, "[0, 255]"),
        ("UINT8", -1, "[0, 255]"),
        ("INT8", 128, "[-128, 127]"),
        ("INT8", -129, "[-128, 127]"),
        ("INT16", 40000, "[-32768, 32767]"),
        ("UINT16", 65536, "[0, 65535]"),
        ("INT32", 2**31, f"[{-(2**31)}, {2**31 - 1}]"),
        ("UINT32", -1, f"[0, {2**32 - 1}]"),
        ("UINT32", 2**32, f"[0, {2**32 - 1}]"),
        ("INT64", 2**63, f"[{-(2**63)}, {2**63 - 1}]"),
        ("UINT64", -1, f"[0, {2**64 - 1}]"),
    ],
)
def test_out_of_range_ints_are_rejected(datatype: str, value: int, bounds: str) -> None:
    spec = TensorSpec("t", datatype, (-1,))

    assert_rejected(
        {"inputs": [tensor("t", datatype, [1], [value])]},
        f"input 't': values out of range for {datatype} {bounds}",
        inputs=(spec,),
    )


@pytest.mark.parametrize(
    ("datatype", "data"),
    [
        ("INT64", "[0, 9223372036854775808]"),
        ("INT64", "[-9223372036854775809]"),
        ("UINT64", "[18446744073709551616]"),
        ("UINT64", "[-1, 9223372036854775808]"),
    ],
    ids=["int64-max-plus-1-mixed", "int64-min-minus-1", "uint64-max-plus-1", "uint64-mixed-sign"],
)
def test_ints_beyond_64_bits_are_rejected(datatype: str, data: str) -> None:
    # orjson/numpy turn these into floats; they must still be refused (the message then
    # speaks of float values rather than of the range).
    spec = TensorSpec("t", datatype, (-1,))
    count = data.count(",") + 1
    body = (
        f'{{"inputs": [{{"name": "t", "datatype": "{datatype}", "shape": [{count}], '
        f'"data": {data}}}]}}'
    ).encode()

    with pytest.raises(InvalidInputError, match=f"input 't': .*{datatype}"):
        decode(body, inputs=(spec,))


@pytest.mark.parametrize(
    "values",
    [[0, 2**63 - 1], [2**63, 2**64 - 1], [2**64 - 1]],
    ids=["below-2**63", "all-above-2**63", "max"],
)
def test_uint64_values_decode(values: list[int]) -> None:
    spec = TensorSpec("t", "UINT64", (-1,))

    decoded = decode_single(spec, tensor("t", "UINT64", [len(values)], values))

    assert same_bits(decoded, np.array(values, dtype=np.uint64))


def test_uint64_values_mixing_small_and_above_int64_max_decode() -> None:
    spec = TensorSpec("t", "UINT64", (-1,))
    values = [0, 2**63, 2**64 - 1]

    decoded = decode_single(spec, tensor("t", "UINT64", [3], values))

    assert same_bits(decoded, np.array(values, dtype=np.uint64))


def test_missing_data_is_rejected() -> None:
    entry = valid_x()
    del entry["data"]

    assert_rejected({"inputs": [entry, valid_idx()]}, "input 'x': 'data' is missing")


@pytest.mark.parametrize("data", [None, 1.0, "1,2,3,4,5,6", {"0": 1.0}])
def test_data_that_is_not_an_array_is_rejected(data: Any) -> None:
    assert_rejected(
        {"inputs": [valid_x(data=data), valid_idx()]},
        "input 'x': 'data' must be a JSON array (flat or nested) of FP32 values",
    )


@pytest.mark.parametrize(
    ("given", "missing"),
    [([valid_x()], ["idx"]), ([valid_idx()], ["x"])],
    ids=["idx", "x"],
)
def test_missing_input_is_rejected_listing_expected_inputs(
    given: list[dict[str, Any]], missing: list[str]
) -> None:
    assert_rejected(
        {"inputs": given},
        f"missing input(s) {missing}; the model expects {EXPECTED_INPUTS}",
    )


@pytest.mark.parametrize("request_id", [42, ["a"], {"id": "a"}, True])
def test_non_string_id_is_rejected(request_id: Any) -> None:
    assert_rejected({"id": request_id, "inputs": [valid_x(), valid_idx()]}, "'id' must be a string")


@pytest.mark.parametrize("parameters", [["a"], "a", 1])
def test_non_object_parameters_are_rejected(parameters: Any) -> None:
    assert_rejected(
        {"parameters": parameters, "inputs": [valid_x(), valid_idx()]},
        "'parameters' must be a JSON object",
    )


def test_describe_specs_formats_name_datatype_and_shape() -> None:
    assert describe_specs(INPUTS) == EXPECTED_INPUTS
    assert describe_specs([]) == ""
