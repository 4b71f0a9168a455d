"""The load generator's gRPC mode: ModelInfer with raw_input_contents over grpc.aio, the
request serialized once and sent as bytes, so the client spends as little per call as a
tuned tritonclient.grpc user would, and what is measured is the server.

    python -m load_tests.loadgen --grpc 127.0.0.1:8001 --model digits --concurrency 64

Every answer is checked (OK, every output present with the request's batch size, one raw
contents entry per output). Calls spread over --channels channels (HTTP/2 connections),
round robin; failures are counted by gRPC status code name.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import grpc
from google.protobuf import json_format

from app.protocol.proto import grpc_service_pb2 as pb
from load_tests.loadgen.rest import Loops, Result, sample_inputs

SERVICE = "/inference.GRPCInferenceService/"


def build_grpc_request(model: str, metadata: dict[str, Any], rows: int) -> bytes:
    """A serialized ModelInferRequest with `rows` random samples in raw contents (the same
    data as the HTTP generator's)."""
    request = pb.ModelInferRequest(model_name=model)
    for entry, data in sample_inputs(metadata, rows):
        request.inputs.add(name=entry["name"], datatype=entry["datatype"], shape=entry["shape"])
        request.raw_input_contents.append(data.tobytes())
    return request.SerializeToString()


async def prepare_grpc_request(channel: grpc.aio.Channel, model: str, rows: int) -> bytes:
    """`build_grpc_request` for the model's metadata as the server reports it over gRPC."""
    metadata_call = channel.unary_unary(
        SERVICE + "ModelMetadata",
        request_serializer=pb.ModelMetadataRequest.SerializeToString,
        response_deserializer=pb.ModelMetadataResponse.FromString,
    )
    response = await metadata_call(pb.ModelMetadataRequest(name=model), timeout=30)
    metadata = json_format.MessageToDict(response, preserving_proto_field_name=True)
    for tensor in metadata["inputs"]:
        tensor["shape"] = [int(d) for d in tensor.get("shape", [])]
    return build_grpc_request(model, metadata, rows)


class GrpcLoadGenerator(Loops):
    """Sends one serialized ModelInferRequest over and over and checks every answer; its
    loops' session is a list of channels."""

    def __init__(self, request: bytes, rows: int) -> None:
        self.request = request
        self.rows = rows
        self._calls: dict[int, Any] = {}
        self._turn: dict[int, itertools.cycle[Any]] = {}

    def _next_call(self, channels: list[grpc.aio.Channel]) -> Any:
        key = id(channels)
        if key not in self._turn:
            calls = [
                channel.unary_unary(
                    SERVICE + "ModelInfer",
                    request_serializer=None,  # the bytes go out as they are
                    response_deserializer=pb.ModelInferResponse.FromString,
                )
                for channel in channels
            ]
            self._turn[key] = itertools.cycle(calls)
        return next(self._turn[key])

    async def _one(self, session: list[grpc.aio.Channel], result: Result, sent_at: float) -> None:
        call = self._next_call(session)
        try:
            response = await call(self.request, timeout=120)
        except grpc.aio.AioRpcError as exc:
            result.record(time.perf_counter() - sent_at, exc.code().name)
            return
        result.record(time.perf_counter() - sent_at, 200, self._valid(response))

    def _valid(self, response: pb.ModelInferResponse) -> bool:
        outputs = response.outputs
        return (
            bool(outputs)
            and len(response.raw_output_contents) == len(outputs)
            and all(o.shape and o.shape[0] == self.rows for o in outputs)
        )


def open_channels(target: str, count: int) -> list[grpc.aio.Channel]:
    """`count` channels to `target`, each its own connection (a channel option keeps grpc
    from sharing one subchannel between them)."""
    return [
        grpc.aio.insecure_channel(
            target,
            options=[
                ("grpc.use_local_subchannel_pool", 1),
                ("grpc.max_receive_message_length", -1),
                ("grpc.max_send_message_length", -1),
            ],
        )
        for _ in range(count)
    ]
