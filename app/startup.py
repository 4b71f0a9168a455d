"""What `batchserve serve` checks before it loads anything, so that a server that cannot
start says why in one line, naming the setting to change, and exits non-zero: settings out
of range, a model repository that is not there, a port already taken (a second server on
the same machine). The HTTP socket is bound here and handed to uvicorn, so the port is
known to be ours before the models load.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from app.settings import Settings

#: Settings the command line also takes, by their flags.
FLAGS = {
    "model_repository": "--model-repository",
    "host": "--host",
    "port": "--port",
    "grpc_port": "--grpc-port",
    "metrics_port": "--metrics-port",
    "repository_poll_s": "--repository-poll-s",
    "log_level": "--log-level",
}


class StartupError(Exception):
    """The server cannot start as configured; the message is one line for the user."""


def named(field: str) -> str:
    """How a user sets `field`: `--port / BATCHSERVE_PORT`, or the variable alone."""
    variable = f"BATCHSERVE_{field.upper()}"
    flag = FLAGS.get(field)
    return f"{flag} / {variable}" if flag else variable


def read_settings(build: Callable[[], Settings]) -> Settings:
    """`build()`, with pydantic's validation errors turned into one StartupError line."""
    try:
        return build()
    except ValidationError as exc:
        problems = "; ".join(_problem(error) for error in exc.errors())
        raise StartupError(f"invalid settings: {problems}") from None


def _problem(error: Any) -> str:
    field = str(error["loc"][0]) if error["loc"] else "settings"
    given = error.get("input")
    got = f" (got {given!r})" if isinstance(given, str | int | float) else ""
    return f"{named(field)}: {error['msg']}{got}"


def check_repository(settings: Settings) -> None:
    path = settings.model_repository
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a directory"
        raise StartupError(
            f"model repository {path} {what}; point {named('model_repository')} at the "
            "directory holding <model>/<version>/model.onnx"
        )


def bind_http(settings: Settings) -> socket.socket:
    """The HTTP listening socket, bound as uvicorn binds it (address reuse, so a restart
    does not wait out TIME_WAIT)."""
    sock = _socket(settings.host)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        sock.close()
        raise StartupError(_bind_failure(settings.host, settings.port, "port", exc)) from None
    return sock


def check_free(settings: Settings) -> None:
    """The other ports the server will listen on (gRPC, metrics) are free now."""
    for field in ("grpc_port", "metrics_port"):
        port = getattr(settings, field)
        if not port:  # off (None or 0), or any free port
            continue
        with _socket(settings.host) as probe:
            try:
                probe.bind((settings.host, port))
            except OSError as exc:
                raise StartupError(_bind_failure(settings.host, port, field, exc)) from None


def _socket(host: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return sock


def _bind_failure(host: str, port: int, field: str, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (
            f"port {port} on {host} is already in use (another server?); choose another "
            f"with {named(field)}"
        )
    if exc.errno == errno.EACCES:
        return f"port {port} on {host} needs privileges; choose one above 1023 with {named(field)}"
    return f"cannot listen on {host}:{port} ({exc.strerror}); check {named('host')}"
