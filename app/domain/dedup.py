"""The ids a profile has absorbed, as 8-byte hashes bucketed by received time.

Stored with the profile (``profiles.seen_ids``, written in the same transaction), so a
client resend is recognised and skipped. Only the last ``horizon_s`` of received time
is remembered: buckets are ``horizon_s / BUCKETS`` wide, and a bucket goes as a whole
the first time its player is folded after every id in it is older than the horizon.
Nothing is deleted row by row; the set of a player holds at most the ids received in
``horizon_s + horizon_s / BUCKETS``, at 8 bytes each plus a few bytes per bucket.

Encoding: a msgpack array ``[first start (epoch s), [gap to each next start (s)],
[ids per bucket], hashes (bin)]``, every hash bucket by bucket, oldest first: small
numbers take one byte each, so a bucket costs 2 to 4 bytes besides its hashes. Sets
stored by the first version of this module (``<H`` bucket count, ``<II`` start and ids
per bucket, then the hashes: 8 bytes a bucket) are read too, and written anew.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from hashlib import blake2b
from itertools import accumulate, pairwise

import msgspec

HASH_BYTES = 8
BUCKETS = 8
"""Buckets per horizon: ids are kept at most 1/BUCKETS of a horizon past it."""

_COUNT = struct.Struct("<H")
_PACKED = 0x94
"""First byte of the encoding (a msgpack array of 4); the old one began with its bucket
count, never above BUCKETS + 2."""
_Packed = tuple[int, list[int], list[int], bytes]
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_Packed)


def event_hash(game: str, player_id: str, event_id: str) -> bytes:
    """The 8-byte fingerprint of an event id (per player: a collision needs ~2^32 ids)."""
    key = f"{game}\x1f{player_id}\x1f{event_id}".encode()
    return blake2b(key, digest_size=HASH_BYTES).digest()


def bucket_width_s(horizon_s: int) -> int:
    """Seconds of received time one bucket covers (at least 1)."""
    return max(1, horizon_s // BUCKETS)


def _find(haystack: bytes | bytearray, needle: bytes) -> bool:
    """True if ``needle`` is one of the 8-byte words of ``haystack``."""
    at = haystack.find(needle)
    while at >= 0:
        if at % HASH_BYTES == 0:
            return True
        at = haystack.find(needle, at + 1)
    return False


@dataclass(slots=True)
class SeenIds:
    """One player's remembered id hashes; ``add`` what is folded, ``encode`` to store."""

    starts: list[int] = field(default_factory=list)
    """Bucket starts (epoch seconds), ascending."""
    counts: list[int] = field(default_factory=list)
    hashes: bytes = b""
    """The stored hashes, bucket by bucket."""
    added: dict[int, bytearray] = field(default_factory=dict)
    """Hashes added since decoding, by bucket start."""
    stored: bytes | None = None
    """The blob decoded, while nothing changed (encoding returns it as it is)."""

    @classmethod
    def decode(cls, blob: bytes | None) -> SeenIds:
        """The set stored as ``blob`` (None or empty: nothing remembered)."""
        if not blob:
            return cls()
        if blob[0] != _PACKED:
            return cls._decode_first(blob)
        try:
            first, gaps, counts, hashes = _decoder.decode(blob)
        except msgspec.DecodeError as exc:
            raise ValueError(f"corrupt seen-ids blob: {exc}") from exc
        if len(gaps) + 1 != len(counts) or len(hashes) != HASH_BYTES * sum(counts):
            raise ValueError("corrupt seen-ids blob: hash bytes do not match the counts")
        return cls(list(accumulate(gaps, initial=first)), counts, hashes, stored=blob)

    @classmethod
    def _decode_first(cls, blob: bytes) -> SeenIds:
        """A set in the first encoding (8 bytes a bucket); it is encoded anew when written."""
        (buckets,) = _COUNT.unpack_from(blob)
        header = struct.unpack_from(f"<{2 * buckets}I", blob, _COUNT.size)
        counts = list(header[1::2])
        hashes = blob[_COUNT.size + 4 * len(header) :]
        if len(hashes) != HASH_BYTES * sum(counts):
            raise ValueError("corrupt seen-ids blob: hash bytes do not match the counts")
        return cls(list(header[::2]), counts, hashes)

    def __len__(self) -> int:
        return sum(self.counts) + sum(len(b) for b in self.added.values()) // HASH_BYTES

    def holds(self, digest: bytes) -> bool:
        """True if this hash was remembered (stored or added since)."""
        if _find(self.hashes, digest):
            return True
        return any(_find(more, digest) for more in self.added.values())

    def add(self, digest: bytes, received_s: int, width_s: int) -> None:
        """Remember a hash in the bucket of its received time."""
        start = received_s - received_s % width_s
        more = self.added.get(start)
        if more is None:
            more = self.added[start] = bytearray()
        more += digest

    def prune(self, now_s: int, horizon_s: int, width_s: int) -> int:
        """Drop the buckets wholly older than the horizon; return how many ids went."""
        oldest = now_s - horizon_s  # ids received at or after this must stay
        dropped = 0
        keep = 0
        while keep < len(self.starts) and self.starts[keep] + width_s <= oldest:
            dropped += self.counts[keep]
            keep += 1
        if keep:
            self.stored = None
            self.hashes = self.hashes[HASH_BYTES * dropped :]
            del self.starts[:keep], self.counts[:keep]
        for start in [s for s in self.added if s + width_s <= oldest]:
            dropped += len(self.added.pop(start)) // HASH_BYTES
        return dropped

    def encode(self) -> bytes:
        """The stored form, with what was added merged into its buckets.

        The set then holds that form itself (as ``decode`` of the bytes would), so the
        fold keeps it for the player's next events instead of decoding them again.
        """
        if self.added:
            self._settle()
        if self.stored is None:
            self.stored = _pack(self.starts, self.counts, self.hashes)
        return self.stored

    def _settle(self) -> None:
        """Merge what was added into the buckets (kept in time order)."""
        added = sorted(self.added)
        if self.starts and added[0] < self.starts[-1]:
            self._merge()  # an id received before the newest bucket: rare
            return
        body: list[bytes | bytearray] = [self.hashes]
        for start in added:
            more = self.added[start]
            if self.starts and start == self.starts[-1]:
                self.counts[-1] += len(more) // HASH_BYTES
            else:
                self.starts.append(start)
                self.counts.append(len(more) // HASH_BYTES)
            body.append(more)
        self.hashes, self.added, self.stored = b"".join(body), {}, None

    def _merge(self) -> None:
        parts: dict[int, list[bytes]] = {}
        offset = 0
        for start, count in zip(self.starts, self.counts, strict=True):
            end = offset + HASH_BYTES * count
            parts[start] = [self.hashes[offset:end]]
            offset = end
        for start, more in self.added.items():
            parts.setdefault(start, []).append(bytes(more))
        self.starts = sorted(parts)
        chunks = [b"".join(parts[start]) for start in self.starts]
        self.counts = [len(chunk) // HASH_BYTES for chunk in chunks]
        self.hashes, self.added, self.stored = b"".join(chunks), {}, None


def _pack(starts: list[int], counts: list[int], hashes: bytes) -> bytes:
    if not starts:
        return b""
    gaps = [later - earlier for earlier, later in pairwise(starts)]
    return _encoder.encode((starts[0], gaps, counts, hashes))
