"""The binary tensor data extension: requests with binary inputs, responses with binary outputs,
BYTES tensors, and the errors a malformed binary request gets."""

from __future__ import annotations

import contextlib
import struct

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from app.errors import InvalidInputError
from app.protocol.binary import decode_binary_tensor, encode_binary_tensor
from app.protocol.codec import decode_infer_request, encode_infer_response
from app.tensors import TensorSpec

X = TensorSpec("x", "FP32", (-1, 3))
IDS = TensorSpec("ids", "INT64", (-1,))
TEXT = TensorSpec("text", "BYTES", (-1,))
Y = TensorSpec("y", "FP32", (-1, 2))
LABEL = TensorSpec("label", "INT64", (-1,))


def binary_request(tensors: list[tuple[str, str, np.ndarray]]) -> tuple[bytes, int]:
    """A request body whose inputs all travel as binary data; returns (body, header length).
    The JSON header is padded with spaces to a multiple of 8 bytes, as clients may do, so the
    tensors that follow are aligned."""
    chunks = [encode_binary_tensor(array, datatype) for _, datatype, array in tensors]
    inputs = [
        {
            "name": name,
            "datatype": datatype,
            "shape": list(array.shape),
            "parameters": {"binary_data_size": len(chunk)},
        }
        for (name, datatype, array), chunk in zip(tensors, chunks, strict=True)
    ]
    header = orjson.dumps({"inputs": inputs})
    header += b" " * (-len(header) % 8)
    return header + b"".join(chunks), len(header)


def test_binary_inputs_decode_bit_exactly_without_copying() -> None:
    x = np.random.default_rng(0).random((4, 3), dtype=np.float32)
    ids = np.arange(4, dtype=np.int64) - 2
    body, length = binary_request([("x", "FP32", x), ("ids", "INT64", ids)])
    request = decode_infer_request(body, (X, IDS), (Y,), header_length=length)
    assert request.inputs["x"].tobytes() == x.tobytes()
    np.testing.assert_array_equal(request.inputs["ids"], ids)
    assert not request.inputs["x"].flags.owndata  # a view of the body: no copy


def test_json_and_binary_inputs_mix_in_one_request() -> None:
    x = np.ones((2, 3), np.float32)
    chunk = encode_binary_tensor(x, "FP32")
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "ids", "datatype": "INT64", "shape": [2], "data": [5, 6]},
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [2, 3],
                    "parameters": {"binary_data_size": len(chunk)},
                },
            ]
        }
    )
    request = decode_infer_request(header + chunk, (X, IDS), (Y,), header_length=len(header))
    np.testing.assert_array_equal(request.inputs["x"], x)
    np.testing.assert_array_equal(request.inputs["ids"], [5, 6])
    assert list(request.inputs) == ["x", "ids"]  # the model's order


@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, max_side=6)))
def test_any_float32_array_round_trips_through_binary(x: np.ndarray) -> None:
    spec = TensorSpec("x", "FP32", (-1, -1))
    body, length = binary_request([("x", "FP32", x)])
    decoded = decode_infer_request(body, (spec,), (Y,), header_length=length).inputs["x"]
    assert decoded.shape == x.shape and decoded.tobytes() == x.tobytes()  # NaN payloads too


def test_bytes_tensors_round_trip_in_binary_and_json() -> None:
    words = np.array(["", "héllo", "a b c"], dtype=object)
    raw = encode_binary_tensor(words, "BYTES")
    assert raw[:4] == struct.pack("<I", 0) and raw[4:8] == struct.pack("<I", len("héllo".encode()))
    decoded = decode_binary_tensor(TEXT, (3,), memoryview(raw))
    assert decoded.tolist() == words.tolist()
    body = orjson.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [3],
                                     "data": words.tolist()}]})  # fmt: skip
    assert decode_infer_request(body, (TEXT,), (Y,)).inputs["text"].tolist() == words.tolist()


def test_binary_outputs_follow_the_json_header() -> None:
    y = np.arange(6, dtype=np.float32).reshape(3, 2)
    label = np.array([1, 2, 3], dtype=np.int64)
    specs = {"y": Y, "label": LABEL}
    encoded = encode_infer_response("m", "1", "r", {"y": y, "label": label}, specs, {"y"})
    assert encoded.header_length is not None
    header = orjson.loads(encoded.content[: encoded.header_length])
    by_name = {o["name"]: o for o in header["outputs"]}
    assert by_name["y"]["parameters"] == {"binary_data_size": y.nbytes}
    assert "data" not in by_name["y"]
    assert by_name["label"]["data"] == [1, 2, 3]
    tail = encoded.content[encoded.header_length :]
    np.testing.assert_array_equal(np.frombuffer(tail, np.float32).reshape(3, 2), y)


@pytest.mark.parametrize(
    ("outputs", "parameters", "expected"),
    [
        (None, {"binary_data_output": True}, {"y", "label"}),
        (None, {}, set()),
        ([{"name": "y", "parameters": {"binary_data": True}}], {}, {"y"}),
        (
            [{"name": "y", "parameters": {"binary_data": False}}],
            {"binary_data_output": True},
            set(),
        ),
        ([{"name": "label"}], {"binary_data_output": True}, {"label"}),
    ],
)
def test_which_outputs_go_back_binary(
    outputs: object, parameters: dict[str, object], expected: set[str]
) -> None:
    body = orjson.dumps({"inputs": [{"name": "ids", "datatype": "INT64", "shape": [1],
                                     "data": [1]}], "outputs": outputs,
                         "parameters": parameters})  # fmt: skip
    request = decode_infer_request(body, (IDS,), (Y, LABEL))
    assert request.binary_outputs == expected


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda body, n: (body[:-1], n), "binary_data_size 48 runs past the binary data"),
        (lambda body, n: (body + b"\0", n), "1 bytes of binary data that no input claims"),
        (lambda body, n: (body, len(body) + 1), "outside the body"),
        (lambda body, n: (body, n // 2), "not valid JSON"),
    ],
    ids=["short", "extra", "header-too-long", "header-cut"],
)
def test_malformed_binary_requests_are_refused(mutate: object, message: str) -> None:
    body, length = binary_request([("x", "FP32", np.zeros((4, 3), np.float32))])
    body, length = mutate(body, length)  # type: ignore[operator]
    with pytest.raises(InvalidInputError, match=message):
        decode_infer_request(body, (X,), (Y,), header_length=length)


def test_binary_size_must_match_the_shape() -> None:
    chunk = np.zeros((2, 3), np.float32).tobytes()
    parameters = {"binary_data_size": len(chunk)}
    tensor = {"name": "x", "datatype": "FP32", "shape": [3, 3], "parameters": parameters}
    header = orjson.dumps({"inputs": [tensor]})
    with pytest.raises(InvalidInputError, match=r"\[3, 3\] of FP32 needs 36 bytes"):
        decode_infer_request(header + chunk, (X,), (Y,), header_length=len(header))


def test_bad_bytes_elements_are_refused() -> None:
    raw = memoryview(struct.pack("<I", 10) + b"short")
    with pytest.raises(InvalidInputError, match="length-prefixed UTF-8"):
        decode_binary_tensor(TEXT, (1,), raw)


@given(st.lists(st.text(max_size=20), max_size=8))
def test_any_strings_round_trip_as_bytes(words: list[str]) -> None:
    array = np.empty(len(words), dtype=object)
    array[:] = words
    raw = encode_binary_tensor(array, "BYTES")
    assert decode_binary_tensor(TEXT, (len(words),), memoryview(raw)).tolist() == words


@given(body=st.binary(max_size=300), header_length=st.one_of(st.none(), st.integers(-5, 400)))
def test_any_bytes_are_decoded_or_refused_with_a_400(
    body: bytes, header_length: int | None
) -> None:
    """Fuzz: whatever arrives, the codec answers with a request or an InvalidInputError."""
    with contextlib.suppress(InvalidInputError):
        decode_infer_request(body, (X, IDS, TEXT), (Y,), header_length=header_length)


@given(
    shape=st.lists(st.integers(0, 2**40), max_size=4),
    size=st.integers(0, 64),
    datatype=st.sampled_from(["FP32", "INT64", "BOOL", "BYTES", "FP16"]),
)
def test_declared_shapes_never_allocate_beyond_the_data(
    shape: list[int], size: int, datatype: str
) -> None:
    spec = TensorSpec("t", datatype, tuple(-1 for _ in shape))
    header = orjson.dumps({"inputs": [{"name": "t", "datatype": datatype, "shape": shape,
                                       "parameters": {"binary_data_size": size}}]})  # fmt: skip
    body = header + bytes(size)
    try:
        request = decode_infer_request(body, (spec,), (Y,), header_length=len(header))
    except InvalidInputError:
        return
    assert request.inputs["t"].nbytes <= max(size, 1) * 8


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nonfinite_values_are_refused_only_where_the_model_says_so(value: float) -> None:
    x = np.ones((2, 3), np.float32)
    x[1, 2] = value
    body, length = binary_request([("x", "FP32", x)])
    allowed = decode_infer_request(body, (X,), (Y,), header_length=length)
    assert allowed.inputs["x"].tobytes() == x.tobytes()
    with pytest.raises(InvalidInputError, match="input 'x': holds NaN or infinite values"):
        decode_infer_request(body, (X,), (Y,), header_length=length, reject_nonfinite=True)
