"""What a transport lends the data plane for one call (the request and response types
themselves live in app.inference, where every layer may use them)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

from app.inference import InferenceRequest, InferenceResponse

if TYPE_CHECKING:
    from app.repository import LoadedVersion

Body = TypeVar("Body")
Encoded = TypeVar("Encoded", covariant=True)


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
