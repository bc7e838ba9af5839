"""Disk watermarks: parsing the setting, the cached state, and telling a full disk apart."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from app.disk import DiskFull, DiskWatch, out_of_space, watched_directories
from app.settings import MinFree, Settings, SettingsError, parse_min_free

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5%", MinFree(percent=5.0)),
        ("0.5%", MinFree(percent=0.5)),
        ("500MB", MinFree(bytes=500_000_000)),
        ("1GiB", MinFree(bytes=1024**3)),
        ("4096", MinFree(bytes=4096)),
    ],
)
def test_min_free_is_a_size_or_a_percentage(text: str, expected: MinFree) -> None:
    assert parse_min_free(text) == expected


@pytest.mark.parametrize("text", ["lots", "150%", "-1%", "5 apples"])
def test_a_bad_min_free_is_refused_with_the_variable_named(text: str) -> None:
    with pytest.raises(SettingsError, match="PLAYERPULSE_DISK_MIN_FREE"):
        Settings.from_env({"PLAYERPULSE_DISK_MIN_FREE": text})


def test_produce_timeout_takes_a_duration_or_seconds() -> None:
    assert Settings.from_env({"PLAYERPULSE_PRODUCE_TIMEOUT": "3s"}).produce_timeout_s == 3.0
    assert Settings.from_env({"PLAYERPULSE_PRODUCE_TIMEOUT": "2.5"}).produce_timeout_s == 2.5
    assert (
        Settings.from_env({"PLAYERPULSE_FOLD_CACHE_BYTES": "64MiB"}).fold_cache_bytes == 64 * 2**20
    )
    with pytest.raises(SettingsError, match="PRODUCE_TIMEOUT"):
        Settings.from_env({"PLAYERPULSE_PRODUCE_TIMEOUT": "0"})


def test_every_directory_written_is_watched_embedded_ones_only_when_embedded(
    tmp_path: Path,
) -> None:
    embedded = watched_directories(Settings(data_dir=tmp_path))
    assert set(embedded) == {"data", "broker log", "postgresql", "lake"}
    external = watched_directories(
        Settings(
            data_dir=tmp_path,
            database_url="postgresql://x",
            kafka_brokers="h:1",
            lake_url="s3://bucket/lake",
        )
    )
    assert set(external) == {"data"}


def test_writes_are_refused_below_the_watermark_and_resume_above_it(tmp_path: Path) -> None:
    stat = os.statvfs(tmp_path)
    free = stat.f_bavail * stat.f_frsize
    low = DiskWatch({"data": tmp_path / "not-made-yet"}, MinFree(bytes=free * 2))
    assert low.low is not None
    assert not low.writable
    with pytest.raises(DiskFull) as refused:
        low.refuse_writes()
    assert refused.value.space.path == str(tmp_path / "not-made-yet")
    assert refused.value.retry_after >= 1
    assert "PLAYERPULSE_DISK_MIN_FREE" in str(refused.value)
    low.min_free = MinFree(bytes=0)
    low.check()  # what the timer does
    assert low.writable
    low.refuse_writes()


def test_out_of_space_is_found_through_the_cause_chain() -> None:
    wrapped = RuntimeError("write failed")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert out_of_space(wrapped)
    assert not out_of_space(OSError(errno.ENOENT, "missing"))

    class DiskFullError(Exception):
        sqlstate = "53100"

    assert out_of_space(DiskFullError("could not extend file"))
