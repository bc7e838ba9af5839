"""Pure ASGI layers around the app: CORS for browser games, and the audit record of
every admin action made through the API."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from app.domain.access import Principal
from app.domain.audit import AuditEntry
from app.domain.cors import RouteKind, route_kind
from app.domain.privacy import player_key
from app.log import get_logger

if TYPE_CHECKING:
    from app.cors import CorsOrigins

log = get_logger(__name__)

AUDIT_TARGET = "playerpulse.audit_target"
"""Scope key a handler may set to name what it acted on (a new key's id, say)."""
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_ALLOWED_HEADERS = b"authorization, content-type, content-encoding, x-sent-at, x-request-id"
_EXPOSED_HEADERS = b"retry-after, server-timing, x-request-id"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


class Cors:
    """Answers preflights and adds the CORS headers for allowed origins (see
    app/domain/cors.py); a disallowed origin gets no CORS header at all.

    Litestar's own CORS middleware takes one static list for every route; here the
    origins depend on the route's kind and on the caller's game, so this is ours.
    """

    __slots__ = ("app", "origins_of")

    def __init__(self, app: ASGIApp, origins_of: Callable[[], CorsOrigins]) -> None:
        self.app = app
        self.origins_of = origins_of  # the running services' origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        origin = _header(scope, b"origin")
        kind = route_kind(scope["path"])
        if origin is None or kind in (RouteKind.OTHER, RouteKind.ADMIN):
            await self.app(scope, receive, send)
            return
        policy = self.origins_of().policy
        if scope["method"] == "OPTIONS" and _header(scope, b"access-control-request-method"):
            if policy.allows(origin, kind, None):
                await self._preflight(origin, kind, send)
                return
            await self.app(scope, receive, send)
            return

        async def with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                user = scope.get("user")
                game = user.game if isinstance(user, Principal) else None
                if game is not None and policy.allows(origin, kind, game):
                    message["headers"] = [
                        *message.get("headers", ()),
                        (b"access-control-allow-origin", origin.encode("latin-1")),
                        (b"access-control-expose-headers", _EXPOSED_HEADERS),
                        (b"vary", b"Origin"),
                    ]
            await send(message)

        await self.app(scope, receive, with_cors)

    @staticmethod
    async def _preflight(origin: str, kind: RouteKind, send: Send) -> None:
        methods = b"POST, OPTIONS" if kind is RouteKind.INGEST else b"GET, POST, OPTIONS"
        headers = [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-allow-methods", methods),
            (b"access-control-allow-headers", _ALLOWED_HEADERS),
            (b"access-control-max-age", b"600"),
            (b"vary", b"Origin"),
            (b"content-length", b"0"),
        ]
        start: Any = {"type": "http.response.start", "status": 204, "headers": headers}
        await send(start)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class AdminAudit:
    """Records every admin action (a change, or an export) made through the API: time,
    game, key id, action (method and route), target, outcome (status), request id.

    Written before the answer starts, so a client that saw the answer can find the record.
    The request id is the client's ``X-Request-Id`` if valid, else a new one; either way
    it is returned in ``X-Request-Id``.
    """

    __slots__ = ("app", "state_of")

    def __init__(self, app: ASGIApp, state_of: Any) -> None:
        self.app = app
        self.state_of = state_of  # () -> the Litestar app state (holds the services)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or not _is_admin_action(scope):
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-request-id")
        request_id = given if given and _REQUEST_ID.match(given) else uuid.uuid4().hex

        async def audited(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", ()),
                    (b"x-request-id", request_id.encode()),
                ]
                await self._record(scope, message["status"], request_id)
            await send(message)

        await self.app(scope, receive, audited)

    async def _record(self, scope: Scope, status: int, request_id: str) -> None:
        user = scope.get("user")
        if not isinstance(user, Principal):
            return  # refused before any action: no key, or an unknown one
        raw = cast(dict[str, Any], scope)
        template = str(raw.get("path_template") or scope["path"])
        target = raw.get(AUDIT_TARGET) or _target(template, scope, user.game)
        entry = AuditEntry(
            game=user.game,
            actor=f"key:{user.key_id}",
            action=f"{raw['method']} {template}",
            target=str(target),
            outcome="ok" if status < 400 else str(status),
            request_id=request_id,
        )
        try:
            await self.state_of().services.audit.record(entry)
        except Exception as exc:  # the action is done; losing its record is logged loudly
            log.error("could not write the audit record", error=str(exc), entry=str(entry))


_PARAM = re.compile(r"\{(\w+)(?::\w+)?\}")


def _target(template: str, scope: Scope, game: str) -> str:
    """The request's path, with a player named by the pseudonym an erasure keeps (the
    trail is append-only: an erased player's id must not stay in it)."""
    params = cast(dict[str, Any], scope).get("path_params") or {}
    if "player_id" not in params:
        return str(scope["path"])

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "player_id":
            return f"player-sha256:{player_key(game, str(params[name]))}"
        return str(params.get(name, match.group(0)))

    return _PARAM.sub(value, template)


def _is_admin_action(scope: Scope) -> bool:
    path = scope["path"]
    if not path.startswith("/v1/admin/"):
        return False
    method = cast(dict[str, Any], scope)["method"]
    return method not in ("GET", "HEAD", "OPTIONS") or path.endswith("/export")
