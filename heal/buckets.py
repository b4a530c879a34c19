"""Healing buckets: make a bucket's volume on the drives of a set that lack it.

A bucket is a volume on every drive. A drive that was replaced, or was offline when the bucket
was made, lacks the volume; objects cannot be healed onto it until it has one. Only buckets a
read quorum of the set's drives hold are made (a minority volume may be a bucket being
deleted).
"""

from __future__ import annotations

import asyncio

from heal.walk import set_buckets
from storage.erasure_set import ErasureSet
from storage.errors import StorageError


async def heal_buckets(eset: ErasureSet) -> int:
    """Make every quorum bucket on the set's online drives that lack it; how many were made."""
    buckets = await set_buckets(eset)
    results = await eset.fan_out(lambda drive: drive.list_volumes())
    made = 0
    for position, held in enumerate(results):
        if isinstance(held, StorageError):
            continue
        names = {volume.name for volume in held}
        missing = [b for b in buckets if b not in names]
        drive = eset.drives[position]
        outcomes = await asyncio.gather(
            *(drive.make_volume(bucket) for bucket in missing), return_exceptions=True
        )
        made += sum(1 for o in outcomes if o is None)
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, StorageError):
                raise outcome  # VolumeExists (made meanwhile) and offline drives are fine
    return made
