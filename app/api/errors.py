"""Install handlers so every error leaves the server as `{"error": ...}` with the v2 status."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from app.api.responses import error_response, response_for
from app.errors import ServingError

log = logging.getLogger(__name__)


def install(app: FastAPI) -> None:
    """Every error leaves the server as `{"error": ...}`, FastAPI's own ones included."""

    async def serving_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ServingError)
        return response_for(exc)

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    async def validation_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        return error_response(400, f"invalid request: {problems}")

    async def unexpected_error(_: Request, exc: Exception) -> Response:
        log.exception("unexpected error while serving a request", exc_info=exc)
        return error_response(500, f"internal server error: {type(exc).__name__}: {exc}")

    app.add_exception_handler(Exception, unexpected_error)
    app.add_exception_handler(ServingError, serving_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
