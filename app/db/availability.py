"""Telling "PostgreSQL is down or too slow" apart from a bug, for a 503 instead of a 500."""

from __future__ import annotations

import errno

import asyncpg
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

_UNAVAILABLE: tuple[type[BaseException], ...] = (
    ConnectionError,  # refused, reset, aborted
    TimeoutError,  # asyncpg's connect and command timeouts, asyncio's
    PoolTimeout,
    OperationalError,
    InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,  # a connection closed under a query
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)


_NETWORK_ERRNOS = {
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ETIMEDOUT,
    errno.EPIPE,
}


def database_unavailable(exc: BaseException) -> bool:
    """True if ``exc`` (or what it was raised from) means PostgreSQL cannot be reached,
    is shutting down or restarting, or did not answer in time."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _UNAVAILABLE):
            return True
        if isinstance(current, OSError) and current.errno in _NETWORK_ERRNOS:
            return True  # a socket error on the way to the database
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return True
        current = current.__cause__ or current.__context__
    return False
