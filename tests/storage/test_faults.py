"""Faults: wiped, corrupt, slow, failing and offline drives, and writes below quorum."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from storage_helpers import MIB, flip_byte, hex_id, payload, read_all, shard_files

from storage.erasure import Erasure
from storage.errors import ObjectNotFound, StorageError, WriteQuorum
from storage.local import LocalDrive, iter_upload_ids
from storage.objects import HealReport, ObjectLayer
from storage.testing import FaultyDrive, local_layer
from tests.conftest import eventually

Set = tuple[ObjectLayer, list[FaultyDrive]]


def local(drive: FaultyDrive) -> LocalDrive:
    inner = drive.inner
    assert isinstance(inner, LocalDrive)
    return inner


async def positions_by_shard(layer: ObjectLayer, drives: list[FaultyDrive], key: str) -> list[int]:
    """Drive positions ordered by the shard index they hold (data shards first)."""
    meta = await local(drives[0]).read_metadata("bkt", key)
    dist = meta.erasure.distribution
    return sorted(range(len(drives)), key=lambda pos: dist[pos])


def wipe(drive: FaultyDrive) -> None:
    root = local(drive).root
    for name in os.listdir(root):
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        if os.path.exists(os.path.join(root, name)):
            os.unlink(os.path.join(root, name))


@pytest.mark.asyncio
async def test_get_with_m_drives_wiped(faulty_set: Set, heal_reports: list[HealReport]) -> None:
    layer, drives = faulty_set
    data = payload(3 * MIB + 777, seed=10)
    await layer.put_object("bkt", "obj", data)
    data_positions = (await positions_by_shard(layer, drives, "obj"))[:4]
    for pos in data_positions:  # every data shard gone: parity must rebuild them
        wipe(drives[pos])
    assert await read_all(layer, "bkt", "obj") == data
    assert layer.stats.decodes > 0
    missing = {r.position for r in heal_reports if r.reason == "missing"}
    assert missing == set(data_positions)


@pytest.mark.asyncio
async def test_get_with_m_shards_corrupted(faulty_set: Set, heal_reports: list[HealReport]) -> None:
    layer, drives = faulty_set
    data = payload(2 * MIB + 5, seed=11)
    await layer.put_object("bkt", "obj", data)
    order = await positions_by_shard(layer, drives, "obj")
    damaged = [order[0], order[1], order[2], order[5]]  # three data shards and one parity
    for pos in damaged:
        (path,) = shard_files(local(drives[pos]).root)
        flip_byte(path, -10)  # in the last chunk
    assert await read_all(layer, "bkt", "obj") == data
    corrupt = {r.position for r in heal_reports if r.reason == "corrupt"}
    assert corrupt >= {order[0], order[1], order[2]}
    assert layer.stats.replacements >= 3
    # Corruption in the first chunk fails those streams at once; ranges still read.
    assert await read_all(layer, "bkt", "obj", 2 * MIB, 5) == data[2 * MIB :]


@pytest.mark.asyncio
async def test_slow_drive_fires_hedge(faulty_set: Set) -> None:
    layer, drives = faulty_set
    data = payload(3 * MIB, seed=12)
    await layer.put_object("bkt", "obj", data)
    slow = drives[(await positions_by_shard(layer, drives, "obj"))[0]]
    gate = asyncio.Event()
    slow.read_gate = gate  # this drive's shard reads stall until the gate opens
    try:
        async with asyncio.timeout(20):
            assert await read_all(layer, "bkt", "obj") == data
    finally:
        gate.set()
    assert slow.reads_waiting >= 1
    assert layer.stats.hedges >= 1


@pytest.mark.asyncio
async def test_offline_drives_are_skipped_without_calls(faulty_set: Set) -> None:
    layer, drives = faulty_set
    for drive in drives[:3]:
        drive.offline = True
        drive.calls.clear()
    data = payload(MIB + 3, seed=13)
    await layer.put_object("bkt", "obj", data)
    assert await read_all(layer, "bkt", "obj") == data
    await layer.list_objects("bkt")
    assert all(sum(d.calls.values()) == 0 for d in drives[:3])


@pytest.mark.asyncio
async def test_put_with_m_drives_failing(tmp_path: Path) -> None:
    reports: list[HealReport] = []
    layer, drives = await local_layer(
        str(tmp_path), 8, faulty=True, parity=3, heal_hook=reports.append
    )
    await layer.make_bucket("bkt")
    drives[1].offline = True  # offline from the start
    drives[4].fail_writes_after = 1  # fails while streaming
    drives[6].fail_rename = True  # fails at commit
    data = payload(3 * MIB + 1, seed=14)
    info = await layer.put_object("bkt", "obj", data)
    assert info.etag == hashlib.md5(data).hexdigest()
    assert {(r.position, r.reason) for r in reports} == {
        (1, "write-missed"),
        (4, "write-missed"),
        (6, "write-missed"),
    }
    assert await read_all(layer, "bkt", "obj") == data
    for pos in (4, 6):
        assert shard_files(local(drives[pos]).root) == []
        assert list(iter_upload_ids(local(drives[pos]))) == []


@pytest.mark.asyncio
async def test_put_below_write_quorum_fails_cleanly(
    faulty_set: Set, heal_reports: list[HealReport]
) -> None:
    layer, drives = faulty_set  # 4+4: write quorum is 5, so 4 failures are too many
    old = payload(2 * MIB, seed=15)
    await layer.put_object("bkt", "obj", old)
    old_etag = hashlib.md5(old).hexdigest()
    for drive in drives[4:]:
        drive.fail_rename = True  # the first four commit, then the rest fail
    # Hold one committing drive so a reader arrives while the commit is in progress: it must
    # wait for the commit (and see the rollback), never read the uncommitted version.
    release = drives[3].hold("rename_data")
    put = asyncio.create_task(layer.put_object("bkt", "obj", payload(3 * MIB, seed=16)))
    await eventually(lambda: drives[3].held["rename_data"] == 1, what="commit in progress")
    metadata_reads = sum(d.calls["read_metadata"] for d in drives)
    reader = asyncio.create_task(layer.head_object("bkt", "obj"))
    await eventually(lambda: layer.locks.waiters(("bkt", "obj")) == 1, what="reader queued")
    assert sum(d.calls["read_metadata"] for d in drives) == metadata_reads
    release.set()
    with pytest.raises(WriteQuorum, match="rolled back"):
        await put
    assert (await reader).etag == old_etag
    assert layer.stats.rollbacks == 1
    assert (await layer.head_object("bkt", "obj")).etag == old_etag
    assert await read_all(layer, "bkt", "obj") == old
    for drive in drives:
        assert len(shard_files(local(drive).root)) == 1  # only the old version's shard
        assert list(iter_upload_ids(local(drive))) == []
    # A new key below quorum leaves nothing behind at all.
    with pytest.raises(WriteQuorum):
        await layer.put_object("bkt", "fresh", payload(MIB + 1, seed=17))
    with pytest.raises(ObjectNotFound):
        await layer.head_object("bkt", "fresh")
    assert [o.key for o in (await layer.list_objects("bkt")).objects] == ["obj"]


@pytest.mark.asyncio
async def test_a_reader_waits_for_a_commit_that_reached_quorum(faulty_set: Set) -> None:
    """A commit that a quorum finished but one drive still holds: the reader waits for it."""
    layer, drives = faulty_set
    await layer.put_object("bkt", "obj", payload(MIB + 5, seed=21))
    new = payload(MIB + 7, seed=22)
    renamed = sum(d.calls["rename_data"] for d in drives[:7])
    release = drives[7].hold("rename_data")
    put = asyncio.create_task(layer.put_object("bkt", "obj", new))
    await eventually(lambda: drives[7].held["rename_data"] == 1, what="drive 7 commit held")
    await eventually(
        lambda: sum(d.calls["rename_data"] for d in drives[:7]) == renamed + 7,
        what="a quorum renamed",
    )
    reader = asyncio.create_task(layer.head_object("bkt", "obj"))
    await eventually(lambda: layer.locks.waiters(("bkt", "obj")) == 1, what="reader queued")
    assert not reader.done()
    release.set()
    info = await put
    assert (await reader).etag == info.etag == hashlib.md5(new).hexdigest()


@pytest.mark.asyncio
async def test_concurrent_reads_of_one_key_run_in_parallel(faulty_set: Set) -> None:
    layer, drives = faulty_set
    data = payload(MIB + 9, seed=23)
    await layer.put_object("bkt", "obj", data)
    releases = [drive.hold("read_metadata") for drive in drives]
    first = asyncio.create_task(read_all(layer, "bkt", "obj"))
    await eventually(lambda: all(d.held["read_metadata"] == 1 for d in drives), what="1st read")
    second = asyncio.create_task(read_all(layer, "bkt", "obj"))
    # Both readers hold the key's read lock at once: every drive has two reads waiting.
    await eventually(lambda: all(d.held["read_metadata"] == 2 for d in drives), what="2nd read")
    assert layer.locks.readers(("bkt", "obj")) == 2
    for release in releases:
        release.set()
    assert await first == await second == data


@pytest.mark.asyncio
async def test_put_fails_fast_when_too_many_drives_offline(faulty_set: Set) -> None:
    layer, drives = faulty_set
    for drive in drives[:4]:
        drive.offline = True

    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield b"x" * 65536

    with pytest.raises(WriteQuorum):
        await layer.put_object("bkt", "obj", endless())


@pytest.mark.asyncio
async def test_crash_mid_commit_never_tears_an_object(tmp_path: Path) -> None:
    """Three drives took a new version before the process died: reads return the old one."""
    layer, drives = await local_layer(str(tmp_path), 8)
    await layer.make_bucket("bkt")
    old = payload(MIB + 100, seed=18)
    await layer.put_object("bkt", "obj", old)
    meta = await drives[0].read_metadata("bkt", "obj")
    new = payload(MIB + 100, seed=19)
    erasure = Erasure(4, 4)
    new_meta = type(meta)(
        size=len(new),
        etag="new",
        mod_time_ns=meta.mod_time_ns + 1,
        data_dir=hex_id("crashed"),
        erasure=meta.erasure,
    )
    blocks = [erasure.encode(new[i : i + MIB]) for i in range(0, len(new), MIB)]
    for pos in range(3):
        index = meta.erasure.distribution[pos]
        writer = await drives[pos].create_shard(hex_id("dying"))
        for shards in blocks:
            await writer.write(shards[index])
        await writer.commit()
        await drives[pos].rename_data(
            hex_id("dying"), "bkt", "obj", new_meta.for_drive(index, None)
        )
    # Restart: reopen every drive (emptying the temporary areas) and read.
    reports: list[HealReport] = []
    reopened = [await LocalDrive.open(d.root) for d in drives]
    restarted = await ObjectLayer.open(reopened, 8, heal_hook=reports.append)
    assert await read_all(restarted, "bkt", "obj") == old
    assert {r.position for r in reports if r.reason == "outdated"} == {0, 1, 2}
    # Once five drives hold the new version, it wins, whole.
    for pos in range(3, 5):
        index = meta.erasure.distribution[pos]
        writer = await reopened[pos].create_shard(hex_id("late"))
        for shards in blocks:
            await writer.write(shards[index])
        await writer.commit()
        await reopened[pos].rename_data(
            hex_id("late"), "bkt", "obj", new_meta.for_drive(index, None)
        )
    assert await read_all(restarted, "bkt", "obj") == new


@pytest.mark.asyncio
async def test_read_fails_cleanly_beyond_parity(faulty_set: Set) -> None:
    layer, drives = faulty_set
    await layer.put_object("bkt", "obj", payload(MIB + 1, seed=20))
    for drive in drives[:5]:
        wipe(drive)
    with pytest.raises(StorageError):
        await read_all(layer, "bkt", "obj")
