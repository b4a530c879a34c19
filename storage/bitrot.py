"""Bitrot framing: a fast hash stored in front of every shard chunk.

A shard file is a sequence of frames ``[xxh3-128 digest (16 bytes)][chunk]``. Every chunk is
``chunk_size`` bytes (the shard of one erasure block) except the last, which may be shorter.
Readers verify the digest of every chunk they return, so silent corruption turns into a
:class:`~storage.errors.FileCorrupt` error instead of wrong bytes.

This module is pure: bytes in, bytes or errors out. No I/O.
"""

from __future__ import annotations

from collections.abc import Iterator

import xxhash

from storage.errors import FileCorrupt

HASH_SIZE = 16


def digest(chunk: bytes | memoryview) -> bytes:
    """The 16-byte xxh3-128 digest of one chunk."""
    return xxhash.xxh3_128_digest(chunk)


def chunk_count(shard_size: int, chunk_size: int) -> int:
    """How many chunks a shard of ``shard_size`` bytes holds."""
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    return -(-shard_size // chunk_size)


def framed_size(shard_size: int, chunk_size: int) -> int:
    """The size on disk of a shard of ``shard_size`` bytes, digests included."""
    return shard_size + HASH_SIZE * chunk_count(shard_size, chunk_size)


def frame(chunk: bytes) -> bytes:
    """One frame: digest followed by the chunk."""
    return digest(chunk) + chunk


def frame_all(shard: bytes, chunk_size: int) -> bytes:
    """Frame a whole shard held in memory (used for inline data)."""
    return b"".join(
        frame(shard[pos : pos + chunk_size]) for pos in range(0, len(shard), chunk_size)
    )


def verify(expected: bytes | memoryview, chunk: bytes | memoryview, where: str = "") -> None:
    """Raise FileCorrupt unless ``chunk`` hashes to ``expected``."""
    if len(expected) != HASH_SIZE or digest(chunk) != bytes(expected):
        raise FileCorrupt(f"bitrot hash mismatch{' in ' + where if where else ''}")


def chunk_span(offset: int, length: int, chunk_size: int) -> tuple[int, int]:
    """The first chunk index and the chunk count that cover ``[offset, offset + length)``."""
    if length <= 0:
        return offset // chunk_size, 0
    first = offset // chunk_size
    last = (offset + length - 1) // chunk_size
    return first, last - first + 1


def iter_verified(
    framed: bytes, chunk_size: int, shard_size: int, where: str = ""
) -> Iterator[bytes]:
    """Verify and yield every chunk of a framed shard held in memory."""
    expected_size = framed_size(shard_size, chunk_size)
    if len(framed) != expected_size:
        raise FileCorrupt(
            f"framed shard is {len(framed)} bytes, expected {expected_size}"
            f"{' in ' + where if where else ''}"
        )
    view = memoryview(framed)
    pos = 0
    remaining = shard_size
    while remaining > 0:
        size = min(chunk_size, remaining)
        head = view[pos : pos + HASH_SIZE]
        body = view[pos + HASH_SIZE : pos + HASH_SIZE + size]
        verify(head, body, where)
        yield bytes(body)
        pos += HASH_SIZE + size
        remaining -= size
