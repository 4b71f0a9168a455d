"""What passes between a transport and the data plane."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

from app.tensors import TensorSpec

if TYPE_CHECKING:  # the codecs import this module: keep it light
    from app.repository import LoadedVersion

Body = TypeVar("Body")
Encoded = TypeVar("Encoded", covariant=True)


@dataclass(slots=True)
class InferenceRequest:
    """One decoded inference request, whatever transport carried it."""

    #: Named input arrays, checked against the model's specs (batch axis first).
    inputs: dict[str, np.ndarray]
    #: The v2 request's parameters: `timeout` (microseconds) and `priority` are read here.
    parameters: Mapping[str, Any] = field(default_factory=dict)
    #: Output names wanted, in the client's order; None: the model's default outputs.
    outputs: Sequence[str] | None = None
    request_id: str | None = None
    #: An absolute deadline the transport itself carries (a gRPC call's), in loop time.
    deadline: float | None = None
    #: Outputs the client wants in the transport's binary form (REST's binary tensor
    #: extension); the data plane passes them through to the transport's encoder.
    binary_outputs: frozenset[str] = frozenset()
    #: Outputs asked for as their top K classes (Triton's classification extension:
    #: an output's `parameters.classification = K`), by name.
    classification: Mapping[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class InferenceResponse:
    """The outputs of one request, ready for the transport to encode."""

    model: str
    version: str
    request_id: str | None
    outputs: dict[str, np.ndarray]
    specs: Mapping[str, TensorSpec]
    binary_outputs: frozenset[str] = frozenset()


class TransportCall(Protocol[Body, Encoded]):
    """What a transport lends the data plane for one inference call.

    The data plane decides when to read the request (after admission, so a request that will
    be refused is refused unread) and against which model version to decode it (the one
    serving once it has arrived); the transport knows how.
    """

    @property
    def protocol(self) -> str:
        """`http` or `grpc`: the metrics' protocol label."""
        ...

    @property
    def model(self) -> str: ...

    @property
    def version(self) -> str | None: ...

    def announce(self, target: LoadedVersion) -> int:
        """Check what is known of the request before it is read (HTTP headers), against
        the version it is for, and return its announced size in bytes (0: unknown)."""
        ...

    def size(self, body: Body) -> int:
        """Bytes of a received body (large ones are decoded off the event loop)."""
        ...

    async def receive(self) -> Body:
        """The request's raw body (raise ClientGoneError if the client went away)."""
        ...

    def decode(self, body: Body, target: LoadedVersion) -> InferenceRequest: ...

    def encode(self, response: InferenceResponse) -> Encoded: ...

    def watch_cancel(self, cancel: Callable[[], object]) -> Callable[[], None]:
        """Call `cancel` if the client goes away while its request waits; returns a
        function that stops watching."""
        ...
