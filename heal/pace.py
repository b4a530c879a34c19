"""Pacing background work: the dynamic sleeper and waiting for low foreground load.

**Dynamic sleeper** (as MinIO's scanner): after each unit of work, sleep ``factor`` times the
time the work took, capped at ``max_sleep``. Work that takes longer (a slow drive, a busy node)
automatically backs off more. The presets are MinIO's (factor, cap):

========  ======  =======
preset    factor  cap
========  ======  =======
fastest   0       0
fast      1       100 ms
default   2       1 s
slow      10      15 s
slowest   100     15 s
========  ======  =======

**Foreground first** (MinIO's ``waitForLowIO``): before each unit, a heal worker waits while
the node's in-flight S3 requests exceed a threshold, in short steps, but never more than
``max_wait`` in total: heals yield to clients, they never stop.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Final, TypeVar

T = TypeVar("T")

PRESETS: Final[dict[str, tuple[float, float]]] = {
    "fastest": (0.0, 0.0),
    "fast": (1.0, 0.1),
    "default": (2.0, 1.0),
    "slow": (10.0, 15.0),
    "slowest": (100.0, 15.0),
}


def check_preset(name: str) -> str:
    if name not in PRESETS:
        raise ValueError(f"unknown speed {name!r}: choose one of {', '.join(PRESETS)}")
    return name


@dataclass
class Speed:
    """A speed preset that can be changed while the work runs (the admin API does)."""

    preset: str = "default"

    @property
    def factor(self) -> float:
        return PRESETS[self.preset][0]

    @property
    def max_sleep(self) -> float:
        return PRESETS[self.preset][1]

    def set(self, preset: str) -> None:
        self.preset = check_preset(preset)


class DynamicSleeper:
    """Times units of work and sleeps in proportion after each."""

    def __init__(self, speed: Speed) -> None:
        self.speed = speed
        self.slept = 0.0
        self._started = 0.0

    def start(self) -> None:
        """Mark the start of a unit of work."""
        self._started = time.monotonic()

    async def paced(self, work: Awaitable[T]) -> T:
        """Await one unit of work, then sleep in proportion to how long it took. Safe to use
        from several workers at once (each unit is timed on its own)."""
        started = time.monotonic()
        result = await work
        delay = min(self.speed.factor * (time.monotonic() - started), self.speed.max_sleep)
        await asyncio.sleep(delay)
        self.slept += delay
        return result

    async def pause(self) -> float:
        """After a unit of work: sleep ``factor x elapsed``, capped; returns the sleep."""
        elapsed = time.monotonic() - self._started
        delay = min(self.speed.factor * elapsed, self.speed.max_sleep)
        if delay > 0:
            await asyncio.sleep(delay)
            self.slept += delay
        else:
            await asyncio.sleep(0)  # still let the loop run other work between units
        return delay


async def in_order(
    items: AsyncIterator[T],
    work: Callable[[T], Coroutine[Any, Any, None]],
    *,
    workers: int,
    done: Callable[[T], None],
) -> None:
    """Run ``work`` on up to ``workers`` items at once, in the order ``items`` gives them, and
    call ``done(item)`` once an item *and every item before it* have finished, so a caller can
    record a position that is safe to resume from (nothing before it is left undone)."""
    running: collections.deque[tuple[T, asyncio.Task[None]]] = collections.deque()

    def retire() -> None:
        while running and running[0][1].done():
            item, task = running.popleft()
            task.result()  # a failure in work is a bug: let it out
            done(item)

    try:
        async for item in items:
            while len(running) >= workers:
                await asyncio.wait({t for _, t in running}, return_when=asyncio.FIRST_COMPLETED)
                retire()
            running.append((item, asyncio.create_task(work(item))))
            retire()
        while running:
            await asyncio.wait({t for _, t in running}, return_when=asyncio.FIRST_COMPLETED)
            retire()
    finally:
        for _, task in running:
            task.cancel()
        await asyncio.gather(*(t for _, t in running), return_exceptions=True)


class Foreground:
    """Waits while foreground load is high: ``inflight()`` above ``threshold``."""

    def __init__(
        self,
        inflight: Callable[[], int],
        *,
        threshold: int = 8,
        step: float = 0.01,
        max_wait: float = 0.25,
    ) -> None:
        self.inflight = inflight
        self.threshold = threshold
        self.step = step
        self.max_wait = max_wait
        self.waited = 0.0

    async def wait_for_low_io(self) -> float:
        """Wait (at most ``max_wait``) until in-flight requests drop to the threshold."""
        waited = 0.0
        while self.inflight() > self.threshold and waited < self.max_wait:
            await asyncio.sleep(self.step)
            waited += self.step
        self.waited += waited
        return waited


def no_foreground() -> int:
    return 0


__all__ = [
    "PRESETS",
    "DynamicSleeper",
    "Foreground",
    "Speed",
    "check_preset",
    "in_order",
    "no_foreground",
]
