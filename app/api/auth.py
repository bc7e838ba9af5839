"""Bearer API keys: 401 for a missing or unknown key, 403 for the wrong role."""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware.authentication import (
    AbstractAuthenticationMiddleware,
    AuthenticationResult,
)

from app.domain.access import Principal, Role

PUBLIC_PATHS = ["^/health$", "^/metrics$", "^/schema"]


class ApiKeyAuthentication(AbstractAuthenticationMiddleware):
    """Resolves ``Authorization: Bearer KEY`` to the key's game and role."""

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        header = connection.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise NotAuthorizedException(
                "missing API key: send the header 'Authorization: Bearer KEY'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        services = connection.app.state.services
        principal = await services.keys.authenticate(key.strip())
        if principal is None:
            raise NotAuthorizedException("unknown API key", headers={"WWW-Authenticate": "Bearer"})
        return AuthenticationResult(user=principal, auth=key)


def requires(role: Role) -> Any:
    """A guard letting through keys of ``role``, and admin keys."""

    # Async on purpose: Litestar runs a sync guard in a worker thread, per request.
    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        principal: Principal = connection.user
        if not principal.may(role):
            raise PermissionDeniedException(
                f"this key's role is {principal.role.value!r}; this route needs "
                f"{role.value!r} (or 'admin')"
            )

    guard.__name__ = f"requires_{role.value}"
    return guard
