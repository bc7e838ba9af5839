"""The lake archiver: buffers by size and age, acknowledges only what was written."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest

from app.domain.events import EventRecord
from app.streams import lake
from app.streams.lake import LakeArchiver, write_events

pytestmark = pytest.mark.unit

T0 = 1_704_067_200_000_000  # 2024-01-01T00:00:00Z in µs


class FakeClock:
    def __init__(self) -> None:
        self.now = 500.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(
        lake, "time", SimpleNamespace(monotonic=fake.monotonic, time_ns=time.time_ns)
    )
    return fake


class Acks:
    """Acknowledgements, as the archive agent passes them (one callable per message)."""

    def __init__(self) -> None:
        self.acked: list[str] = []

    def __call__(self, *names: str) -> list[Callable[[], object]]:
        return [functools.partial(self.acked.append, name) for name in names]


class FakeWriter:
    """Writes a text file per call under the lake dir; fails while ``failing`` is set."""

    def __init__(self, acks: Acks) -> None:
        self.acks = acks
        self.failing = False
        self.calls: list[list[str]] = []
        self.acked_when_called: list[list[str]] = []

    def __call__(self, lake_dir: Path, records: list[str]) -> list[Path]:
        self.calls.append(list(records))
        self.acked_when_called.append(list(self.acks.acked))
        if self.failing:
            raise OSError("disk full")
        path = lake_dir / f"part-{len(self.calls)}.txt"
        path.write_text("\n".join(records))
        return [path]


def archiver(
    tmp_path: Path,
    writer: Callable[[Path, list[str]], list[Path]],
    *,
    flush_s: float = 10.0,
    flush_events: int = 5,
) -> LakeArchiver[str]:
    return LakeArchiver[str](tmp_path, flush_s=flush_s, flush_events=flush_events, writer=writer)


def test_full_once_flush_events_are_buffered(tmp_path: Path, clock: FakeClock) -> None:
    acks = Acks()
    buffer = archiver(tmp_path, FakeWriter(acks), flush_events=5)
    assert not buffer.full
    buffer.add_batch(["a", "b"], acks("m1"))
    buffer.add_batch(["c", "d"], acks("m2"))
    assert not buffer.full
    buffer.add_batch(["e"], acks("m3"))
    assert buffer.full
    assert buffer.seen == 5
    assert acks.acked == []  # buffering acknowledges nothing


def test_due_once_the_oldest_record_waited_flush_s(tmp_path: Path, clock: FakeClock) -> None:
    acks = Acks()
    buffer = archiver(tmp_path, FakeWriter(acks), flush_s=10.0)
    assert not buffer.due  # nothing buffered: never due
    buffer.add_batch(["a"], acks("m1"))
    clock.now += 6
    buffer.add_batch(["b"], acks("m2"))  # a later batch does not restart the wait
    clock.now += 3.9
    assert not buffer.due
    clock.now += 0.1
    assert buffer.due


async def test_flush_writes_everything_then_acknowledges_it(
    tmp_path: Path, clock: FakeClock
) -> None:
    acks = Acks()
    writer = FakeWriter(acks)
    buffer = archiver(tmp_path, writer)
    buffer.add_batch(["a", "b"], acks("m1"))
    buffer.add_batch(["c"], acks("m2", "m3"))
    clock.now += 60
    await buffer.flush()
    assert writer.calls == [["a", "b", "c"]]
    assert writer.acked_when_called == [[]]  # nothing acknowledged before the write
    assert acks.acked == ["m1", "m2", "m3"]
    assert (tmp_path / "part-1.txt").read_text() == "a\nb\nc"
    assert buffer.archived == 3
    assert not buffer.full
    assert not buffer.due
    await buffer.flush()  # nothing left: no empty file, no second acknowledgement
    assert writer.calls == [["a", "b", "c"]]
    assert acks.acked == ["m1", "m2", "m3"]


async def test_a_failed_write_acknowledges_nothing_and_is_retried(
    tmp_path: Path, clock: FakeClock
) -> None:
    acks = Acks()
    writer = FakeWriter(acks)
    buffer = archiver(tmp_path, writer, flush_s=10.0)
    buffer.add_batch(["a", "b"], acks("m1"))
    clock.now += 10
    writer.failing = True
    await buffer.flush()
    assert writer.calls == [["a", "b"]]
    assert acks.acked == []
    assert buffer.archived == 0
    assert not (tmp_path / "part-1.txt").exists()
    assert buffer.due  # still as old as before: retried at the next tick
    # More arrives meanwhile; the retry writes the old records first, then the new.
    buffer.add_batch(["c"], acks("m2"))
    await buffer.flush()
    assert writer.calls[-1] == ["a", "b", "c"]
    assert acks.acked == []
    writer.failing = False
    await buffer.flush()
    assert writer.calls == [["a", "b"], ["a", "b", "c"], ["a", "b", "c"]]
    assert writer.acked_when_called[-1] == []
    assert acks.acked == ["m1", "m2"]
    assert buffer.archived == 3
    assert (tmp_path / "part-3.txt").read_text() == "a\nb\nc"
    assert not buffer.due


async def test_a_flush_waits_for_the_one_under_way(tmp_path: Path) -> None:
    """A second flush neither writes nor acknowledges newer records while an older write
    may still fail: after the failure it writes the older records first, with its own."""
    acks = Acks()
    entered, release = threading.Event(), threading.Event()
    calls: list[list[str]] = []

    def slow_writer(lake_dir: Path, records: list[str]) -> list[Path]:
        calls.append(list(records))
        entered.set()
        assert release.wait(timeout=10)
        if len(calls) == 1:
            raise OSError("disk full")
        return []

    buffer = archiver(tmp_path, slow_writer)
    buffer.add_batch(["a"], acks("m1"))
    first = asyncio.create_task(buffer.flush())
    assert await asyncio.to_thread(entered.wait, 10)  # the first flush is writing
    buffer.add_batch(["b"], acks("m2"))
    second = asyncio.create_task(buffer.flush())
    await asyncio.sleep(0)  # a yield, not a wait: the second flush starts (and queues)
    release.set()
    await asyncio.gather(first, second)
    assert calls == [["a"], ["a", "b"]]
    assert acks.acked == ["m1", "m2"]


async def test_events_are_readable_in_the_lake_before_they_are_acknowledged(
    tmp_path: Path,
) -> None:
    records = [
        EventRecord("g1", f"e-{i}", f"p-{i % 2}", "purchase", T0 + i, T0 + 99, {"amount": i})
        for i in range(3)
    ]
    found_at_ack: list[int] = []

    def ack() -> None:
        files = list((tmp_path / "events").rglob("*.parquet"))
        found_at_ack.append(sum(pq.read_table(f).num_rows for f in files))

    buffer = LakeArchiver[EventRecord](tmp_path, flush_s=10, flush_events=3, writer=write_events)
    buffer.add_batch(records, [ack])
    assert buffer.full
    await buffer.flush()
    assert found_at_ack == [3]
    [written] = list((tmp_path / "events" / "game=g1" / "date=2024-01-01").iterdir())
    table = pq.read_table(written)
    assert table.column("event_id").to_pylist() == ["e-0", "e-1", "e-2"]
    assert table.column("props").to_pylist() == ['{"amount":0}', '{"amount":1}', '{"amount":2}']
    assert buffer.archived == 3


def test_a_paused_archive_writes_nothing_and_resumes_where_it_paused(
    tmp_path: Path, clock: FakeClock
) -> None:
    acks = Acks()
    writer = FakeWriter(acks)
    disk_ok = [False]
    buffer = LakeArchiver[str](
        tmp_path, flush_s=10.0, flush_events=2, writer=writer, may_write=lambda: disk_ok[0]
    )
    buffer.add_batch(["a", "b"], acks("m1"))
    asyncio.run(buffer.flush())
    assert writer.calls == []  # paused: held, not acknowledged
    assert acks.acked == []
    buffer.add_batch(["c"], acks("m2"))
    disk_ok[0] = True
    asyncio.run(buffer.flush())
    assert writer.calls == [["a", "b", "c"]]
    assert acks.acked == ["m1", "m2"]
