"""MRF, the scanner and drive replacement, in one process over local drives."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import pytest

from heal.drives import TRACKER, DriveHealer, Tracker
from heal.mrf import Mrf
from heal.object import ObjectHealer
from heal.pace import Speed
from heal.scanner import Scanner, name_hash
from storage.info import HealReport
from storage.local import LocalDrive
from storage.testing import (
    MIB,
    FaultyDrive,
    flip_byte,
    payload,
    read_all,
    shard_files,
    wipe_drive,
)
from tests.conftest import eventually
from tests.heal.test_object_heal import Cluster, read_without, remove_copy, root


@contextlib.asynccontextmanager
async def running(work: Coroutine[Any, Any, None]) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(work)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def local(drive: FaultyDrive) -> LocalDrive:
    inner = drive.inner
    assert isinstance(inner, LocalDrive)
    return inner


def exists(path: str) -> bool:
    return os.path.exists(path)


def write_json(path: str, value: dict[str, Any]) -> None:
    with open(path, "w") as handle:
        json.dump(value, handle)


async def holds(drive: FaultyDrive, key: str) -> bool:
    try:
        await drive.read_metadata("bkt", key)
    except Exception:
        return False
    return True


@pytest.mark.asyncio
async def test_mrf_heals_a_put_that_missed_a_drive_once_it_is_back(cluster: Cluster) -> None:
    layer, drives = cluster
    mrf = Mrf(ObjectHealer(layer), delay=0.05, speed=Speed("fastest"))
    layer.heal_hook = mrf.add
    drives[3].offline = True
    data = payload(MIB + 7, seed=1)
    async with running(mrf.run()):
        await layer.put_object("bkt", "obj", data)
        assert mrf.stats.reported == 1
        await eventually(lambda: mrf.parked == 1, what="parked while the drive is offline")
        assert not await holds(drives[3], "obj")
        drives[3].offline = False
        mrf.resume()  # the node calls this when a peer comes back
        await eventually(lambda: mrf.stats.healed == 1, what="healed")
    assert await holds(drives[3], "obj")
    assert await read_without(layer, drives, [0, 1, 2, 4]) == data


@pytest.mark.asyncio
async def test_a_read_that_finds_a_corrupt_shard_queues_it_and_mrf_heals_it(
    cluster: Cluster,
) -> None:
    layer, drives = cluster
    mrf = Mrf(ObjectHealer(layer), delay=0.0, speed=Speed("fastest"))
    layer.heal_hook = mrf.add
    data = payload(2 * MIB, seed=2)
    await layer.put_object("bkt", "obj", data)
    meta = await drives[0].read_metadata("bkt", "obj")
    data_positions = [p for p in range(8) if meta.erasure.distribution[p] < 4]
    [shard] = shard_files(root(drives[data_positions[0]]))
    flip_byte(shard, 40)
    async with running(mrf.run()):
        assert await read_all(layer, "bkt", "obj") == data  # read around the corrupt shard
        await eventually(lambda: mrf.stats.healed == 1, what="healed after the read")
    healed = await ObjectHealer(layer).heal("bkt", "obj", deep=True)
    assert healed.outcome.value == "ok"


@pytest.mark.asyncio
async def test_mrf_is_bounded_and_merges_reports_of_one_object() -> None:
    mrf = Mrf(ObjectHealer.__new__(ObjectHealer), capacity=2)
    for key in ("a", "b", "a", "c", "d"):
        mrf.add(HealReport("bkt", key, 0, 1, "/d1", "missing"))
    assert len(mrf) == 2
    assert mrf.stats.reported == 5
    assert mrf.stats.dropped == 2  # c and d: left to the scanner


@pytest.mark.asyncio
async def test_a_deep_scan_finds_and_heals_every_corrupt_shard(cluster: Cluster) -> None:
    layer, drives = cluster
    keys = [f"obj{n}" for n in range(10)]
    for n, key in enumerate(keys):
        await layer.put_object("bkt", key, payload(MIB + n, seed=n))
    for n, key in enumerate(keys):  # one corrupt shard per object, on varied drives
        drive = drives[n % 8]
        meta = await drive.read_metadata("bkt", key)
        [shard] = [f for f in shard_files(root(drive)) if meta.data_dir in f]
        flip_byte(shard, 17)
    scanner = Scanner(layer, ObjectHealer(layer), lambda d: True, speed=Speed("fastest"))
    normal = await scanner.cycle()
    assert normal.healed == 0  # a normal check only looks at sizes
    scanner.deep = True
    stats = await scanner.cycle()
    assert (stats.scanned, stats.checked, stats.healed) == (10, 10, 10)
    assert scanner.usage() == {"bkt": {"objects": 10, "bytes": sum(MIB + n for n in range(10))}}
    again = await scanner.cycle()
    assert again.healed == 0


@pytest.mark.asyncio
async def test_a_normal_cycle_checks_its_share_and_only_this_nodes_objects(
    cluster: Cluster,
) -> None:
    layer, drives = cluster
    keys = [f"k{n}" for n in range(40)]
    for key in keys:
        await layer.put_object("bkt", key, b"x" * 100)
    mine = set(drives[:4])  # this "node" holds drives 0-3
    scanner = Scanner(layer, ObjectHealer(layer), lambda d: d in mine, share=4)
    stats = await scanner.cycle()
    share = [k for k in keys if name_hash("bkt", k) % 4 == 0]
    assert stats.scanned == 40
    assert 0 < stats.checked < len(share)  # its share, minus the objects other nodes check
    other = Scanner(layer, ObjectHealer(layer), lambda d: d not in mine, share=4)
    assert stats.checked + (await other.cycle()).checked == len(share)


@pytest.mark.asyncio
async def test_a_wiped_drive_is_reformatted_and_its_set_healed_onto_it(cluster: Cluster) -> None:
    layer, drives = cluster
    objects = {f"o{n}": payload(MIB // 2 + n * 1000, seed=n) for n in range(6)}
    for key, data in objects.items():
        await layer.put_object("bkt", key, data)
    fmt = await local(drives[2]).read_format()
    path = local(drives[2]).root
    healer = DriveHealer(
        layer, ObjectHealer(layer), {path: local(drives[2])}, {path: fmt},
        check_every=0.05, speed=Speed("fastest"),
    )  # fmt: skip
    wipe_drive(path)
    async with running(healer.run()):
        await eventually(lambda: healer.trackers.get(path) is not None, what="noticed")
        await eventually(lambda: healer.trackers[path].finished, what="drive healed")
    tracker = healer.trackers[path]
    assert tracker.objects_healed == 6 and tracker.objects_failed == 0
    assert (await local(drives[2]).read_format()).drive_id == fmt.drive_id
    assert not exists(local(drives[2]).system_path(TRACKER))
    assert not local(drives[2]).healing
    for key, data in objects.items():  # the healed drive is needed for every read now
        for drive in drives:
            drive.offline = drive not in (drives[2], drives[5], drives[6], drives[7])
        assert await read_all(layer, "bkt", key) == data


@pytest.mark.asyncio
async def test_a_drive_heal_resumes_from_its_tracker(cluster: Cluster) -> None:
    layer, drives = cluster
    keys = [f"o{n}" for n in range(8)]
    for key in keys:
        await layer.put_object("bkt", key, payload(4096 + len(key), seed=3))
    for key in keys:
        remove_copy(drives[1], key)
    drive = local(drives[1])
    fmt = await drive.read_format()
    # A heal that got as far as o3 before the node was killed.
    saved = Tracker(drive_id=fmt.drive_id, bucket="bkt", key="o3", objects_scanned=4,
                    objects_healed=4)  # fmt: skip
    write_json(drive.system_path(TRACKER), saved.to_dict())
    healer = DriveHealer(
        layer, ObjectHealer(layer), {drive.root: drive}, {drive.root: fmt},
        check_every=60, speed=Speed("fastest"),
    )  # fmt: skip
    release = drives[1].hold("rename_data")  # hold the first rewrite to look at the drive
    async with running(healer.run()):
        await eventually(lambda: drives[1].held["rename_data"] >= 1, what="resumed and healing")
        assert drive.healing and (await drive.disk_info()).healing
        assert healer.status()[drive.endpoint]["resumed_from"] == "bkt/o3"
        release.set()
        await eventually(lambda: healer.trackers[drive.root].finished, what="finished")
    assert not drive.healing
    tracker = healer.trackers[drive.root]
    # Only o4..o7 were healed by this run; the counters continue from the tracker's.
    assert (tracker.objects_scanned, tracker.objects_healed) == (8, 8)
    assert [await holds(drives[1], k) for k in keys] == [False] * 4 + [True] * 4


@pytest.mark.asyncio
async def test_a_heal_run_heals_a_prefix_and_counts_per_drive(cluster: Cluster) -> None:
    from heal.sequence import HealRun

    layer, drives = cluster
    for key in ("a/1", "a/2", "a/3", "b/1"):
        await layer.put_object("bkt", key, payload(70_000, seed=len(key)))
    remove_copy(drives[6], "a/2")
    remove_copy(drives[6], "b/1")
    dry = HealRun(layer, ObjectHealer(layer), bucket="bkt", prefix="a/", dry_run=True)
    assert [r.outcome.value async for r in dry.results()] == ["ok", "would-heal", "ok"]
    run = HealRun(layer, ObjectHealer(layer), bucket="bkt", prefix="a/", expected=3)
    results = [r async for r in run.results()]
    assert [(r.key, r.outcome.value) for r in results] == [
        ("a/1", "ok"), ("a/2", "healed"), ("a/3", "ok"),
    ]  # fmt: skip
    progress = run.progress.as_dict()
    assert (progress["scanned"], progress["healed"], progress["eta_s"]) == (3, 1, 0.0)
    endpoint = drives[6].endpoint
    assert progress["drives"][endpoint] == {"before": {"ok": 2, "missing": 1}, "after": {"ok": 3}}
    assert not await holds(drives[6], "b/1")  # outside the prefix: untouched
