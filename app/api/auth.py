"""Bearer API keys: 401 for a missing or unknown key, 403 for the wrong role."""

from __future__ import annotations

import base64
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.middleware.authentication import (
    AbstractAuthenticationMiddleware,
    AuthenticationResult,
)

from app.domain.access import Role
from app.keys import KeyService

ROLE_OPT = "role"
"""The key of a route handler's ``opt`` naming the role its keys need."""

PUBLIC_PATHS = [
    "^/health$",
    "^/metrics$",
    "^/schema",
    "^/docs/assets/",
    "^/dashboard$",
    "^/dashboard/assets/",
]


class ApiKeyAuthentication(AbstractAuthenticationMiddleware):
    """Resolves ``Authorization: Bearer KEY`` to the key's game and role, and refuses a
    key whose role the route (its ``opt["role"]``) does not admit.

    The role is checked here rather than by a Litestar guard: a guard costs a copy of
    the route handler on every request.
    """

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        key = _presented_key(connection.headers.get("authorization", ""))
        if not key:
            raise NotAuthorizedException(
                "missing API key: send the header 'Authorization: Bearer KEY' (or, as "
                "Segment SDKs do, Basic auth with the key as user name)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        keys: KeyService = connection.app.state.api_keys
        principal = await keys.authenticate(key)
        if principal is None:
            raise NotAuthorizedException("unknown API key", headers={"WWW-Authenticate": "Bearer"})
        role: Role | None = connection.scope["route_handler"].opt.get(ROLE_OPT)
        if role is not None and not principal.may(role):
            raise PermissionDeniedException(
                f"this key's role is {principal.role.value!r}; this route needs "
                f"{role.value!r} (or 'admin')"
            )
        return AuthenticationResult(user=principal, auth=key)


def _presented_key(header: str) -> str:
    """The key of ``Bearer KEY``, or of ``Basic base64(KEY:)`` (Segment's write key)."""
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return value
    if scheme.lower() == "basic":
        try:
            user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return ""
        return user or password
    return ""
