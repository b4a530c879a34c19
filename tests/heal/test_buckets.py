"""Bucket healing never brings a deleted bucket back, and fills drives that lack one."""

from __future__ import annotations

import pytest

from heal.buckets import BucketHealer
from tests.heal.test_object_heal import Cluster


async def holders(cluster: Cluster, bucket: str) -> list[int]:
    _, drives = cluster
    return [p for p, d in enumerate(drives) if bucket in {v.name for v in await d.list_volumes()}]


@pytest.mark.asyncio
async def test_a_drive_that_missed_a_create_gets_the_bucket_once_it_settled(
    cluster: Cluster,
) -> None:
    layer, drives = cluster
    drives[5].offline = True
    await layer.make_bucket("late")
    drives[5].offline = False
    assert 5 not in await holders(cluster, "late")
    patient = BucketHealer(settle=3600)
    assert await patient.heal(layer.sets[0]) == 0  # seen lacking once: not yet
    assert await BucketHealer(settle=0).heal(layer.sets[0]) == 1
    assert await holders(cluster, "late") == list(range(8))


@pytest.mark.asyncio
async def test_a_drive_being_refilled_gets_its_buckets_at_once(cluster: Cluster) -> None:
    layer, drives = cluster
    await drives[2].delete_volume("bkt", force=True)  # a replaced, empty drive
    healer = BucketHealer(settle=3600)
    assert await healer.heal(layer.sets[0], immediate={2}) == 1
    assert 2 in await holders(cluster, "bkt")


@pytest.mark.asyncio
async def test_a_bucket_being_deleted_is_never_brought_back(cluster: Cluster) -> None:
    """Half the drives already dropped it: below a write quorum, it is not spread again."""
    layer, drives = cluster
    await layer.make_bucket("going")
    for drive in drives[:4]:
        await drive.delete_volume("going")
    healer = BucketHealer(settle=0)
    assert await healer.heal(layer.sets[0], immediate=range(8)) == 0
    assert await holders(cluster, "going") == [4, 5, 6, 7]


@pytest.mark.asyncio
async def test_a_bucket_deleted_between_two_passes_is_not_made(cluster: Cluster) -> None:
    layer, drives = cluster
    await layer.make_bucket("brief")
    await drives[7].delete_volume("brief")
    healer = BucketHealer(settle=0)
    await layer.delete_bucket("brief")  # the rest of the delete lands before the heal looks
    assert await healer.heal(layer.sets[0]) == 0
    assert await holders(cluster, "brief") == []
