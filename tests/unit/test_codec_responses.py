"""app.protocol.codec encoding responses, round-trip properties of requests and responses,
and app.tensors' datatype tables."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from app.protocol.codec import (
    encode_error,
    encode_infer_response,
)
from app.tensors import ONNX_TO_V2, V2_TO_NUMPY, TensorSpec, numpy_dtype
from tests.codec_helpers import (
    NUMERIC_DATATYPES,
    OUTPUT_SPECS,
    decode,
    decode_single,
    extreme_values,
    same_bits,
    tensor,
)

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
    original = np.array(extreme_values(datatype), dtype=dtype).reshape(2, 2)

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
