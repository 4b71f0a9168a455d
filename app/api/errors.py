"""Install handlers so every error leaves the server as `{"error": ...}` with the v2 status."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from app.api.responses import error_body, error_response
from app.errors import InvalidInputError, ServingError
from app.logs import log_unexpected


def install(app: FastAPI) -> None:
    """Every error leaves the server as `{"error": ...}`, FastAPI's own ones included."""

    async def serving_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ServingError)
        return error_response(exc)

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return Response(
            error_body(str(exc.detail)),
            status_code=exc.status_code,
            media_type="application/json",
            headers=getattr(exc, "headers", None),
        )

    async def validation_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        return error_response(InvalidInputError(f"invalid request: {problems}"))

    async def unexpected_error(request: Request, exc: Exception) -> Response:
        return error_response(log_unexpected(exc, f"{request.method} {request.url.path}"))

    app.add_exception_handler(Exception, unexpected_error)
    app.add_exception_handler(ServingError, serving_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
