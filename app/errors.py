"""Domain errors shared by every layer.

Each layer raises these with a message written for the user who has to fix the request or
the model repository; only `app.api` maps them to HTTP status codes, so the batcher, the
protocol codec and the runtime stay free of HTTP.
"""

from __future__ import annotations


class ServingError(Exception):
    """Base of every error the server reports to a client."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInputError(ServingError):
    """The request is malformed or does not fit the model's inputs (HTTP 400)."""


class NotFoundError(ServingError):
    """Unknown model or version (HTTP 404)."""


class UnavailableError(ServingError):
    """The model or server exists but cannot serve now: loading, failed, draining (HTTP 503)."""


class OverloadedError(ServingError):
    """The queue is full; the client should retry after `retry_after_s` (HTTP 429)."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceededError(ServingError):
    """The request's deadline passed before it could be computed (HTTP 504)."""


class PayloadTooLargeError(ServingError):
    """The request body is over the server's limit (HTTP 413)."""


class UnsupportedMediaTypeError(ServingError):
    """The request body's Content-Type is not one inference accepts (HTTP 415)."""


class InferenceFailedError(ServingError):
    """The runtime failed to execute the model (HTTP 500)."""


class ModelLoadError(Exception):
    """A model could not load (bad config, graph or device); fails that model only."""
