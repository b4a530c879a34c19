"""Healing one object: each kind of damage, and the cases the healer must never make worse."""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest

from heal.object import DriveState, ObjectHealer, Outcome
from storage.local import LocalDrive
from storage.names import object_location
from storage.objects import ObjectLayer
from storage.testing import MIB, FaultyDrive, flip_byte, payload, read_all, shard_files

Cluster = tuple[ObjectLayer, list[FaultyDrive]]
OK, MISSING, CORRUPT = DriveState.OK, DriveState.MISSING, DriveState.CORRUPT


def root(drive: FaultyDrive) -> str:
    inner = drive.inner
    assert isinstance(inner, LocalDrive)
    return inner.root


def object_dir(drive: FaultyDrive, key: str) -> str:
    rel_dir, _ = object_location(key)
    return os.path.join(root(drive), "bkt", rel_dir)


def remove_copy(drive: FaultyDrive, key: str) -> None:
    shutil.rmtree(object_dir(drive, key))


def snapshot(drives: list[FaultyDrive]) -> dict[str, bytes]:
    files = {}
    for drive in drives:
        for folder, _dirs, names in os.walk(root(drive)):
            if ".minigrid.sys" in folder:
                continue
            for name in names:
                path = os.path.join(folder, name)
                with open(path, "rb") as handle:
                    files[path] = handle.read()
    return files


async def read_without(layer: ObjectLayer, drives: list[FaultyDrive], off: list[int]) -> bytes:
    """Read the object with some drives offline, so the others must carry it."""
    for position in off:
        drives[position].offline = True
    try:
        return await read_all(layer, "bkt", "obj")
    finally:
        for position in off:
            drives[position].offline = False


@pytest.mark.asyncio
async def test_a_healthy_object_is_left_alone(cluster: Cluster) -> None:
    layer, drives = cluster
    await layer.put_object("bkt", "obj", payload(2 * MIB + 3, seed=1))
    before = snapshot(drives)
    result = await ObjectHealer(layer).heal("bkt", "obj", deep=True)
    assert result.outcome is Outcome.OK
    assert result.before == result.after == [OK] * 8
    assert snapshot(drives) == before


@pytest.mark.asyncio
@pytest.mark.parametrize("size", [3 * MIB + 11, 5000], ids=["streamed", "inline"])
async def test_missing_copies_are_rebuilt_and_carry_reads(cluster: Cluster, size: int) -> None:
    layer, drives = cluster
    data = payload(size, seed=2)
    await layer.put_object("bkt", "obj", data)
    for position in (1, 6):
        remove_copy(drives[position], "obj")
    result = await ObjectHealer(layer).heal("bkt", "obj")
    assert result.outcome is Outcome.HEALED
    assert [result.before[p] for p in (1, 6)] == [MISSING, MISSING]
    assert result.after == [OK] * 8
    assert result.healed_drives == [1, 6]
    assert result.bytes_written > 0
    # The healed drives and two others must now be enough: four drives offline.
    assert await read_without(layer, drives, [0, 2, 3, 4]) == data
    again = await ObjectHealer(layer).heal("bkt", "obj", deep=True)
    assert again.outcome is Outcome.OK


@pytest.mark.asyncio
async def test_a_corrupt_shard_is_found_by_deep_mode_only_and_rewritten(cluster: Cluster) -> None:
    layer, drives = cluster
    data = payload(2 * MIB + 100, seed=3)
    await layer.put_object("bkt", "obj", data)
    [shard] = shard_files(root(drives[5]))
    flip_byte(shard, 100)
    normal = await ObjectHealer(layer).heal("bkt", "obj")
    assert normal.outcome is Outcome.OK  # same size: only a deep check can tell
    deep = await ObjectHealer(layer).heal("bkt", "obj", deep=True)
    assert deep.outcome is Outcome.HEALED
    assert deep.before[5] is CORRUPT and deep.after[5] is OK
    await drives[5].verify_shard(
        "bkt", "obj", (await drives[5].read_metadata("bkt", "obj")).data_dir,
        chunk_size=MIB // 4, shard_size=(2 * MIB + 100 + 3) // 4, deep=True,
    )  # fmt: skip
    assert shard_files(root(drives[5])) == [shard]  # rewritten in place, nothing left over
    assert await read_without(layer, drives, [0, 1, 2, 3]) == data


@pytest.mark.asyncio
async def test_an_outdated_copy_is_brought_to_the_agreed_version(cluster: Cluster) -> None:
    layer, drives = cluster
    await layer.put_object("bkt", "obj", payload(MIB + 1, seed=4))
    drives[2].offline = True  # misses the overwrite
    new = payload(2 * MIB + 5, seed=5)
    await layer.put_object("bkt", "obj", new)
    drives[2].offline = False
    result = await ObjectHealer(layer).heal("bkt", "obj")
    assert result.before[2] is DriveState.OUTDATED and result.after[2] is OK
    assert len(shard_files(root(drives[2]))) == 1  # the old version's data is gone
    meta = await drives[2].read_metadata("bkt", "obj")
    assert meta.etag == hashlib.md5(new).hexdigest()


@pytest.mark.asyncio
async def test_offline_drives_are_left_for_later(cluster: Cluster) -> None:
    layer, drives = cluster
    await layer.put_object("bkt", "obj", payload(MIB + 2, seed=6))
    remove_copy(drives[3], "obj")
    drives[7].offline = True
    result = await ObjectHealer(layer).heal("bkt", "obj")
    assert result.outcome is Outcome.HEALED
    assert result.before[7] is result.after[7] is DriveState.OFFLINE
    assert result.after[3] is OK


@pytest.mark.asyncio
async def test_dry_run_writes_nothing(cluster: Cluster) -> None:
    layer, drives = cluster
    await layer.put_object("bkt", "obj", payload(MIB + 3, seed=7))
    remove_copy(drives[0], "obj")
    before = snapshot(drives)
    result = await ObjectHealer(layer).heal("bkt", "obj", dry_run=True)
    assert result.outcome is Outcome.WOULD_HEAL and result.after[0] is MISSING
    assert snapshot(drives) == before


@pytest.mark.asyncio
async def test_fewer_than_k_corrupt_shards_is_unrecoverable_and_untouched(cluster: Cluster) -> None:
    layer, drives = cluster
    await layer.put_object("bkt", "obj", payload(MIB + 4, seed=8))
    for position in range(5):
        [shard] = shard_files(root(drives[position]))
        flip_byte(shard, 50)
    before = snapshot(drives)
    result = await ObjectHealer(layer).heal("bkt", "obj", deep=True, remove_dangling=True)
    assert result.outcome is Outcome.UNRECOVERABLE
    assert "nothing was changed" in result.detail
    assert snapshot(drives) == before


@pytest.mark.asyncio
async def test_dangling_objects_are_reported_and_deleted_only_on_request(cluster: Cluster) -> None:
    layer, drives = cluster
    await layer.put_object("bkt", "obj", payload(MIB + 5, seed=9))
    for position in range(5):  # only 3 copies left, k is 4: no read quorum can ever form
        remove_copy(drives[position], "obj")
    report = await ObjectHealer(layer).heal("bkt", "obj")
    assert report.outcome is Outcome.DANGLING
    assert len(shard_files(root(drives[7]))) == 1
    removed = await ObjectHealer(layer).heal("bkt", "obj", remove_dangling=True)
    assert removed.outcome is Outcome.DELETED
    assert removed.after == [MISSING] * 8
    assert all(shard_files(root(drive)) == [] for drive in drives)
    gone = await ObjectHealer(layer).heal("bkt", "obj")
    assert gone.outcome is Outcome.NOT_FOUND


@pytest.mark.asyncio
async def test_too_few_copies_with_a_drive_offline_is_skipped_not_called_dangling(
    cluster: Cluster,
) -> None:
    layer, drives = cluster
    await layer.put_object("bkt", "obj", payload(MIB + 6, seed=10))
    for position in range(4):
        remove_copy(drives[position], "obj")
    drives[4].offline = True  # it may hold the fourth copy: we cannot know
    result = await ObjectHealer(layer).heal("bkt", "obj", remove_dangling=True)
    assert result.outcome is Outcome.SKIPPED
    assert len(shard_files(root(drives[5]))) == 1


@pytest.mark.asyncio
async def test_the_unsafe_mode_heals_the_same_but_on_the_event_loop(cluster: Cluster) -> None:
    import threading

    from heal.cpu import CpuPolicy

    layer, drives = cluster
    data = payload(5 * MIB + 3, seed=11)
    await layer.put_object("bkt", "obj", data)
    remove_copy(drives[4], "obj")
    threads: list[int] = []
    cpu = CpuPolicy(inline=True, slice_bytes=2 * MIB)
    healer = ObjectHealer(layer, cpu=cpu)
    encode = healer.encode_blocks

    def spy(*args: object) -> object:
        threads.append(threading.get_ident())  # where the erasure work really runs
        return encode(*args)  # type: ignore[arg-type]

    healer.encode_blocks = spy  # type: ignore[method-assign]
    result = await healer.heal("bkt", "obj")
    assert result.outcome is Outcome.HEALED
    # Six blocks in slices of two MiB: three calls, each on the loop's own thread.
    assert threads == [threading.get_ident()] * 3
    assert await read_without(layer, drives, [0, 1, 2, 3]) == data
    assert CpuPolicy().slice_bytes == 0 and not CpuPolicy().inline


def part_files(drive: FaultyDrive, key: str) -> list[str]:
    """The shard files of a multipart object on one drive (``part.<n>``), by name."""
    found = []
    for folder, _dirs, names in os.walk(object_dir(drive, key)):
        found += [os.path.join(folder, name) for name in names if name.startswith("part.")]
    return sorted(found, key=os.path.basename)


async def put_multipart(layer: ObjectLayer, key: str, sizes: list[int]) -> bytes:
    """A multipart object of parts of ``sizes`` bytes (the layer's minimum part size is lowered
    so the test stays small); returns its bytes."""
    layer.min_part_size = 0
    upload = await layer.create_multipart("bkt", key)
    data = [payload(size, seed=20 + n) for n, size in enumerate(sizes)]
    done = []
    for number, chunk in enumerate(data, start=1):
        part = await layer.upload_part("bkt", key, upload, number, chunk, size=len(chunk))
        done.append((number, part.etag))
    await layer.complete_multipart("bkt", key, upload, done)
    return b"".join(data)


@pytest.mark.asyncio
async def test_a_multipart_object_has_every_part_rebuilt(cluster: Cluster) -> None:
    layer, drives = cluster
    whole = await put_multipart(layer, "obj", [MIB + 5, 2 * MIB, 700, 0, 3])
    info = await layer.head_object("bkt", "obj")
    assert len(info.parts) == 5 and info.etag.endswith("-5")
    # One drive loses its copy, another has a bit flipped in the third part's shard.
    remove_copy(drives[2], "obj")
    part_three = [f for f in part_files(drives[5], "obj") if f.endswith("part.3")]
    assert len(part_three) == 1
    flip_byte(part_three[0], -1)
    shallow = await ObjectHealer(layer).heal("bkt", "obj")
    assert shallow.before[2] is MISSING
    result = await ObjectHealer(layer).heal("bkt", "obj", deep=True)
    assert result.outcome is Outcome.HEALED
    assert result.before[5] is CORRUPT
    assert result.after == [OK] * 8
    for position in (2, 5):
        names = [os.path.basename(f) for f in part_files(drives[position], "obj")]
        assert names == [f"part.{n}" for n in range(1, 6)], names
    # The healed drives now carry reads on their own: four of the eight are enough.
    assert await read_without(layer, drives, [0, 1, 3, 4]) == whole
    again = await ObjectHealer(layer).heal("bkt", "obj", deep=True)
    assert again.outcome is Outcome.OK


@pytest.mark.asyncio
async def test_an_outdated_copy_with_a_later_clock_is_still_healed(cluster: Cluster) -> None:
    """A node whose wall clock jumped ahead wrote the older copy with a later time: the heal
    goes by what a quorum agrees on, not by timestamps, and replaces it."""
    import dataclasses

    layer, drives = cluster
    await layer.put_object("bkt", "obj", payload(MIB + 1, seed=12))
    drives[2].offline = True
    new = payload(MIB + 2, seed=13)
    await layer.put_object("bkt", "obj", new)
    drives[2].offline = False
    stale = await drives[2].read_metadata("bkt", "obj")
    ahead = dataclasses.replace(stale, mod_time_ns=stale.mod_time_ns + 3600 * 10**9)
    await drives[2].write_metadata("bkt", "obj", ahead)
    result = await ObjectHealer(layer).heal("bkt", "obj")
    assert result.before[2] is DriveState.OUTDATED and result.after[2] is OK
    assert (await drives[2].read_metadata("bkt", "obj")).etag == hashlib.md5(new).hexdigest()
