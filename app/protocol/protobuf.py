"""ModelInferRequest and ModelInferResponse to and from the data plane's types.

Inputs come as typed `contents` or as `raw_input_contents` (the binary tensor layout of the
REST extension: little-endian, row-major, BYTES elements length-prefixed); answers go back
as `raw_output_contents`, as Triton sends them. The checks are REST's (protocol.checks), so
a bad request gets the same message as there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from app.inference import InferenceRequest, InferenceResponse
from app.protocol.binary import decode_binary_tensor, encode_binary_tensor
from app.protocol.checks import (
    check_output,
    check_shape,
    classification_count,
    complete_inputs,
    decode_shape,
    describe_specs,
    fail,
    input_spec,
)
from app.protocol.proto import grpc_service_pb2 as pb
from app.tensors import V2_TO_NUMPY, TensorSpec

#: The typed-contents field that carries each datatype (FP16 has none: raw contents only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def parameters_of(parameters: Any) -> dict[str, Any]:
    """A protobuf map of InferParameter as plain values (timeout, priority, ...)."""
    values: dict[str, Any] = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        if choice is not None:
            values[key] = getattr(parameter, choice)
    return values


def decode_request(
    message: pb.ModelInferRequest,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    *,
    reject_nonfinite: bool,
    input_sets: Sequence[tuple[str, ...]],
) -> InferenceRequest:
    """Check and decode a ModelInferRequest against the model's specs."""
    if not message.inputs:
        raise fail(
            "request must have a non-empty 'inputs' array; the model expects "
            + describe_specs(inputs)
        )
    raw = message.raw_input_contents
    if raw:
        for tensor in message.inputs:
            if tensor.HasField("contents"):
                # Triton's wording, which its example clients check.
                raise fail(
                    "contents field must not be specified when using raw_input_contents for "
                    f"'{tensor.name}' for model '{message.model_name}'"
                )
    if raw and len(raw) != len(message.inputs):
        raise fail(
            f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs: "
            "give raw contents for every input, or typed contents for every input"
        )
    specs = {s.name: s for s in inputs}
    decoded: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(message.inputs):
        spec = input_spec(specs, inputs, decoded, tensor.name, tensor.datatype)
        shape = decode_shape(spec.name, list(tensor.shape))
        model_shape = check_shape(spec, shape)
        if raw:
            decoded[spec.name] = decode_binary_tensor(spec, shape, memoryview(raw[index]))
        else:
            decoded[spec.name] = _typed_contents(spec, shape, tensor.contents)
        if model_shape is not shape:
            decoded[spec.name] = decoded[spec.name].reshape(model_shape)
    known = {s.name for s in outputs}
    wanted = [check_output(o.name, known) for o in message.outputs]
    classification = {
        o.name: classification_count(o.name, parameters_of(o.parameters)["classification"])
        for o in message.outputs
        if "classification" in o.parameters
    }
    return InferenceRequest(
        inputs=complete_inputs(decoded, inputs, input_sets, reject_nonfinite),
        parameters=parameters_of(message.parameters),
        outputs=wanted or None,
        request_id=message.id or None,
        classification=classification,
    )


def _typed_contents(spec: TensorSpec, shape: tuple[int, ...], contents: Any) -> np.ndarray:
    field = CONTENTS_FIELD.get(spec.datatype)
    if field is None:
        raise fail(f"input '{spec.name}': {spec.datatype} data must come as raw_input_contents")
    values = getattr(contents, field)
    expected = math.prod(shape)
    if len(values) != expected:
        raise fail(
            f"input '{spec.name}': shape {list(shape)} needs {expected} values, "
            f"contents.{field} has {len(values)}"
        )
    if spec.datatype == "BYTES":
        array = np.empty(expected, dtype=object)
        try:
            array[:] = list(values) if spec.opaque else [v.decode("utf-8") for v in values]
        except UnicodeDecodeError as exc:
            raise fail(f"input '{spec.name}': BYTES contents are not UTF-8 ({exc})") from None
        return array.reshape(shape)
    dtype = V2_TO_NUMPY[spec.datatype]
    array = np.array(values, dtype=np.int64 if dtype.kind in "iu" and dtype.itemsize < 8 else dtype)
    if array.dtype != dtype:  # int_contents / uint_contents carry the narrower types
        info = np.iinfo(dtype)  # type: ignore[type-var]
        if array.size and (int(array.min()) < info.min or int(array.max()) > info.max):
            raise fail(
                f"input '{spec.name}': values out of range for {spec.datatype} "
                f"[{info.min}, {info.max}]"
            )
        array = array.astype(dtype)
    return array.reshape(shape)


def encode_response(response: InferenceResponse) -> pb.ModelInferResponse:
    """The answer as Triton gives it: tensor metadata, and the data as raw contents."""
    message = pb.ModelInferResponse(
        model_name=response.model, model_version=response.version, id=response.request_id or ""
    )
    for name, array in response.outputs.items():
        datatype = response.specs[name].datatype
        message.outputs.add(name=name, datatype=datatype, shape=array.shape)
        message.raw_output_contents.append(encode_binary_tensor(array, datatype))
    return message
