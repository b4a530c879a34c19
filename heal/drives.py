"""Drive replacement: notice a local drive that came back empty, format it into its old place in
the set, and heal every object of its set onto it, with no manual command.

- **Noticing.** At start the node formats blank drives and hands them here; every
  ``check_every`` seconds (about 10) each local drive's format is read again, so a drive wiped
  or swapped while the node runs is noticed too. A blank drive gets the format the node planned
  for that slot, so it takes its old place in its set.
- **Healing.** The drive's set is walked bucket by bucket, object by object (every name any
  drive holds), and each object is healed; that rewrites this drive's copy and any other
  damage found on the way. Buckets are made on the drive first.
- **The tracker.** ``healing.json`` in the drive's system area records progress: objects and
  bytes healed, failed and skipped, and the bucket and key reached. It is saved at least every
  ``save_every`` seconds, so a node killed mid-heal resumes from there instead of starting
  over; it is removed when the heal completes. While it exists the drive reports ``healing``
  in DiskInfo, and ``admin info`` shows it.
- **Waiting for peers.** A heal needs a read quorum of the set's drives: until the peers are
  reachable (right after start, or during an outage) the heal waits and tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from heal.buckets import BucketHealer
from heal.object import DriveState, ObjectHealer, Outcome
from heal.pace import DynamicSleeper, Foreground, Speed, in_order, no_foreground
from heal.walk import set_buckets, walk_set
from storage.erasure_set import ErasureSet
from storage.errors import StorageError, UnformattedDrive
from storage.format import FormatInfo
from storage.local import LocalDrive
from storage.objects import ObjectLayer

log = logging.getLogger("heal.drives")

TRACKER = "healing.json"
CHECK_EVERY = 10.0
SAVE_EVERY = 2.0
RETRY_EVERY = 2.0
#: Tries per object while the drive being healed is skipped (slow, or briefly unreachable).
ATTEMPTS = 3
#: Objects healed at once onto one drive: enough to overlap the grid's round trips.
WORKERS = 4


@dataclass
class Tracker:
    """A drive heal's progress, as saved on the drive."""

    drive_id: str
    started: float = field(default_factory=time.time)  # wall clock: shown to people only
    updated: float = 0.0
    bucket: str = ""  # the bucket being healed
    key: str = ""  # the last key healed in it ("" before the first)
    objects_scanned: int = 0
    objects_healed: int = 0
    objects_failed: int = 0
    objects_skipped: int = 0
    bytes_healed: int = 0
    done_buckets: list[str] = field(default_factory=list)
    finished: bool = False
    resumes: int = 0  # how many times a restarted node picked this heal up again
    resumed_from: str = ""  # the bucket/key the last resume started after

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Tracker:
        fields = {name: raw[name] for name in cls.__dataclass_fields__ if name in raw}
        tracker = cls(**fields)
        if not isinstance(tracker.drive_id, str) or not isinstance(tracker.done_buckets, list):
            raise ValueError("malformed tracker")
        return tracker


def _load(path: str) -> Tracker | None:
    try:
        with open(path, "rb") as handle:
            return Tracker.from_dict(json.load(handle))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, OSError) as exc:
        log.warning("ignoring an unreadable heal tracker %s: %s", path, exc)
        return None


def _save(path: str, tracker: Tracker) -> None:
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(tracker.to_dict(), handle)
    os.replace(tmp, path)


class DriveHealer:
    """Watches this node's drives and heals the ones that come back empty."""

    def __init__(
        self,
        layer: ObjectLayer,
        healer: ObjectHealer,
        drives: Mapping[str, LocalDrive],
        formats: Mapping[str, FormatInfo],
        *,
        check_every: float = CHECK_EVERY,
        save_every: float = SAVE_EVERY,
        speed: Speed | None = None,
        foreground: Foreground | None = None,
        workers: int = WORKERS,
    ) -> None:
        self.layer = layer
        self.workers = workers
        self.healer = healer
        self.drives = dict(drives)
        self.formats = dict(formats)
        self.check_every = check_every
        self.save_every = save_every
        self.speed = speed or Speed("default")
        self.foreground = foreground or Foreground(no_foreground)
        self.trackers: dict[str, Tracker] = {}
        self.buckets = BucketHealer()
        self._healing: dict[str, asyncio.Task[None]] = {}

    def status(self) -> dict[str, Any]:
        """Each drive being healed (by endpoint), with its tracker."""
        return {
            self.drives[path].endpoint: t.to_dict()
            for path, t in self.trackers.items()
            if not t.finished
        }

    def healed(self) -> dict[str, Any]:
        """Each drive whose last heal (since this process started) finished, with its tracker:
        how a caller that polls learns of a heal too short to have seen running."""
        return {
            self.drives[path].endpoint: t.to_dict()
            for path, t in self.trackers.items()
            if t.finished
        }

    async def run(self) -> None:
        """Resume interrupted heals, then check the drives every ``check_every`` seconds."""
        try:
            for path, drive in self.drives.items():
                tracker = await _run(_load, drive.system_path(TRACKER))
                if tracker is not None and not tracker.finished:
                    where = f"{tracker.bucket}/{tracker.key}" if tracker.bucket else "the start"
                    tracker.resumes += 1
                    tracker.resumed_from = where
                    log.info("resuming the heal of drive %s from %s", drive.endpoint, where)
                    self._start(path, tracker)
            while True:
                await self.check()
                await asyncio.sleep(self.check_every)
        finally:
            tasks = list(self._healing.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def check(self) -> list[str]:
        """Format and start healing every local drive found blank; returns their paths."""
        started = []
        for path, drive in self.drives.items():
            if path in self._healing:
                continue
            try:
                await drive.read_format()
            except UnformattedDrive:
                await drive.write_format(self.formats[path])
                log.warning("drive %s is blank (replaced or wiped): formatted it into its "
                            "old place; healing its set onto it", drive.endpoint)  # fmt: skip
                self.replaced(path)
                started.append(path)
            except StorageError as exc:
                log.debug("drive %s: format check failed: %s", drive.endpoint, exc)
        return started

    def _refilling(self, eset: ErasureSet) -> set[int]:
        """Positions in ``eset`` of the local drives being refilled now."""
        refilling = set()
        for path, tracker in self.trackers.items():
            set_index, position = self.formats[path].position()
            if set_index == eset.index and not tracker.finished:
                refilling.add(position)
        return refilling

    def replaced(self, path: str) -> None:
        """A drive at ``path`` was just formatted blank: heal its set onto it."""
        self._start(path, Tracker(drive_id=self.formats[path].drive_id))

    def _start(self, path: str, tracker: Tracker) -> None:
        self.trackers[path] = tracker
        task = asyncio.create_task(self._heal_drive(path, tracker), name=f"heal {path}")
        self._healing[path] = task
        task.add_done_callback(lambda _t: self._healing.pop(path, None))

    async def _heal_drive(self, path: str, tracker: Tracker) -> None:
        drive = self.drives[path]
        tracker_path = drive.system_path(TRACKER)
        set_index, position = self.formats[path].position()
        eset = self.layer.sets[set_index]
        saved = time.monotonic()
        while True:
            try:
                await self.buckets.heal(eset, immediate=self._refilling(eset))
                buckets = await set_buckets(eset)
                break
            except StorageError as exc:
                log.debug("heal of %s waits for its set: %s", drive.endpoint, exc)
                await asyncio.sleep(RETRY_EVERY)
        if not buckets and not tracker.done_buckets:
            # A new cluster (or an empty one): nothing to heal, so the drive is never "healing".
            tracker.finished = True
            with contextlib.suppress(FileNotFoundError):
                await _run(os.unlink, tracker_path)
            return
        drive.healing = True
        sleeper = DynamicSleeper(self.speed)
        for bucket in buckets:
            if bucket in tracker.done_buckets:
                continue
            if bucket != tracker.bucket:
                tracker.bucket, tracker.key = bucket, ""

            async def heal(key: str, bucket: str = bucket) -> None:
                await self.foreground.wait_for_low_io()
                await sleeper.paced(self._heal_one(bucket, key, tracker, position))

            def finished(key: str) -> None:
                nonlocal saved
                tracker.key = key  # every key up to here is done: safe to resume after it
                if time.monotonic() - saved >= self.save_every:
                    tracker.updated = time.time()
                    _save(tracker_path, tracker)  # small and rare: written in place
                    saved = time.monotonic()

            keys = (info.key async for info in walk_set(eset, bucket, start_after=tracker.key))
            await in_order(keys, heal, workers=self.workers, done=finished)
            tracker.done_buckets.append(bucket)
        tracker.finished = True
        tracker.updated = time.time()
        with contextlib.suppress(FileNotFoundError):
            await _run(os.unlink, tracker_path)
        drive.healing = False
        log.info(
            "drive %s healed: %d objects (%.1f MiB) rewritten, %d failed, %d skipped, "
            "%d checked",
            drive.endpoint, tracker.objects_healed, tracker.bytes_healed / (1 << 20),
            tracker.objects_failed, tracker.objects_skipped, tracker.objects_scanned,
        )  # fmt: skip

    async def _heal_one(self, bucket: str, key: str, tracker: Tracker, position: int) -> None:
        """Heal one object; try again (a few times, briefly) while this drive is left out."""
        tracker.objects_scanned += 1
        for attempt in range(1, ATTEMPTS + 1):
            try:
                result = await self.healer.heal(bucket, key)
            except StorageError as exc:
                log.debug("drive heal: %s/%s: %s", bucket, key, exc)
                result = None
            if result is not None and (
                result.outcome not in (Outcome.SKIPPED, Outcome.PARTIAL)
                and result.after[position] is not DriveState.OFFLINE
            ):
                break
            if attempt < ATTEMPTS:
                await asyncio.sleep(RETRY_EVERY * attempt / ATTEMPTS)
        if result is None:
            tracker.objects_failed += 1
            return
        tracker.bytes_healed += result.bytes_written
        if result.outcome is Outcome.HEALED:
            tracker.objects_healed += 1
        elif result.outcome in (Outcome.SKIPPED, Outcome.PARTIAL):
            tracker.objects_skipped += 1
        elif result.outcome in (Outcome.UNRECOVERABLE, Outcome.DANGLING):
            tracker.objects_failed += 1


async def _run(func: Any, *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, func, *args)


__all__ = ["TRACKER", "DriveHealer", "Tracker"]
