"""Delivering segment transitions from the outbox: the Kafka topic, webhooks, the lake.

Each relay keeps a cursor (the last outbox id it delivered) in PostgreSQL and advances it
in the transaction that holds it locked (``FOR UPDATE SKIP LOCKED``: one process relays
at a time, any other takes over when it dies) only once the batch is delivered. A crash
means the batch is delivered again: at-least-once, each transition carrying its outbox
id (``webhook-id`` ``seg_ID``; the topic record's ``id``), so receivers drop repeats.
Outbox ids are assigned in commit order (app/db/segments.py), so a cursor skips nothing.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import socket
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pyarrow as pa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from standardwebhooks.webhooks import Webhook

from app.db.segments import (
    SegmentRepository,
    StoredChange,
    StoredWebhook,
    WebhookRepository,
    webhook_consumer,
)
from app.domain.webhooks import (
    WebhookError,
    backoff_s,
    check_addresses,
    check_events,
    delivery_body,
    url_host,
)
from app.lake_layout import SEGMENT_CHANGES_SCHEMA, TIMESTAMP, event_date
from app.log import get_logger
from app.streams.lake import write_partitions
from app.streams.producer import BrokerUnavailable, EventProducer

log = get_logger(__name__)

_json = msgspec.json.Encoder()


def body_of(change: StoredChange) -> dict[str, Any]:
    """The JSON a transition is delivered as, everywhere."""
    at = change.at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return delivery_body(
        change.id, change.game, change.player_id, change.segment, change.kind, at, change.features
    )


def encode_change(change: StoredChange) -> bytes:
    return _json.encode(body_of(change))


async def resolve(host: str) -> list[str]:
    """The addresses ``host`` resolves to (none if it does not)."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None)
    except socket.gaierror:
        return []
    return sorted({str(info[4][0]) for info in infos})


class OutboxRelay:
    """Relays the outbox from its cursor to one destination, a batch at a time."""

    def __init__(self, engine: AsyncEngine, consumer: str, *, batch: int = 500) -> None:
        self.engine = engine
        self.consumer = consumer
        self.batch = batch
        self.repository = SegmentRepository()

    async def deliver(self, conn: AsyncConnection, changes: list[StoredChange]) -> None:
        """Deliver these (in id order); raise to keep the cursor where it is."""
        raise NotImplementedError

    create_cursor = True
    """Start from the outbox's first transition if no cursor exists yet."""

    def game(self) -> str | None:
        """Only this game's transitions (None: every game's)."""
        return None

    async def round(self) -> int:
        """Deliver the next batch; how many transitions it held (0: none, or another
        process holds this relay)."""
        async with self.engine.begin() as conn:
            cursor = await self.repository.cursor(
                conn, self.consumer, lock=True, create=self.create_cursor
            )
            if cursor < 0:
                return 0
            changes = await self.repository.changes_after(
                conn, cursor, self.batch, game=self.game()
            )
            if not changes:
                return 0
            await self.deliver(conn, changes)
            await self.repository.advance(conn, self.consumer, changes[-1].id)
        return len(changes)


class TopicRelay(OutboxRelay):
    """To the segments topic: one record per transition, keyed by ``game/player``."""

    def __init__(self, engine: AsyncEngine, producer: EventProducer, topic: str) -> None:
        super().__init__(engine, f"topic:{topic}")
        self.producer = producer
        self.topic = topic

    async def deliver(self, conn: AsyncConnection, changes: list[StoredChange]) -> None:
        messages = [(None, f"{c.game}/{c.player_id}".encode(), encode_change(c)) for c in changes]
        await self.producer.send(self.topic, messages)


class LakeRelay(OutboxRelay):
    """To ``<lake>/segment_changes/game=/date=/`` (the ``segment_changes`` view)."""

    def __init__(self, engine: AsyncEngine, lake_root: str) -> None:
        super().__init__(engine, "lake", batch=50_000)
        self.lake_root = lake_root

    async def deliver(self, conn: AsyncConnection, changes: list[StoredChange]) -> None:
        await asyncio.to_thread(write_segment_changes, self.lake_root, changes)


def write_segment_changes(lake_root: Path | str, changes: Sequence[StoredChange]) -> list[str]:
    """One new Parquet file per (game, date) of these transitions."""
    groups: dict[tuple[str, str], list[StoredChange]] = defaultdict(list)
    for change in changes:
        at_us = int(change.at.timestamp() * 1_000_000)
        groups[(change.game, event_date(at_us))].append(change)
    tables = {
        key: pa.table(
            [
                pa.array([c.id for c in rows], pa.int64()),
                pa.array([c.player_id for c in rows], pa.string()),
                pa.array([c.segment for c in rows], pa.string()),
                pa.array([c.kind for c in rows], pa.string()),
                pa.array([int(c.at.timestamp() * 1_000_000) for c in rows], TIMESTAMP),
                pa.array([_json.encode(c.features).decode() for c in rows], pa.string()),
            ],
            schema=SEGMENT_CHANGES_SCHEMA,
        )
        for key, rows in groups.items()
    }
    return write_partitions(lake_root, "segment_changes", tables)


class WebhookSender:
    """Signs (Standard Webhooks) and posts transitions, retrying with backoff."""

    def __init__(
        self,
        *,
        timeout_s: float,
        retries: int,
        backoff_s: float,
        allow_private: bool,
    ) -> None:
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.allow_private = allow_private
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            # No redirects: a public URL must not bounce a delivery into a private one.
            self._client = httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def check_url(self, url: str) -> None:
        """Refuse what must not receive webhooks (:class:`WebhookError` names why)."""
        host = url_host(url)
        if not self.allow_private:
            check_addresses(host, await resolve(host))

    async def post_once(self, hook: StoredWebhook, change: StoredChange) -> None:
        """One attempt; raises with the reason on anything but a 2xx."""
        await self.check_url(hook.url)  # again at each delivery: DNS may have changed
        payload = encode_change(change)
        message_id = f"seg_{change.id}"
        now = datetime.now(UTC)
        signature = Webhook(hook.secret).sign(message_id, now, payload.decode())
        headers = {
            "content-type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signature,
            "user-agent": "PlayerPulse-Webhooks",
        }
        reply = await self.client.post(hook.url, content=payload, headers=headers)
        if not 200 <= reply.status_code < 300:
            raise WebhookError(f"HTTP {reply.status_code}")

    async def post(self, hook: StoredWebhook, change: StoredChange) -> tuple[int, str] | None:
        """Deliver with retries; None once delivered, else (attempts, last error)."""
        attempts = 0
        while True:
            attempts += 1
            try:
                await self.post_once(hook, change)
                return None
            except (httpx.HTTPError, WebhookError, OSError) as exc:
                error = str(exc) or type(exc).__name__
            if attempts > self.retries:
                return attempts, error
            await asyncio.sleep(backoff_s(attempts, self.backoff_s))


def _wanted(hook: StoredWebhook, change: StoredChange) -> bool:
    if f"segment.{change.kind}" not in hook.events:
        return False
    return hook.segments is None or change.segment in hook.segments


class WebhookRelay(OutboxRelay):
    """To one webhook: players in parallel, each player's transitions in order; a
    transition that exhausts its retries is kept as failed, and so are the player's
    later ones of the batch (so that a player's order holds when they are sent again)."""

    def __init__(
        self, engine: AsyncEngine, hook: StoredWebhook, sender: WebhookSender, parallel: int = 16
    ) -> None:
        super().__init__(engine, webhook_consumer(hook.id), batch=200)
        self.create_cursor = False  # made with the webhook; gone with it
        self.hook = hook
        self.sender = sender
        self.parallel = asyncio.Semaphore(parallel)
        self.webhooks = WebhookRepository()

    def game(self) -> str | None:
        return self.hook.game

    async def deliver(self, conn: AsyncConnection, changes: list[StoredChange]) -> None:
        by_player: dict[str, list[StoredChange]] = defaultdict(list)
        for change in changes:
            if _wanted(self.hook, change):
                by_player[change.player_id].append(change)
        results = await asyncio.gather(*(self._player(rows) for rows in by_player.values()))
        failed = [f for found in results for f in found]
        if failed:
            log.warning(
                "webhook deliveries failed after retries",
                webhook=self.hook.id,
                count=len(failed),
                error=failed[0][2],
            )
        await self.webhooks.add_failures(conn, self.hook.id, failed)

    async def _player(self, rows: list[StoredChange]) -> list[tuple[int, int, str]]:
        async with self.parallel:
            for index, change in enumerate(rows):
                outcome = await self.sender.post(self.hook, change)
                if outcome is not None:
                    attempts, error = outcome
                    later = [
                        (c.id, 0, f"after failed transition {change.id}") for c in rows[index + 1 :]
                    ]
                    return [(change.id, attempts, error), *later]
        return []


class WebhookService:
    """A game's webhooks: create (URL checked), list, delete, failed deliveries, resend."""

    def __init__(self, engine: AsyncEngine, sender: WebhookSender) -> None:
        self.engine = engine
        self.sender = sender
        self.repository = WebhookRepository()

    async def create(
        self, game: str, url: str, events: list[str], segments: list[str] | None
    ) -> StoredWebhook:
        """A new webhook (its secret shown once); :class:`WebhookError` names the problem."""
        await self.sender.check_url(url)
        chosen = check_events(events)
        secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        hook = StoredWebhook(
            id="wh_" + secrets.token_hex(8),
            game=game,
            url=url,
            secret=secret,
            events=chosen,
            segments=None if segments is None else sorted(set(segments)),
            created_at=datetime.now(UTC),
        )
        async with self.engine.begin() as conn:
            return await self.repository.create(conn, hook)

    async def of_game(self, game: str) -> list[StoredWebhook]:
        async with self.engine.connect() as conn:
            return await self.repository.webhooks(conn, game)

    async def get(self, game: str, hook_id: str) -> StoredWebhook | None:
        async with self.engine.connect() as conn:
            return await self.repository.get(conn, game, hook_id)

    async def delete(self, game: str, hook_id: str) -> bool:
        async with self.engine.begin() as conn:
            return await self.repository.delete(conn, game, hook_id)

    async def failed(self, hook: StoredWebhook, limit: int) -> list[Any]:
        async with self.engine.connect() as conn:
            return await self.repository.failures(conn, hook.id, limit)

    async def resend(self, hook: StoredWebhook) -> tuple[int, int]:
        """Send the failed deliveries again, in order, one attempt each (a player's later
        ones wait while an earlier one still fails); (delivered, still failed)."""
        async with self.engine.begin() as conn:
            failed = await self.repository.failures(conn, hook.id)
            delivered, stuck = 0, set()
            for item in failed:
                change = item.change
                if change.player_id in stuck:
                    continue
                try:
                    await self.sender.post_once(hook, change)
                except (httpx.HTTPError, WebhookError, OSError) as exc:
                    stuck.add(change.player_id)
                    await self.repository.add_failures(
                        conn, hook.id, [(change.id, 1, str(exc) or type(exc).__name__)]
                    )
                    continue
                await self.repository.forget_failure(conn, hook.id, change.id)
                delivered += 1
        return delivered, len(failed) - delivered


class SegmentDelivery:
    """Runs the relays of this process, each in its own loop (a failing webhook holds up
    nobody else): woken by each outbox commit (NOTIFY), else every second; the lake's
    every ``lake_every_s`` (larger files)."""

    def __init__(
        self,
        engine: AsyncEngine,
        topic: TopicRelay,
        lake: LakeRelay,
        sender: WebhookSender,
        *,
        lake_every_s: float = 10.0,
    ) -> None:
        self.engine = engine
        self.topic = topic
        self.lake = lake
        self.sender = sender
        self.lake_every_s = lake_every_s
        self.webhooks = WebhookRepository()
        self._wakers: set[asyncio.Event] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._hooks: dict[str, asyncio.Task[None]] = {}

    def notice(self, _payload: str | None) -> None:
        """A NOTIFY from an outbox commit (or a reconnection): deliver now."""
        for waker in self._wakers:
            waker.set()

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._forever(self.topic.round, None), name="segment-topic"),
            asyncio.create_task(
                self._forever(self.lake.round, self.lake_every_s), name="segment-lake"
            ),
            asyncio.create_task(self._follow_webhooks(), name="segment-webhooks"),
        ]

    async def stop(self) -> None:
        tasks = [*self._tasks, *self._hooks.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks, self._hooks = [], {}
        await self.sender.close()

    async def _follow_webhooks(self) -> None:
        """One relay loop per webhook, started and stopped as webhooks come and go."""
        while True:
            try:
                async with self.engine.connect() as conn:
                    hooks = {h.id: h for h in await self.webhooks.webhooks(conn)}
            except (OSError, TimeoutError) as exc:
                log.warning("webhooks not listed; retrying", error=str(exc))
                hooks = None
            except Exception:
                log.exception("webhooks not listed")
                hooks = None
            if hooks is not None:
                for hook_id in [h for h in self._hooks if h not in hooks]:
                    self._hooks.pop(hook_id).cancel()
                for hook_id, hook in hooks.items():
                    if hook_id not in self._hooks:
                        relay = WebhookRelay(self.engine, hook, self.sender)
                        self._hooks[hook_id] = asyncio.create_task(
                            self._forever(relay.round, None), name=f"webhook:{hook_id}"
                        )
            await asyncio.sleep(1.0)

    async def _forever(self, step: Callable[[], Awaitable[int]], every_s: float | None) -> None:
        waker = asyncio.Event()
        self._wakers.add(waker)
        try:
            while True:
                try:
                    while await step() > 0:
                        pass
                except (BrokerUnavailable, OSError, TimeoutError) as exc:
                    log.warning("segment relay round failed; retrying", error=str(exc))
                except Exception:
                    log.exception("segment relay round raised")
                if every_s is not None:
                    await asyncio.sleep(every_s)
                    continue
                waker.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waker.wait(), timeout=1.0)
        finally:
            self._wakers.discard(waker)
