"""Player privacy: erasure with a receipt, export of everything held, the eraser loop.

An erasure is recorded in the ledger (the tombstone: in force at once for every fold
transaction and archive write of every worker), then carried out by the eraser, one
per deployment at a time, in any ``serve`` process:

- PostgreSQL: the profile, applied event ids and failed events are deleted;
- lake: every hot and cold event file and logged-prediction file holding the player is
  rewritten without the player's rows (``app.analytics.privacy``);
- broker and archive buffers: the topics are append-only logs. Records of the player
  still in them are dropped when consumed (never folded, archived or served); the
  store is ``done`` once the consumer group's committed offsets passed the end each
  topic had when the eraser first looked (an event is acknowledged only once folded
  and archived, so this also covers every worker's archive buffer). The records stay
  in the broker's log files until its own retention deletes them.

Once every store is done, PostgreSQL and the lake are swept once more, the erasure is
marked ``done`` and the ledger forgets the player id: only its key (a hash) remains.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncEngine

from app.analytics.location import LakeLocation
from app.analytics.privacy import erase_player, lake_events, lake_predictions
from app.db.privacy import Erasure, ErasureRepository
from app.log import get_logger
from app.profiles import ProfileService
from app.streams.tombstones import consumed_past, end_offsets

log = get_logger(__name__)

STORES = (
    "profiles",
    "applied_ids",
    "failed_events",
    "broker",
    "archive_buffers",
    "lake_hot",
    "lake_cold",
    "predictions",
    "segments",
    "training_sets",
)
"""Every store an erasure reports on, in the receipt's order."""

_SWEPT = (
    "profiles",
    "applied_ids",
    "failed_events",
    "lake_hot",
    "lake_cold",
    "predictions",
    "segments",
)
_encode = msgspec.json.Encoder()


class ErasurePending(Exception):
    """The player's erasure is still being carried out."""


class NoErasure(Exception):
    """No erasure is in force for the player."""


@dataclass(slots=True)
class BrokerView:
    """Where the eraser reads the broker's end offsets and the group's positions."""

    brokers: str
    group: str
    topics: tuple[str, ...]

    def ends(self) -> dict[str, int]:
        """The end offset of every partition of the topics, now."""
        return end_offsets(self.brokers, self.group, self.topics)

    def passed(self, ends: dict[str, int]) -> bool:
        """True once the group consumed (and acknowledged) everything up to ``ends``."""
        return consumed_past(self.brokers, self.group, ends)


def _store(status: str, rows: int | None, detail: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"status": status, "rows_removed": rows}
    if detail:
        entry["detail"] = detail
    return entry


def _add(stores: dict[str, Any], counts: dict[str, int], status: str) -> None:
    for name, rows in counts.items():
        before = int((stores.get(name) or {}).get("rows_removed") or 0)
        stores[name] = _store(status, before + rows)


_BROKER_DETAIL = (
    "records still in the topics are dropped when consumed; they stay in the broker's "
    "log files until its retention deletes them"
)
_BUFFERS_DETAIL = (
    "buffered records are dropped when their file is written; every record buffered when "
    "the erasure started has been written or dropped"
)
_TRAINING_DETAIL = "training sets are built from the lake, which no longer holds the player"


@dataclass
class Eraser:
    """Carries out pending erasures; one at a time in the whole deployment."""

    engine: AsyncEngine
    location: LakeLocation
    broker: BrokerView | None
    repository: ErasureRepository = field(default_factory=ErasureRepository)
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def notice(self, _payload: str | None) -> None:
        """A notice: an erasure was recorded somewhere (or notices may have been missed)."""
        self.wake.set()

    async def run_forever(self, interval_s: float = 2.0) -> None:
        """Look for pending erasures on every notice, and every ``interval_s`` anyway."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), interval_s)
            self.wake.clear()
            await self.run_pending()

    async def run_pending(self) -> int:
        """Advance every pending erasure once; return how many are done. Never raises."""
        try:
            async with self.engine.connect() as lock_conn:
                if not await self.repository.try_lock_eraser(lock_conn):
                    return 0
                await lock_conn.commit()
                try:
                    async with self.engine.begin() as conn:
                        pending = await self.repository.pending(conn)
                    done = 0
                    for erasure in pending:
                        done += await self.advance(erasure)
                    return done
                finally:
                    await self.repository.unlock_eraser(lock_conn)
                    await lock_conn.commit()
        except Exception:
            log.exception("erasure pass failed; will try again")
            return 0

    async def advance(self, erasure: Erasure) -> int:
        """Carry one erasure as far as it goes now; 1 if it is done."""
        player = erasure.player_id
        if player is None:  # cannot happen for a pending one; nothing to search by
            return 0
        stores = dict(erasure.stores)
        if not all((stores.get(name) or {}).get("status") == "done" for name in _SWEPT):
            await self._sweep(erasure.game, player, stores)
        ends: dict[str, int] | None = erasure.broker_ends
        passed = True
        if self.broker is not None:
            if ends is None:
                ends = await asyncio.to_thread(self.broker.ends)
            passed = await asyncio.to_thread(self.broker.passed, ends)
        status = "done" if passed else "pending"
        stores["broker"] = _store(status, None, _BROKER_DETAIL)
        stores["archive_buffers"] = _store(status, None, _BUFFERS_DETAIL)
        stores["training_sets"] = _store("done", 0, _TRAINING_DETAIL)
        if not passed:
            async with self.engine.begin() as conn:
                await self.repository.save_progress(conn, erasure.id, stores, ends)
            return 0
        await self._sweep(erasure.game, player, stores)  # the last look, all consumed
        async with self.engine.begin() as conn:
            await self.repository.complete(conn, erasure.id, stores)
        log.info("erasure done", erasure_id=erasure.id)
        return 1

    async def _sweep(self, game: str, player_id: str, stores: dict[str, Any]) -> None:
        async with self.engine.begin() as conn:
            counts = await self.repository.purge_player(conn, game, player_id)
        _add(stores, counts, "done")
        lake = await asyncio.to_thread(erase_player, self.location, game, player_id)
        _add(stores, lake, "done")


class ErasureReceipt(msgspec.Struct):
    """An erasure and what each store reports."""

    erasure_id: str
    player_id: str | None
    status: str
    requested_at: datetime
    completed_at: datetime | None
    stores: dict[str, Any]
    player_key: str
    reusable: bool


def receipt(erasure: Erasure, player_id: str | None = None) -> ErasureReceipt:
    """The receipt of an erasure (``player_id`` when the caller knows it)."""
    stores = {name: erasure.stores.get(name) or _store("pending", 0) for name in STORES}
    return ErasureReceipt(
        erasure_id=erasure.id,
        player_id=erasure.player_id or player_id,
        status=erasure.status,
        requested_at=erasure.requested_at,
        completed_at=erasure.completed_at,
        stores=stores,
        player_key=erasure.player_key,
        reusable=erasure.lifted_at is not None,
    )


@dataclass
class PrivacyService:
    """Erasure requests and receipts, id reuse, and exports."""

    engine: AsyncEngine
    location: LakeLocation
    profiles: ProfileService | None = None
    repository: ErasureRepository = field(default_factory=ErasureRepository)

    async def erase(self, game: str, player_id: str) -> Erasure:
        """Record an erasure (or return the one in force for the player)."""
        async with self.engine.begin() as conn:
            return await self.repository.open(conn, game, player_id)

    async def erasure(self, game: str, erasure_id: str) -> Erasure | None:
        """An erasure of this game, or None."""
        async with self.engine.connect() as conn:
            found = await self.repository.get(conn, erasure_id)
        return found if found is not None and found.game == game else None

    async def allow_reuse(self, game: str, player_id: str) -> int:
        """Lift the player's erasures; raises if none is in force or one is pending."""
        async with self.engine.begin() as conn:
            lifted, pending = await self.repository.lift(conn, game, player_id)
        if pending:
            raise ErasurePending(player_id)
        if not lifted:
            raise NoErasure(player_id)
        return lifted

    async def export(self, game: str, player_id: str) -> AsyncIterator[bytes]:
        """Everything held about the player, as one JSON document, in pieces."""
        profile = None
        if self.profiles is not None:
            found = await self.profiles.get(game, player_id)
            if found is not None:
                profile = {
                    "features": found.features,
                    "events_applied": found.events_applied,
                    "last_event_at": found.last_event_at,
                    "last_received_at": found.last_received_at,
                    "updated_at": found.updated_at,
                }
        async with self.engine.connect() as conn:
            failed = await self.repository.failed_events(conn, game, player_id)
        head = {
            "game": game,
            "player_id": player_id,
            "exported_at": datetime.now(UTC),
            "profile": profile,
            "failed_events": [
                {"id": i, "event_id": e, "reason": r, "failed_at": at, "record": _as_json(raw)}
                for i, e, r, at, raw in failed
            ],
        }
        yield _encode.encode(head)[:-1]
        events = await asyncio.to_thread(lake_events, self.location, game, player_id)
        yield b',"events":['
        for start in range(0, len(events), 500):
            piece = _encode.encode(events[start : start + 500])[1:-1]
            yield (b"," if start else b"") + piece
        predictions = await asyncio.to_thread(lake_predictions, self.location, game, player_id)
        yield b'],"predictions":' + _encode.encode(predictions) + b"}"


def _as_json(payload: bytes) -> Any:
    try:
        return msgspec.json.decode(payload)
    except msgspec.DecodeError:
        return payload.decode(errors="replace")
