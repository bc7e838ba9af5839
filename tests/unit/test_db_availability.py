"""Which errors mean "PostgreSQL is unavailable" (a 503), and which are bugs (a 500)."""

from __future__ import annotations

import errno

import asyncpg
import pytest
from sqlalchemy.exc import DBAPIError, OperationalError

from app.db.availability import database_unavailable

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
        TimeoutError(),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.InterfaceError("connection is closed"),
        OperationalError("SELECT 1", {}, ConnectionResetError()),
        OSError(errno.EHOSTUNREACH, "No route to host"),
    ],
)
def test_an_unreachable_or_restarting_database_is_unavailable(exc: BaseException) -> None:
    assert database_unavailable(exc)


def test_found_through_the_cause_chain() -> None:
    wrapped = RuntimeError("profile read failed")
    wrapped.__cause__ = ConnectionResetError(errno.ECONNRESET, "reset by peer")
    assert database_unavailable(wrapped)


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("a bug"),
        KeyError("features"),
        OSError(errno.ENOENT, "No such file or directory"),
        DBAPIError("SELECT x", {}, asyncpg.UndefinedColumnError("column x does not exist")),
    ],
)
def test_bugs_are_not_unavailability(exc: BaseException) -> None:
    assert not database_unavailable(exc)
