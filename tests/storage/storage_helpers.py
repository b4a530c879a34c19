"""Helpers shared by the storage tests."""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import AsyncIterator

from storage.objects import ObjectLayer

MIB = 1 << 20


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic random bytes (no period that could hide an offset bug)."""
    return random.Random(seed).randbytes(size)


async def chunks_of(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for pos in range(0, len(data), size):
        yield data[pos : pos + size]


async def read_all(layer: ObjectLayer, bucket: str, key: str, *args: int) -> bytes:
    async with await layer.get_object(bucket, key, *args) as reader:
        return await reader.read_all()


def shard_files(drive_root: str) -> list[str]:
    found = []
    for folder, _dirs, files in os.walk(drive_root):
        if ".minigrid.sys" in folder:
            continue
        found.extend(os.path.join(folder, f) for f in files if f == "shard")
    return sorted(found)


def flip_byte(path: str, position: int) -> None:
    """Invert one byte; a negative position counts from the end."""
    whence = os.SEEK_END if position < 0 else os.SEEK_SET
    with open(path, "r+b") as handle:
        handle.seek(position, whence)
        value = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([value[0] ^ 0xFF]))


def hex_id(label: str) -> str:
    """A fixed upload ID or data dir (a UUID as 32 lowercase hex) named after ``label``."""
    return hashlib.md5(label.encode()).hexdigest()
