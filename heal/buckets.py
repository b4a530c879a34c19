"""Healing buckets: make a bucket's volume on the drives of a set that lack it.

A bucket is a volume on every drive. A drive that was replaced, or was offline when the bucket
was made, lacks the volume; objects cannot be healed onto it until it has one.

There is no distributed lock between a heal and a DeleteBucket on another node, and a delete
looks, for a moment, exactly like a drive that lacks the bucket: the volume is gone from some
drives and not yet from the others. So a missing volume is made only when

1. a write quorum of the set's drives hold the bucket, and
2. the same drive was seen lacking it at least ``settle`` seconds earlier (a delete finishes in
   far less), unless the drive is one this node is refilling right now (a replaced drive), and
3. a write quorum still holds it when checked again, just before the volume is made.

A bucket held by fewer than a write quorum (a create that failed, a delete under way) is never
spread. What is left is a race in the last step: a delete that starts between the final check
and the make leaves one stray volume on one drive, which no listing shows (it has no quorum).
"""

from __future__ import annotations

import time
from collections.abc import Collection

from storage.drive import Drive, VolumeInfo
from storage.erasure_set import ErasureSet
from storage.errors import StorageError, VolumeExists

#: How long a drive must be seen lacking a bucket before the scanner makes it there.
SETTLE = 5.0


class BucketHealer:
    """Makes missing bucket volumes (see the module docstring); remembers what it saw."""

    def __init__(self, settle: float = SETTLE) -> None:
        self.settle = settle
        self._lacking: dict[tuple[int, str, int], float] = {}  # (set, bucket, position): since

    async def heal(self, eset: ErasureSet, *, immediate: Collection[int] = ()) -> int:
        """Make the volumes the set's drives lack; how many were made. ``immediate``: positions
        of drives this node is refilling, which need not wait ``settle``."""
        now = time.monotonic()
        results = await eset.fan_out(lambda drive: drive.list_volumes())
        held = {
            p: {v.name for v in r} for p, r in enumerate(results) if not isinstance(r, StorageError)
        }
        seen: set[tuple[int, str, int]] = set()
        made = 0
        for bucket in sorted(set().union(*held.values())):
            holders = [p for p, names in held.items() if bucket in names]
            if len(holders) < eset.write_quorum:
                continue
            for position in (p for p, names in held.items() if bucket not in names):
                key = (eset.index, bucket, position)
                seen.add(key)
                since = self._lacking.setdefault(key, now)
                if position not in immediate and now - since < self.settle:
                    continue
                if await _still_held(eset, bucket):
                    made += await _make(eset.drives[position], bucket)
                    self._lacking.pop(key, None)
        for key in [k for k in self._lacking if k[0] == eset.index and k not in seen]:
            del self._lacking[key]  # no longer lacking (made, or the bucket is gone)
        return made


async def _still_held(eset: ErasureSet, bucket: str) -> bool:
    results = await eset.fan_out(lambda drive: drive.stat_volume(bucket))
    return sum(1 for r in results if isinstance(r, VolumeInfo)) >= eset.write_quorum


async def _make(drive: Drive, bucket: str) -> int:
    try:
        await drive.make_volume(bucket)
    except VolumeExists:
        return 0
    except StorageError:
        return 0  # offline or failing: the next pass tries again
    return 1


__all__ = ["SETTLE", "BucketHealer"]
