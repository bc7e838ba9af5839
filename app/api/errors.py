"""Every error as ``{"error": "...", "detail": ...}``, with the status the contract names."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import (
    HTTP_400_BAD_REQUEST,
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_503_SERVICE_UNAVAILABLE,
    HTTP_507_INSUFFICIENT_STORAGE,
)

from app.db.availability import database_unavailable
from app.disk import out_of_space
from app.log import get_logger

log = get_logger(__name__)


class ApiError(HTTPException):
    """An error a handler raises on purpose: status, message and optional detail."""

    def __init__(
        self,
        status_code: int,
        error: str,
        detail: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail=error, status_code=status_code, extra=detail, headers=headers)


def error_body(error: str, detail: Any = None) -> dict[str, Any]:
    """The JSON shape of every error."""
    return {"error": error, "detail": detail}


def handle_http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    """Litestar's and our own HTTP errors, in our shape."""
    status = exc.status_code
    detail = exc.extra if exc.extra not in ({}, None) else None
    error = exc.detail
    if isinstance(exc, ValidationException):
        status = HTTP_400_BAD_REQUEST
        error = "invalid request"
    return Response(error_body(error, detail), status_code=status, headers=exc.headers)


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """A full disk: 507; PostgreSQL unreachable or too slow: 503 (both with Retry-After).
    Anything else is our bug: log it whole, answer 500 without internals."""
    if out_of_space(exc):
        log.error("out of disk space", path=request.url.path, error=str(exc))
        return Response(
            error_body("out of disk space; nothing was changed", str(exc)),
            status_code=HTTP_507_INSUFFICIENT_STORAGE,
            headers={"Retry-After": "5"},
        )
    if database_unavailable(exc):
        log.warning("database unavailable", path=request.url.path, error=repr(exc))
        return Response(
            error_body(
                "the database (PostgreSQL) is unavailable; try again shortly",
                f"{type(exc).__name__}: {exc}",
            ),
            status_code=HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "2"},
        )
    log.error("unhandled error", path=request.url.path, exc_info=exc)
    return Response(
        error_body("internal error", "the server failed to handle this request; it was logged"),
        status_code=HTTP_500_INTERNAL_SERVER_ERROR,
    )
