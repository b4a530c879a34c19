"""The put path's copy and thread-pool economy: blocks joined once, data shards as views of the
block, one thread-pool job per block for every local drive's shard and the block's MD5."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from storage_helpers import MIB, payload

from storage import bitrot
from storage.erasure import Erasure
from storage.local import LocalDrive, LocalShardWriter, write_local_shards
from storage.put import BlockSource
from storage.testing import local_layer, read_all


async def _pieces(data: bytes, sizes: list[int]) -> AsyncIterator[bytes]:
    pos = 0
    for size in sizes:
        yield data[pos : pos + size]
        pos += size
    if pos < len(data):
        yield data[pos:]


async def _blocks(source: AsyncIterator[Any], block_size: int) -> list[bytes]:
    blocks = BlockSource(source, block_size)
    out = []
    while (block := await blocks.next()) is not None:
        out.append(block)
    return out


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "sizes",
    [[1000] * 5, [4096, 1, 4095, 10_000], [0, 3, 0, 5000, 1], [20_000], [4096] * 4],
)
async def test_block_source_cuts_any_piece_sizes_into_full_blocks(sizes: list[int]) -> None:
    data = payload(20_000, seed=1)
    blocks = await _blocks(_pieces(data, sizes), 4096)
    assert b"".join(blocks) == data
    assert [len(b) for b in blocks] == [4096] * 4 + [20_000 - 4 * 4096]
    assert all(type(b) is bytes for b in blocks)


@pytest.mark.asyncio
async def test_block_source_passes_a_whole_block_piece_on_without_copying() -> None:
    piece = payload(4096, seed=2)

    async def source() -> AsyncIterator[bytes]:
        yield piece
        yield b"tail"

    blocks = await _blocks(source(), 4096)
    assert blocks[0] is piece
    assert blocks[1] == b"tail"


@pytest.mark.asyncio
async def test_block_source_copies_a_buffer_its_producer_reuses() -> None:
    """A producer that refills one bytearray must not change blocks already cut."""
    data = payload(10_000, seed=3)

    async def reusing() -> AsyncIterator[Any]:
        buffer = bytearray(1000)
        for pos in range(0, len(data), 1000):
            buffer[:] = data[pos : pos + 1000]
            yield buffer

    assert b"".join(await _blocks(reusing(), 4096)) == data


@pytest.mark.parametrize("length", [MIB, MIB - 1, 7, 4])
def test_encode_views_match_encode_and_view_the_block(length: int) -> None:
    erasure = Erasure(4, 4, MIB)
    block = payload(length, seed=4)
    views = erasure.encode_views(block)
    assert [bytes(v) for v in views] == erasure.encode(block)
    if length % 4 == 0:  # no padding: the data shards are the block's own memory
        assert all(isinstance(v, memoryview) and v.obj is block for v in views[:4])


class CountingExecutor(ThreadPoolExecutor):
    """The loop's default executor, counting the jobs submitted to it."""

    def __init__(self) -> None:
        super().__init__(max_workers=4)
        self.jobs = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        self.jobs += 1
        return super().submit(fn, *args, **kwargs)


@pytest.mark.asyncio
async def test_a_block_costs_two_thread_pool_jobs_on_eight_local_drives(tmp_path: Path) -> None:
    """Encode, then one job for all eight shard writes (it was ten: encode, MD5 and one per
    drive; the MD5 now has a thread of its own). Counted on a 17-block put against a 1-block
    put of the same set."""
    layer, _ = await local_layer(str(tmp_path), 8)
    await layer.make_bucket("bkt")
    executor = CountingExecutor()
    asyncio.get_running_loop().set_default_executor(executor)
    counts = []
    for blocks in (1, 17):
        data = payload(blocks * MIB, seed=blocks)
        before = executor.jobs
        info = await layer.put_object("bkt", f"obj{blocks}", data)
        counts.append(executor.jobs - before)
        assert info.etag == hashlib.md5(data).hexdigest()
        assert await read_all(layer, "bkt", f"obj{blocks}") == data
    assert counts[1] - counts[0] == 16 * 2, counts


@pytest.mark.asyncio
async def test_batched_local_writes_keep_per_drive_errors_and_latency(tmp_path: Path) -> None:
    drives = [await LocalDrive.open(str(tmp_path / f"d{i}")) for i in range(3)]
    seen: list[tuple[str, str]] = []
    for drive in drives:
        drive.observers.append(lambda op, _s, error: seen.append((op, error)))
    writers = [await d.create_shard(uuid.uuid4().hex) for d in drives]
    assert all(isinstance(w, LocalShardWriter) and w.batchable for w in writers)
    chunk = payload(1000, seed=5)
    broken = writers[1]
    assert isinstance(broken, LocalShardWriter)
    os.close(broken._fd)  # type: ignore[arg-type]  # noqa: SLF001 - a failing disk
    errors = await write_local_shards(
        [(w, memoryview(chunk)) for w in writers if isinstance(w, LocalShardWriter)]
    )
    assert errors[0] is None and errors[2] is None
    assert errors[1] is not None and "write_shard" in str(errors[1])
    writes = [error for op, error in seen if op == "write_shard"]
    assert len(writes) == 3 and writes[0] == writes[2] == "" and writes[1] != ""
    broken._fd = None  # noqa: SLF001 - already closed above
    for writer in (writers[0], writers[2]):
        await writer.commit()
        path = Path(writer._path)  # type: ignore[attr-defined]  # noqa: SLF001
        assert await asyncio.to_thread(path.read_bytes) == bitrot.frame(chunk)
