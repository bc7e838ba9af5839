"""The ``after`` and ``wait_ms`` query parameters of profile and prediction reads."""

from __future__ import annotations

from typing import Annotated

from litestar.params import Parameter
from litestar.status_codes import HTTP_400_BAD_REQUEST, HTTP_504_GATEWAY_TIMEOUT

from app.domain.tokens import BadToken
from app.profiles import NotFoldedInTime, ReadYourWrites

from .errors import ApiError

After = Annotated[
    str | None,
    Parameter(
        description="The `token` of an ingest reply: answer only once that request's events "
        "for this player are folded (waiting at most `wait_ms`, else 504).",
        max_length=4096,
    ),
]
TOKEN_PATTERN = r"^([0-9]{1,5}\.[0-9]{1,19}(_[0-9]{1,5}\.[0-9]{1,19})*)?$"
"""What a token looks like: in the document only, so that a wrong one gets the token
check's own error (which says what a token is) rather than a bare pattern mismatch."""

WaitMs = Annotated[
    int,
    Parameter(ge=0, le=10_000, description="How long to wait for `after`, in ms (default 1000)."),
]


async def await_token(
    read_your_writes: ReadYourWrites, game: str, player_id: str, after: str | None, wait_ms: int
) -> None:
    """Wait for ``after``'s events for the player to be folded (no-op without a token)."""
    if after is None:
        return
    try:
        await read_your_writes.wait(game, player_id, after, wait_ms)
    except BadToken as exc:
        raise ApiError(HTTP_400_BAD_REQUEST, str(exc)) from None
    except NotFoldedInTime as exc:
        raise ApiError(HTTP_504_GATEWAY_TIMEOUT, str(exc)) from None
