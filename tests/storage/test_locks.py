"""Per-key read/write locks: readers share, a writer excludes, nobody is starved or stranded."""

from __future__ import annotations

import asyncio

import pytest

from storage.locks import KeyLocks
from tests.conftest import eventually

KEY = ("bkt", "obj")


@pytest.mark.asyncio
async def test_readers_share_a_key() -> None:
    locks = KeyLocks()
    async with locks.read(KEY), locks.read(KEY):
        assert locks.readers(KEY) == 2
    assert len(locks) == 0  # idle keys are dropped


@pytest.mark.asyncio
async def test_a_writer_excludes_readers_and_writers() -> None:
    locks = KeyLocks()
    order: list[str] = []

    async def reader() -> None:
        async with locks.read(KEY):
            order.append("read")

    async def writer() -> None:
        async with locks.write(KEY):
            order.append("write")

    async with locks.write(KEY):
        tasks = [asyncio.create_task(reader()), asyncio.create_task(writer())]
        await eventually(lambda: locks.waiters(KEY) == 2, what="both queued")
        assert order == []
    await asyncio.gather(*tasks)
    assert order == ["read", "write"]  # served in arrival order
    assert len(locks) == 0


@pytest.mark.asyncio
async def test_a_waiting_writer_is_not_starved_by_new_readers() -> None:
    locks = KeyLocks()
    order: list[str] = []

    async def take(kind: str) -> None:
        lock = locks.write(KEY) if kind == "write" else locks.read(KEY)
        async with lock:
            order.append(kind)

    async with locks.read(KEY):
        writer = asyncio.create_task(take("write"))
        await eventually(lambda: locks.waiters(KEY) == 1, what="writer queued")
        late_reader = asyncio.create_task(take("read"))
        await eventually(lambda: locks.waiters(KEY) == 2, what="reader queued behind")
    await asyncio.gather(writer, late_reader)
    assert order == ["write", "read"]


@pytest.mark.asyncio
async def test_cancelled_waiters_leave_nothing_locked() -> None:
    locks = KeyLocks()
    inside = asyncio.Event()
    leave = asyncio.Event()

    async def writer() -> None:
        async with locks.write(KEY):
            raise AssertionError("the writer must never get the lock")

    async def reader() -> None:
        async with locks.read(KEY):
            inside.set()
            await leave.wait()

    async with locks.read(KEY):
        blocked_writer = asyncio.create_task(writer())
        await eventually(lambda: locks.waiters(KEY) == 1, what="writer queued")
        late_reader = asyncio.create_task(reader())
        await eventually(lambda: locks.waiters(KEY) == 2, what="reader queued")
        blocked_writer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await blocked_writer
        # The reader queued behind the cancelled writer gets in at once.
        async with asyncio.timeout(5):
            await inside.wait()
        assert locks.readers(KEY) == 2
    leave.set()
    await late_reader
    assert len(locks) == 0
