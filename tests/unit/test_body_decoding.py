"""Ingest bodies by Content-Encoding: gzip and zstd, the size cap, broken and unknown ones."""

from __future__ import annotations

import gzip
import json
import tracemalloc
import zlib
from collections.abc import Callable

import pytest
import zstandard

from app.api.errors import ApiError
from app.api.ingest_routes import _decoded
from app.domain.events import parse_batch
from app.settings import Settings

pytestmark = pytest.mark.unit

Compress = Callable[[bytes], bytes]

LIMIT = Settings().max_body_bytes  # 500 KB, as served
BODY = json.dumps(
    {
        "events": [
            {"event_id": f"e-{i}", "player_id": "p", "type": "t", "ts": "2024-01-01T00:00:00Z"}
            for i in range(50)
        ]
    }
).encode()


def zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


def zstd_streamed(data: bytes) -> bytes:
    """As a streaming compressor writes it: no content size in the frame header."""
    compressor = zstandard.ZstdCompressor().compressobj()
    return compressor.compress(data) + compressor.flush()


def refusal(body: bytes, encoding: str | None, limit: int = LIMIT) -> tuple[int, str]:
    with pytest.raises(ApiError) as caught:
        _decoded(body, encoding, limit)
    return caught.value.status_code, str(caught.value.detail)


@pytest.mark.parametrize("encoding", [None, "identity", " Identity "])
def test_an_uncompressed_body_is_passed_through(encoding: str | None) -> None:
    assert _decoded(BODY, encoding, LIMIT) is BODY


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        (" GZip ", gzip.compress),
        ("zstd", zstd),
        ("ZSTD", zstd_streamed),
    ],
)
def test_compressed_bodies_decode_to_the_original(encoding: str, compress: Compress) -> None:
    decoded = _decoded(compress(BODY), encoding, LIMIT)
    assert decoded == BODY
    records, rejections = parse_batch(decoded, "game-1", 1_704_067_999_000_000)
    assert [r.event_id for r in records] == [f"e-{i}" for i in range(50)]
    assert rejections == []


@pytest.mark.parametrize("compress", [gzip.compress, zstd, zstd_streamed])
def test_a_body_of_exactly_the_limit_passes_one_byte_more_does_not(compress: Compress) -> None:
    limit = 10_000
    exact = b"x" * limit
    assert _decoded(compress(exact), _name(compress), limit) == exact
    status, error = refusal(compress(exact + b"x"), _name(compress), limit)
    assert status == 413
    assert error == f"decompressed body exceeds {limit} bytes"


def _name(compress: Compress) -> str:
    return "gzip" if compress is gzip.compress else "zstd"


@pytest.mark.parametrize("compress", [gzip.compress, zstd, zstd_streamed])
def test_a_zip_bomb_is_refused_without_inflating_it(compress: Compress) -> None:
    """64 MiB of zeros in a few KB: refused, and never more than the limit is inflated."""
    bomb = compress(bytes(64 * 1024 * 1024))
    assert len(bomb) < 100_000
    tracemalloc.start()
    try:
        status, error = refusal(bomb, _name(compress))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (status, error) == (413, f"decompressed body exceeds {LIMIT} bytes")
    # The output is cut one byte past the limit: the peak stays near the limit, far
    # below the 64 MiB of a full inflation.
    assert peak < 4 * LIMIT, peak


@pytest.mark.parametrize(
    ("encoding", "body", "message"),
    [
        ("gzip", b"not compressed", "body is not valid gzip: "),
        ("gzip", zlib.compress(BODY), "body is not valid gzip: "),  # zlib, not gzip framing
        ("zstd", b"not compressed", "body is not valid zstd: "),
        ("zstd", b"\x28\xb5\x2f\xfd" + b"x" * 20, "body is not valid zstd: "),  # bad header
    ],
)
def test_a_body_that_is_not_what_it_claims_is_a_400(
    encoding: str, body: bytes, message: str
) -> None:
    status, error = refusal(body, encoding)
    assert status == 400
    assert error.startswith(message), error


@pytest.mark.parametrize("cut", [5, 100, 1])
def test_a_truncated_gzip_body_is_a_400(cut: int) -> None:
    compressed = gzip.compress(BODY)
    assert refusal(compressed[:-cut], "gzip") == (400, "body is truncated gzip")


@pytest.mark.parametrize("compress", [zstd, zstd_streamed])
@pytest.mark.parametrize("cut", [5, 100, 1])
def test_a_truncated_zstd_body_is_a_400(compress: Compress, cut: int) -> None:
    """zstd's stream reader ends a cut frame without an error: it must not pass as the
    decoded prefix (here: nothing at all, or the first 128 KiB blocks)."""
    for data in (BODY, BODY * 80):  # one block; several (330 KB)
        compressed = compress(data)
        assert refusal(compressed[:-cut], "zstd") == (400, "body is truncated zstd")


@pytest.mark.parametrize("encoding", ["br", "deflate", "gzip, zstd", "compress"])
def test_other_encodings_are_a_415(encoding: str) -> None:
    status, error = refusal(gzip.compress(BODY), encoding)
    assert status == 415
    assert error == (f"Content-Encoding {encoding!r} is not supported; use gzip, zstd or none")
