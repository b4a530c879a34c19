"""Memory stays bounded however large the object: a 256 MiB put and get."""

from __future__ import annotations

import hashlib
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from storage_helpers import MIB, payload

from storage.testing import local_layer

CHUNK = payload(MIB, seed=99)


async def repeated(total: int) -> AsyncIterator[bytes]:
    """``total`` bytes made of one repeated chunk, so the source itself holds no memory."""
    for pos in range(0, total, len(CHUNK)):
        yield CHUNK[: total - pos]


def expected_md5(total: int) -> str:
    digest = hashlib.md5()
    for pos in range(0, total, len(CHUNK)):
        digest.update(CHUNK[: total - pos])
    return digest.hexdigest()


async def traced_put_get(tmp_path: Path, size: int) -> tuple[int, int]:
    layer, _ = await local_layer(str(tmp_path / f"s{size}"), 8)
    await layer.make_bucket("bkt")
    tracemalloc.start()
    try:
        info = await layer.put_object("bkt", "big", repeated(size), size=size)
        _, put_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        digest = hashlib.md5()
        received = 0
        async with await layer.get_object("bkt", "big") as reader:
            async for chunk in reader:
                digest.update(chunk)
                received += len(chunk)
        _, get_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received == size
    assert info.etag == digest.hexdigest() == expected_md5(size)
    return put_peak, get_peak


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_put_and_get_memory_does_not_scale_with_size(tmp_path: Path) -> None:
    small_put, small_get = await traced_put_get(tmp_path, 16 * MIB)
    big_put, big_get = await traced_put_get(tmp_path, 256 * MIB)
    # A handful of 1 MiB blocks and their shards in flight, never the object.
    assert big_put < 24 * MIB, big_put
    assert big_get < 24 * MIB, big_get
    assert big_put < small_put + 4 * MIB
    assert big_get < small_get + 4 * MIB
