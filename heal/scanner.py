"""The background scanner: walk the objects of this node's sets in cycles, check a share of
them, hand the damaged ones to the healer, and keep usage per bucket.

Every node runs one. It walks each erasure set that holds one of its drives, every bucket,
every object name any drive holds (:func:`heal.walk.walk_set`), so partial and dangling
objects are found too.

- **Who checks what.** All nodes walk, but each object is checked by exactly one of them: the
  node holding the first *online* drive in a rotation of the set that starts at a hash of the
  object's name. While a node is down, the next one takes its share over; nobody waits on it.
- **How much per cycle.** Each cycle checks the objects whose hash falls in that cycle's
  share (1/``share`` of them), so every object is checked once every ``share`` cycles; with
  ``deep`` every object is checked every cycle, every bitrot hash verified.
- **Pace.** After each object the dynamic sleeper sleeps in proportion to the work (the speed
  presets of :mod:`heal.pace`, changeable at run time), and before each check the scanner
  yields to foreground traffic. Hashing and erasure coding run in threads, so the loop is never
  held for more than a few milliseconds (unless the unsafe mode is on).
- **Usage.** Objects and bytes per bucket are counted from the listings the walk reads anyway.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import xxhash

from heal.buckets import BucketHealer
from heal.object import ObjectHealer, Outcome
from heal.pace import DynamicSleeper, Foreground, Speed, no_foreground
from heal.uploads import remove_stale_uploads
from heal.walk import set_buckets, walk_set
from storage.drive import Drive
from storage.erasure_set import ErasureSet
from storage.errors import StorageError
from storage.objects import ObjectLayer

log = logging.getLogger("heal.scanner")

SHARE = 16


def name_hash(bucket: str, key: str) -> int:
    return xxhash.xxh3_64_intdigest(f"{bucket}/{key}".encode(), 0x5CA7)


def checker(eset: ErasureSet, bucket: str, key: str) -> Drive | None:
    """The drive whose node checks this object: the first online one in the object's rotation."""
    count = len(eset.drives)
    start = name_hash(bucket, key) % count
    for step in range(count):
        drive = eset.drives[(start + step) % count]
        if drive.is_online():
            return drive
    return None


@dataclass
class BucketUsage:
    objects: int = 0
    bytes: int = 0


@dataclass
class CycleStats:
    """One cycle's progress; the admin API shows the current and the last complete one."""

    cycle: int
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    scanned: int = 0  # names walked
    checked: int = 0  # objects this node checked
    healed: int = 0
    failed: int = 0
    stale_uploads: int = 0  # unfinished multipart uploads aborted for their age
    position: str = ""  # bucket/key reached
    usage: dict[str, BucketUsage] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        elapsed = (self.finished or time.monotonic()) - self.started
        return {
            "cycle": self.cycle,
            "scanned": self.scanned,
            "checked": self.checked,
            "healed": self.healed,
            "failed": self.failed,
            "stale_uploads": self.stale_uploads,
            "position": self.position,
            "seconds": round(elapsed, 3),
            "objects_per_s": round(self.scanned / elapsed, 1) if elapsed > 0 else 0.0,
            "done": self.finished is not None,
        }


class Scanner:
    """Scans the sets that hold one of ``local`` drives, cycle after cycle."""

    def __init__(
        self,
        layer: ObjectLayer,
        healer: ObjectHealer,
        local: Callable[[Drive], bool],
        *,
        speed: Speed | None = None,
        deep: bool = False,
        share: int = SHARE,
        foreground: Foreground | None = None,
        pause_between_cycles: float = 1.0,
        stale_upload_age: float | None = None,
    ) -> None:
        self.layer = layer
        self.healer = healer
        self.is_local = local
        self.speed = speed or Speed("default")
        self.deep = deep
        self.share = share
        self.foreground = foreground or Foreground(no_foreground)
        self.pause_between_cycles = pause_between_cycles
        self.buckets = BucketHealer()
        #: Seconds after which an unfinished multipart upload is aborted (None: never).
        self.stale_upload_age = stale_upload_age
        self.current: CycleStats | None = None
        self.last: CycleStats | None = None
        self._cycles = 0

    def sets(self) -> list[ErasureSet]:
        """The sets this node scans: those holding at least one of its drives."""
        return [s for s in self.layer.sets if any(self.is_local(d) for d in s.drives)]

    def usage(self) -> dict[str, dict[str, int]]:
        """Objects and bytes per bucket, from the last complete cycle."""
        source = self.last or self.current
        if source is None:
            return {}
        return {name: dict(u.__dict__) for name, u in sorted(source.usage.items())}

    async def run(self) -> None:
        """Scan cycle after cycle until cancelled, resting ``pause_between_cycles`` between."""
        while True:
            await self.cycle()
            await asyncio.sleep(self.pause_between_cycles)

    async def cycle(self) -> CycleStats:
        """One pass over every object of this node's sets."""
        stats = self.current = CycleStats(self._cycles)
        self._cycles += 1
        sleeper = DynamicSleeper(self.speed)
        for eset in self.sets():
            try:
                await self.buckets.heal(eset)
                for bucket in await set_buckets(eset):
                    stats.usage.setdefault(bucket, BucketUsage())
                    await self._scan_bucket(eset, bucket, stats, sleeper)
            except StorageError as exc:
                # Too few drives answered to walk this set: nothing to check until they are back.
                log.debug("scanner: set %d skipped this cycle: %s", eset.index, exc)
        if self.stale_upload_age is not None:
            stats.stale_uploads = await remove_stale_uploads(
                self.layer, self.sets(), self.stale_upload_age, self.is_local
            )
        stats.finished = time.monotonic()
        self.last = stats
        return stats

    async def _scan_bucket(
        self, eset: ErasureSet, bucket: str, stats: CycleStats, sleeper: DynamicSleeper
    ) -> None:
        usage = stats.usage[bucket]
        async for info in walk_set(eset, bucket):
            stats.scanned += 1
            stats.position = f"{bucket}/{info.key}"
            usage.objects += 1
            usage.bytes += info.size
            if not self._mine(eset, bucket, info.key, stats.cycle):
                continue
            await self.foreground.wait_for_low_io()
            sleeper.start()
            stats.checked += 1
            try:
                result = await self.healer.heal(bucket, info.key, deep=self.deep)
            except StorageError as exc:
                log.debug("scanner: %s/%s: %s", bucket, info.key, exc)
                stats.failed += 1
            else:
                if result.outcome is Outcome.HEALED:
                    stats.healed += 1
                    log.info(
                        "scanner healed %s/%s: %s", bucket, info.key,
                        ", ".join(f"{result.endpoints[p]} {result.before[p].value}"
                                  for p in result.healed_drives),
                    )  # fmt: skip
                elif result.outcome in (Outcome.UNRECOVERABLE, Outcome.DANGLING):
                    stats.failed += 1
                    log.warning(
                        "scanner: %s/%s is %s: %s",
                        bucket, info.key, result.outcome.value, result.detail,
                    )  # fmt: skip
            await sleeper.pause()

    def _mine(self, eset: ErasureSet, bucket: str, key: str, cycle: int) -> bool:
        if not self.deep and name_hash(bucket, key) % self.share != cycle % self.share:
            return False
        drive = checker(eset, bucket, key)
        return drive is not None and self.is_local(drive)

    def status(self) -> dict[str, Any]:
        return {
            "speed": self.speed.preset,
            "deep": self.deep,
            "share": self.share,
            "current": self.current.as_dict() if self.current else None,
            "last": self.last.as_dict() if self.last else None,
            "usage": self.usage(),
        }
