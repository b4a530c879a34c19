"""MRF ("most recently failed"): heal what puts and reads just found damaged, soon after.

The object layer reports every copy it finds missing, corrupt or outdated, and every drive a
put could not write (its heal hook). The MRF queue takes those reports, waits about a second
(so a peer that is merely reconnecting can come back and the put can finish its commit), then
heals the object, paced by the dynamic sleeper and yielding to foreground traffic.

- The queue is bounded. A report that finds it full is dropped and counted: the scanner will
  find that damage on a later cycle.
- Reports of one object are merged into one entry.
- An object that could not be healed because drives were offline (Tahoe-LAFS #502: never wait
  on a dead peer) is *parked*, not retried in a tight loop: it goes back in the queue when
  :meth:`Mrf.resume` is called (a peer came back) or after a backoff. Nothing is logged per
  object; a summary line is logged at most every ``summary_every`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from heal.object import DriveState, ObjectHealer, ObjectHealResult, Outcome
from heal.pace import DynamicSleeper, Foreground, Speed, no_foreground
from storage.errors import StorageError
from storage.info import HealReport

log = logging.getLogger("heal.mrf")

CAPACITY = 10_000
DELAY = 1.0
RETRY_BACKOFF = (5.0, 60.0)  # first and largest wait before a parked object is tried again
MAX_ATTEMPTS = 20


@dataclass
class _Entry:
    bucket: str
    key: str
    due: float
    reasons: set[str] = field(default_factory=set)
    attempts: int = 0


@dataclass
class MrfStats:
    reported: int = 0
    queued: int = 0
    parked: int = 0
    healed: int = 0
    clean: int = 0  # found nothing to heal (already repaired, or healed by someone else)
    failed: int = 0  # unrecoverable, dangling, or gave up after MAX_ATTEMPTS
    dropped: int = 0  # the queue was full: left to the scanner
    bytes_healed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Mrf:
    """The queue and its worker. ``add`` is the layer's heal hook; ``run`` is the service."""

    def __init__(
        self,
        healer: ObjectHealer,
        *,
        capacity: int = CAPACITY,
        delay: float = DELAY,
        speed: Speed | None = None,
        foreground: Foreground | None = None,
        summary_every: float = 10.0,
    ) -> None:
        self.healer = healer
        self.capacity = capacity
        self.delay = delay
        self.speed = speed or Speed("fast")
        self.foreground = foreground or Foreground(no_foreground)
        self.summary_every = summary_every
        self.stats = MrfStats()
        self._pending: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._parked: dict[tuple[str, str], _Entry] = {}
        self._wake = asyncio.Event()
        self._last_summary = time.monotonic()
        self._summarised = MrfStats()

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def parked(self) -> int:
        return len(self._parked)

    def add(self, report: HealReport) -> None:
        """Queue the object a report names (synchronous: called from the I/O path)."""
        self.stats.reported += 1
        name = (report.bucket, report.key)
        entry = self._pending.get(name) or self._parked.pop(name, None)
        if entry is None:
            if len(self._pending) >= self.capacity:
                self.stats.dropped += 1
                return
            entry = _Entry(report.bucket, report.key, time.monotonic() + self.delay)
            self.stats.queued += 1
        else:
            entry.due = min(entry.due, time.monotonic() + self.delay)
        entry.reasons.add(report.reason)
        self._pending[name] = entry
        self._wake.set()

    def resume(self) -> None:
        """A peer came back: every parked object is due again now."""
        now = time.monotonic()
        for name, entry in self._parked.items():
            entry.due = now
            self._pending[name] = entry
        self._parked.clear()
        if self._pending:
            self._wake.set()

    async def run(self) -> None:
        """Heal queued objects until cancelled."""
        sleeper = DynamicSleeper(self.speed)
        while True:
            entry = await self._next()
            await self.foreground.wait_for_low_io()
            sleeper.start()
            await self._heal(entry)
            await sleeper.pause()
            self._maybe_summarise()

    async def _next(self) -> _Entry:
        while True:
            self._unpark_due()
            wait: float | None
            if self._pending:
                name, entry = next(iter(self._pending.items()))
                wait = entry.due - time.monotonic()
                if wait <= 0:
                    del self._pending[name]
                    return entry
            else:
                wait = self._next_parked_due()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    def _next_parked_due(self) -> float | None:
        if not self._parked:
            return None
        return max(0.0, min(e.due for e in self._parked.values()) - time.monotonic())

    def _unpark_due(self) -> None:
        now = time.monotonic()
        for name in [n for n, e in self._parked.items() if e.due <= now]:
            self._pending[name] = self._parked.pop(name)

    async def _heal(self, entry: _Entry) -> None:
        entry.attempts += 1
        try:
            # A corrupt shard has the right size: only a deep check finds it again.
            deep = "corrupt" in entry.reasons
            result = await self.healer.heal(entry.bucket, entry.key, deep=deep)
        except StorageError as exc:
            log.debug("mrf: %s/%s: %s", entry.bucket, entry.key, exc)
            self._park(entry)
            return
        self._account(entry, result)

    def _account(self, entry: _Entry, result: ObjectHealResult) -> None:
        outcome = result.outcome
        self.stats.bytes_healed += result.bytes_written
        if outcome is Outcome.HEALED:
            self.stats.healed += 1
        elif outcome in (Outcome.OK, Outcome.NOT_FOUND):
            self.stats.clean += 1
        elif outcome not in (Outcome.SKIPPED, Outcome.PARTIAL):
            self.stats.failed += 1
            log.warning(
                "mrf: %s/%s is %s: %s", entry.bucket, entry.key, outcome.value, result.detail
            )
            return
        if DriveState.OFFLINE in result.after or outcome is Outcome.PARTIAL:
            # A drive that did not answer may still need its copy: try again when it is back.
            self._park(entry)

    def _park(self, entry: _Entry) -> None:
        if entry.attempts >= MAX_ATTEMPTS:
            self.stats.failed += 1
            return
        first, largest = RETRY_BACKOFF
        entry.due = time.monotonic() + min(largest, first * 2 ** (entry.attempts - 1))
        self._parked[(entry.bucket, entry.key)] = entry
        self.stats.parked += 1

    def _maybe_summarise(self) -> None:
        now = time.monotonic()
        if now - self._last_summary < self.summary_every:
            return
        before, after = self._summarised, self.stats
        healed = after.healed - before.healed
        if healed or after.failed != before.failed or after.dropped != before.dropped:
            log.info(
                "mrf: healed %d objects (%.1f MiB) in the last %.0fs; %d queued, %d parked "
                "waiting for drives, %d failed, %d dropped in all",
                healed, (after.bytes_healed - before.bytes_healed) / (1 << 20),
                now - self._last_summary, len(self._pending), len(self._parked),
                after.failed, after.dropped,
            )  # fmt: skip
        self._last_summary = now
        self._summarised = MrfStats(**after.as_dict())

    def status(self) -> dict[str, Any]:
        return {"queued": len(self._pending), "parked": len(self._parked), **self.stats.as_dict()}
