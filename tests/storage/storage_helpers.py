"""Helpers shared by the storage tests (most now ship in :mod:`storage.testing`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from storage.testing import MIB, flip_byte, payload, read_all, shard_files

__all__ = ["MIB", "chunks_of", "flip_byte", "payload", "read_all", "shard_files"]


async def chunks_of(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for pos in range(0, len(data), size):
        yield data[pos : pos + size]
