"""The hop sample: which events, with which message's position and broker time."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from app.domain.events import EventRecord
from app.streams.folding import Position, _messages
from app.streams.hop_sample import HopSampler, write_hops
from app.streams.lake import LakeArchiver

pytestmark = pytest.mark.unit


def records(count: int) -> list[EventRecord]:
    return [
        EventRecord(
            game="g", event_id=f"e{i}", player_id="p", type="t", ts=i, received_at=1_000_000 + i
        )
        for i in range(count)
    ]


def parquet_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.parquet"))


def sampler(fraction: float, tmp_path: Path) -> HopSampler:
    archiver = LakeArchiver(tmp_path, flush_s=60, flush_events=1000, writer=write_hops)
    return HopSampler(fraction, archiver)


def test_each_event_gets_the_position_and_broker_time_of_its_message(tmp_path: Path) -> None:
    positions = [Position(3, 10, 2.5), Position(5, 7, 3.0), Position(3, 11, 4.0)]
    chosen = sampler(1.0, tmp_path).sample(records(5), positions, [2, 0, 3], folded_at=9_000_000)
    assert [(h.partition, h.offset, h.appended_at) for h in chosen] == [
        (3, 10, 2_500_000),
        (3, 10, 2_500_000),
        (3, 11, 4_000_000),
        (3, 11, 4_000_000),
        (3, 11, 4_000_000),
    ]
    assert [h.ts for h in chosen] == [0, 1, 2, 3, 4]
    assert {h.folded_at for h in chosen} == {9_000_000}


def test_a_fraction_keeps_about_that_share_and_zero_keeps_none(tmp_path: Path) -> None:
    many = records(10_000)
    positions, carried = [Position(0, 1, 1.0)], [len(many)]
    assert sampler(0.0, tmp_path).sample(many, positions, carried, 2) == []
    kept = len(sampler(0.1, tmp_path).sample(many, positions, carried, 2))
    assert 800 < kept < 1200


async def test_the_hook_buffers_and_the_flush_writes_parquet(tmp_path: Path) -> None:
    hops = sampler(1.0, tmp_path)
    hops(records(3), [Position(1, 2, 1.5)], [3])
    assert not parquet_files(tmp_path)  # buffered until the lake-flush timer
    await hops.archiver.flush()
    (written,) = parquet_files(tmp_path)
    assert written.parent.relative_to(tmp_path).as_posix() == "hops/game=g/date=1970-01-01"
    table = pq.read_table(written)
    assert table.column_names == [
        "type",
        "partition",
        "offset",
        "ts",
        "device_ts",
        "received_at",
        "appended_at",
        "folded_at",
    ]
    assert table.num_rows == 3


def test_messages_folded_now_are_read_back_from_their_end_indices() -> None:
    first, second, third = Position(0, 7, 1.0), Position(1, 2, 2.0), Position(0, 9, 3.0)
    # 3 events from the first message, 1 from the second, 2 from the third
    assert _messages([(3, first), (4, second), (6, third)]) == ([first, second, third], [3, 1, 2])
    assert _messages([(2, second)]) == ([second], [2])
