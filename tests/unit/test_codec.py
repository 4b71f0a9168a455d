"""Unit tests for app.protocol.codec (JSON tensors) and app.protocol.datatypes."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from app.errors import InvalidInputError
from app.protocol.codec import (
    decode_infer_request,
    describe_specs,
    encode_error,
    encode_infer_response,
)
from app.tensors import ONNX_TO_V2, V2_TO_NUMPY, TensorSpec, numpy_dtype

# A two-input model: a batched FP32 feature matrix and a batched INT64 vector.
X = TensorSpec("x", "FP32", (-1, 3))
IDX = TensorSpec("idx", "INT64", (-1,))
INPUTS = (X, IDX)
Y = TensorSpec("y", "FP32", (-1, 2))
LABEL = TensorSpec("label", "INT64", (-1,))
OUTPUTS = (Y, LABEL)
OUTPUT_SPECS = {s.name: s for s in OUTPUTS}
EXPECTED_INPUTS = "x (FP32 [-1, 3]), idx (INT64 [-1])"


def tensor(name: str, datatype: str, shape: list[Any], data: Any) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def valid_x(**overrides: Any) -> dict[str, Any]:
    entry = tensor("x", "FP32", [2, 3], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    entry.update(overrides)
    return entry


def valid_idx(**overrides: Any) -> dict[str, Any]:
    entry = tensor("idx", "INT64", [2], [7, 8])
    entry.update(overrides)
    return entry


def decode(
    doc: Any,
    inputs: tuple[TensorSpec, ...] = INPUTS,
    outputs: tuple[TensorSpec, ...] = OUTPUTS,
) -> Any:
    body = doc if isinstance(doc, bytes) else orjson.dumps(doc)
    return decode_infer_request(body, inputs, outputs)


def decode_single(spec: TensorSpec, entry: dict[str, Any]) -> np.ndarray:
    """Decode a request for a model whose only input is `spec`; return that array."""
    return decode({"inputs": [entry]}, inputs=(spec,)).inputs[spec.name]


def assert_rejected(doc: Any, *fragments: str, inputs: tuple[TensorSpec, ...] = INPUTS) -> None:
    """Decoding `doc` raises InvalidInputError whose message contains every fragment."""
    with pytest.raises(InvalidInputError, match=re.escape(fragments[0])) as info:
        decode(doc, inputs=inputs)
    for fragment in fragments[1:]:
        assert fragment in info.value.message
    assert str(info.value) == info.value.message


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


NUMERIC_DATATYPES = sorted(d for d in V2_TO_NUMPY if d != "BYTES")


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


def _extreme_values(datatype: str) -> list[Any]:
    dtype = V2_TO_NUMPY[datatype]
    if dtype.kind == "b":
        values: Any = [True, False, True, True]
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)  # type: ignore[type-var]
        values = [info.min, 0, 1, info.max]
    else:
        finfo = np.finfo(dtype)  # type: ignore[arg-type]
        values = [finfo.min, -0.0, finfo.smallest_subnormal, finfo.max]
    return np.array(values, dtype=dtype).tolist()


@pytest.mark.parametrize("datatype", NUMERIC_DATATYPES)
def test_every_v2_datatype_round_trips(datatype: str) -> None:
    dtype = V2_TO_NUMPY[datatype]
    spec = TensorSpec("t", datatype, (-1, 2))
    values = _extreme_values(datatype)

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


# --------------------------------------------------------------------------- encoding


def encode(outputs: dict[str, np.ndarray], request_id: str | None = "req-1") -> dict[str, Any]:
    specs = {name: TensorSpec(name, _v2_name(a.dtype), a.shape) for name, a in outputs.items()}
    return orjson.loads(encode_infer_response("model", "3", request_id, outputs, specs).content)


def _v2_name(dtype: np.dtype[Any]) -> str:
    return next(name for name, d in V2_TO_NUMPY.items() if d == dtype)


def test_response_has_model_name_version_id_and_outputs() -> None:
    y = np.array([[0.5, 1.5], [2.5, 3.5]], dtype=np.float32)
    label = np.array([1, 0], dtype=np.int64)

    body = encode_infer_response("iris", "2", "req-7", {"y": y, "label": label}, OUTPUT_SPECS)
    doc = orjson.loads(body.content)

    assert doc == {
        "model_name": "iris",
        "model_version": "2",
        "id": "req-7",
        "outputs": [
            {"name": "y", "datatype": "FP32", "shape": [2, 2], "data": [0.5, 1.5, 2.5, 3.5]},
            {"name": "label", "datatype": "INT64", "shape": [2], "data": [1, 0]},
        ],
    }


def test_response_without_id_has_no_id_key() -> None:
    doc = encode({"y": np.zeros((1, 2), dtype=np.float32)}, request_id=None)

    assert "id" not in doc
    assert doc["model_name"] == "model"
    assert doc["model_version"] == "3"


def test_response_datatype_comes_from_the_spec() -> None:
    y = np.zeros((1, 2), dtype=np.float32)

    doc = orjson.loads(encode_infer_response("m", "1", None, {"y": y}, OUTPUT_SPECS).content)

    assert doc["outputs"][0]["datatype"] == "FP32"


def test_response_outputs_follow_the_given_order() -> None:
    outputs = {
        "label": np.array([3], dtype=np.int64),
        "y": np.array([[1.0, 2.0]], dtype=np.float32),
    }

    doc = orjson.loads(encode_infer_response("m", "1", None, outputs, OUTPUT_SPECS).content)

    assert [o["name"] for o in doc["outputs"]] == ["label", "y"]


def test_float32_outputs_round_trip_exactly() -> None:
    f32 = np.finfo(np.float32)
    original = np.array(
        [0.1, 1 / 3, -0.0, f32.tiny, f32.smallest_subnormal, f32.max, f32.min, 16777216.0],
        dtype=np.float32,
    ).reshape(2, 4)

    out = encode({"y": original})["outputs"][0]

    assert out["shape"] == [2, 4]
    assert len(out["data"]) == 8  # flat
    back = np.array(out["data"], dtype=np.float32).reshape(out["shape"])
    assert same_bits(back, original)


def test_fp16_outputs_encode() -> None:
    original = np.array([0.1, -0.0, 65504.0, 6e-8, 1.0, -2.5], dtype=np.float16)

    out = encode({"h": original})["outputs"][0]

    assert out["datatype"] == "FP16"
    assert out["shape"] == [6]
    back = np.array(out["data"], dtype=np.float16)
    assert same_bits(back, original)


def test_bool_outputs_encode_as_json_booleans() -> None:
    original = np.array([[True, False], [False, True]])

    out = encode({"mask": original})["outputs"][0]

    assert out == {
        "name": "mask",
        "datatype": "BOOL",
        "shape": [2, 2],
        "data": [True, False, False, True],
    }


@pytest.mark.parametrize("datatype", NUMERIC_DATATYPES)
def test_every_v2_datatype_encodes_and_decodes_back(datatype: str) -> None:
    dtype = V2_TO_NUMPY[datatype]
    original = np.array(_extreme_values(datatype), dtype=dtype).reshape(2, 2)

    out = encode({"t": original})["outputs"][0]
    spec = TensorSpec("t", datatype, (-1, 2))
    back = decode_single(spec, tensor("t", out["datatype"], out["shape"], out["data"]))

    assert out["datatype"] == datatype
    assert same_bits(back, original)


def test_non_contiguous_output_is_encoded_in_row_major_order() -> None:
    base = np.arange(6, dtype=np.float32).reshape(2, 3)
    transposed = base.T  # shape (3, 2), Fortran-ordered view

    out = encode({"y": transposed})["outputs"][0]

    assert out["shape"] == [3, 2]
    assert out["data"] == [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]


def test_empty_and_scalar_outputs_encode() -> None:
    doc = encode(
        {"empty": np.zeros((0, 4), dtype=np.float32), "scalar": np.array(2.5, dtype=np.float64)}
    )

    empty, scalar = doc["outputs"]
    assert (empty["shape"], empty["data"]) == ([0, 4], [])
    assert (scalar["shape"], scalar["data"]) == ([], [2.5])


@pytest.mark.parametrize(
    "message", ["model 'x' not found", "na\u00efve \u2013 \u00fcn\u00efcode \u2713", 'quote " \\']
)
def test_encode_error(message: str) -> None:
    assert orjson.loads(encode_error(message)) == {"error": message}


# --------------------------------------------------------------------------- properties

FLOAT32_MATRICES = hnp.arrays(
    dtype=np.float32,
    shape=hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=8),
    elements=st.floats(width=32, allow_nan=False, allow_infinity=False),
)
ANY_MATRIX_SPEC = TensorSpec("x", "FP32", (-1, -1))


def _as_request(array: np.ndarray, data: Any) -> dict[str, Any]:
    return {"inputs": [tensor("x", "FP32", list(array.shape), data)]}


@given(FLOAT32_MATRICES, st.booleans())
def test_property_float32_request_round_trip_is_bit_identical(
    array: np.ndarray, nested: bool
) -> None:
    data = array.tolist() if nested else array.reshape(-1).tolist()

    decoded = decode(_as_request(array, data), inputs=(ANY_MATRIX_SPEC,)).inputs["x"]

    assert decoded.dtype == np.float32
    assert decoded.shape == array.shape
    assert np.array_equal(decoded.view(np.uint32), array.view(np.uint32))


@given(FLOAT32_MATRICES)
def test_property_encoded_response_decodes_back_bit_identical(array: np.ndarray) -> None:
    out = encode({"x": array})["outputs"][0]

    request = {"inputs": [tensor("x", out["datatype"], out["shape"], out["data"])]}
    decoded = decode(request, inputs=(ANY_MATRIX_SPEC,)).inputs["x"]

    assert decoded.shape == array.shape
    assert np.array_equal(decoded.view(np.uint32), array.view(np.uint32))


def test_negative_zero_keeps_its_sign() -> None:
    array = np.array([[-0.0, 0.0]], dtype=np.float32)

    via_request = decode(_as_request(array, array.tolist()), inputs=(ANY_MATRIX_SPEC,))
    out = encode({"x": array})["outputs"][0]

    assert np.signbit(via_request.inputs["x"]).tolist() == [[True, False]]
    assert np.signbit(np.array(out["data"], dtype=np.float32)).tolist() == [True, False]


def _int_or_bool_array(datatype: str) -> st.SearchStrategy[tuple[str, np.ndarray]]:
    dtype = V2_TO_NUMPY[datatype]
    shapes = hnp.array_shapes(min_dims=1, max_dims=3, max_side=5)
    return st.tuples(st.just(datatype), hnp.arrays(dtype, shapes))


@given(
    st.sampled_from(sorted(d for d in V2_TO_NUMPY if V2_TO_NUMPY[d].kind in "iub")).flatmap(
        _int_or_bool_array
    )
)
def test_property_int_and_bool_arrays_round_trip(case: tuple[str, np.ndarray]) -> None:
    datatype, array = case
    spec = TensorSpec("t", datatype, (-1,) * array.ndim)

    decoded = decode_single(spec, tensor("t", datatype, list(array.shape), array.tolist()))

    assert same_bits(decoded, array)


# --------------------------------------------------------------------------- datatypes


@pytest.mark.parametrize(("datatype", "dtype"), sorted(V2_TO_NUMPY.items()))
def test_numpy_dtype_maps_each_v2_datatype(datatype: str, dtype: np.dtype[Any]) -> None:
    assert numpy_dtype(datatype) == dtype
    assert dtype.byteorder in ("<", "=", "|")
    if dtype.byteorder == "=":
        assert dtype.newbyteorder("<") == dtype.newbyteorder("=")


def test_v2_datatype_sizes() -> None:
    sizes = {name: V2_TO_NUMPY[name].itemsize for name in NUMERIC_DATATYPES}

    assert sizes == {
        "BOOL": 1,
        "INT8": 1,
        "INT16": 2,
        "INT32": 4,
        "INT64": 8,
        "UINT8": 1,
        "UINT16": 2,
        "UINT32": 4,
        "UINT64": 8,
        "FP16": 2,
        "FP32": 4,
        "FP64": 8,
    }


@pytest.mark.parametrize("datatype", ["fp32", "FLOAT", ""])
def test_numpy_dtype_rejects_unknown_names(datatype: str) -> None:
    with pytest.raises(KeyError):
        numpy_dtype(datatype)


def test_onnx_types_map_onto_every_v2_datatype() -> None:
    assert sorted(ONNX_TO_V2.values()) == sorted(V2_TO_NUMPY)
    assert ONNX_TO_V2["tensor(float)"] == "FP32"
    assert ONNX_TO_V2["tensor(double)"] == "FP64"
    assert ONNX_TO_V2["tensor(float16)"] == "FP16"
    assert ONNX_TO_V2["tensor(string)"] == "BYTES"
    assert numpy_dtype("BYTES") == np.dtype(object)
