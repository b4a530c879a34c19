"""Helpers shared by the storage tests (most now ship in :mod:`storage.testing`)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

from storage.testing import MIB, flip_byte, payload, read_all, shard_files

__all__ = ["MIB", "chunks_of", "flip_byte", "hex_id", "payload", "read_all", "shard_files"]


async def chunks_of(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for pos in range(0, len(data), size):
        yield data[pos : pos + size]


def hex_id(label: str) -> str:
    """A fixed upload ID or data dir (a UUID as 32 lowercase hex) named after ``label``."""
    return hashlib.md5(label.encode()).hexdigest()
