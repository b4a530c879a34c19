"""The scanner aborts multipart uploads left unfinished for longer than the configured age."""

from __future__ import annotations

import os
import time

import pytest

from heal.object import ObjectHealer
from heal.pace import Speed
from heal.scanner import Scanner
from heal.uploads import remove_stale_uploads
from storage.testing import FaultyDrive
from tests.heal.test_object_heal import Cluster, root


def staged(drive: FaultyDrive, bucket: str = "bkt") -> list[str]:
    """The uploads staged on a drive for ``bucket``."""
    folder = os.path.join(root(drive), ".minigrid.sys", "multipart", bucket)
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


@pytest.mark.asyncio
async def test_only_uploads_older_than_the_age_are_aborted(cluster: Cluster) -> None:
    layer, drives = cluster
    old = await layer.create_multipart("bkt", "old")
    await layer.upload_part("bkt", "old", old, 1, b"part of an upload nobody finished")
    cutoff = time.time_ns()
    fresh = await layer.create_multipart("bkt", "fresh")
    assert all(staged(drive) == sorted([old, fresh]) for drive in drives)
    # As the scanner would see it an hour from the cutoff, with an age of one hour.
    removed = await remove_stale_uploads(
        layer, layer.sets, 3600, lambda drive: True, now_ns=cutoff + 3600 * 10**9
    )
    assert removed == 1
    assert all(staged(drive) == [fresh] for drive in drives)
    assert [r.upload_id for r in await layer.list_multipart_uploads("bkt")] == [fresh]
    # A node that does not clean this set (another holds its first online drive) leaves it.
    later = cutoff + 10 * 3600 * 10**9
    assert await remove_stale_uploads(layer, layer.sets, 1, lambda d: False, now_ns=later) == 0
    assert all(staged(drive) == [fresh] for drive in drives)


@pytest.mark.asyncio
async def test_a_scanner_cycle_aborts_stale_uploads(cluster: Cluster) -> None:
    layer, drives = cluster
    upload = await layer.create_multipart("bkt", "left-behind")
    await layer.upload_part("bkt", "left-behind", upload, 1, b"x" * 1000)
    keep = Scanner(layer, ObjectHealer(layer), lambda d: True, speed=Speed("fastest"))
    assert (await keep.cycle()).stale_uploads == 0  # no age configured: uploads stay
    assert all(staged(drive) == [upload] for drive in drives)
    scanner = Scanner(
        layer, ObjectHealer(layer), lambda d: True, speed=Speed("fastest"), stale_upload_age=1e-9
    )
    stats = await scanner.cycle()
    assert stats.stale_uploads == 1
    assert all(staged(drive) == [] for drive in drives)
    assert scanner.status()["last"]["stale_uploads"] == 1
