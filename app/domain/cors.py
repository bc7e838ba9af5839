"""Which browser origins may call which routes (CORS), by route kind and game.

Ingest routes are open to the origins of ``PLAYERPULSE_CORS_ORIGINS`` (every game's
browser builds) and to those a game allows; read routes only to those a game allows
explicitly (``PUT /v1/admin/cors``); admin routes never.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

ORIGIN_PATTERN = r"^https?://[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?$"
"""An origin as browsers send it: scheme, host, optional port; no path."""
_ORIGIN = re.compile(ORIGIN_PATTERN)
INGEST_PATHS = frozenset(
    {"/v1/events", "/v1/batch", "/v1/track", "/v1/identify", "/v1/page", "/v1/screen"}
)


class CorsError(ValueError):
    """An origin that is not ``scheme://host[:port]``."""


class RouteKind(StrEnum):
    """What a path is, for CORS."""

    INGEST = "ingest"
    READ = "read"
    ADMIN = "admin"
    OTHER = "other"


def route_kind(path: str) -> RouteKind:
    """The kind of route at ``path``."""
    if path in INGEST_PATHS:
        return RouteKind.INGEST
    if path.startswith("/v1/admin/"):
        return RouteKind.ADMIN
    if path.startswith("/v1/"):
        return RouteKind.READ
    return RouteKind.OTHER


def parse_origins(origins: Iterable[str], *, allow_any: bool = False) -> frozenset[str]:
    """Origins as browsers send them (``https://game.example:8443``); ``*`` if allowed."""
    parsed = set()
    for raw in origins:
        origin = raw.strip().rstrip("/")
        if not origin:
            continue
        if origin == "*" and allow_any:
            parsed.add(origin)
            continue
        if not _ORIGIN.match(origin):
            raise CorsError(f"{raw!r} is not an origin such as https://game.example.com")
        parsed.add(origin.lower())
    return frozenset(parsed)


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    """The origins allowed everywhere (ingest only) and per game (ingest and read)."""

    everywhere: frozenset[str] = frozenset()
    per_game: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def allows(self, origin: str, kind: RouteKind, game: str | None) -> bool:
        """May ``origin`` call a route of ``kind``? ``game`` None: for any game (a
        preflight, which carries no key)."""
        origin = origin.lower()
        if kind is RouteKind.INGEST and ("*" in self.everywhere or origin in self.everywhere):
            return True
        if kind not in (RouteKind.INGEST, RouteKind.READ):
            return False
        if game is None:
            return any(origin in allowed for allowed in self.per_game.values())
        return origin in self.per_game.get(game, frozenset())
