"""One virtual clock and one seeded scheduler for a whole simulated cluster.

Everything that happens in a simulation is a callback at a virtual time, run in order of
(time, the order it was scheduled); every random choice comes from :attr:`Scheduler.random`.
So one seed and one schedule of faults give exactly one run, every time.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from typing import Any


class Timer:
    """A scheduled callback that can be cancelled before it runs."""

    __slots__ = ("args", "cancelled", "fn", "when")

    def __init__(self, when: float, fn: Callable[..., None], args: tuple[Any, ...]) -> None:
        self.when = when
        self.fn = fn
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Scheduler:
    """The virtual clock (:attr:`now`, seconds) and what is due on it."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.random = random.Random(seed)
        self.now = 0.0
        self.steps = 0
        self._queue: list[tuple[float, int, Timer]] = []
        self._count = 0

    def at(self, when: float, fn: Callable[..., None], *args: Any) -> Timer:
        """Run ``fn(*args)`` at ``when`` (at once, in order, if that is in the past)."""
        timer = Timer(max(when, self.now), fn, args)
        self._count += 1
        heapq.heappush(self._queue, (timer.when, self._count, timer))
        return timer

    def after(self, delay: float, fn: Callable[..., None], *args: Any) -> Timer:
        return self.at(self.now + delay, fn, *args)

    def run_until(self, end: float) -> None:
        """Run everything due up to ``end``, then set the clock to ``end``."""
        queue = self._queue
        while queue and queue[0][0] <= end:
            when, _, timer = heapq.heappop(queue)
            if timer.cancelled:
                continue
            self.now = when
            self.steps += 1
            timer.fn(*timer.args)
        self.now = max(self.now, end)

    def pending(self) -> int:
        return sum(1 for _, _, timer in self._queue if not timer.cancelled)
