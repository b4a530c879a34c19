"""The loop-lag monitor: a timer that notes how late it fires (the asyncio half of
:class:`minigrid.liveness.LoopStats`)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time

from .liveness import LoopStats


class LoopMonitor(LoopStats):
    """Measures this process's event-loop lag. Owned by the :class:`~minigrid.Manager`.

    It also measures how much CPU the loop's own thread used between two ticks (*busy*). Lag
    has two causes: work on the loop (a callback that computes for a long time) and a machine
    too loaded to give the process the CPU. Busy time tells them apart: a loop starved by the
    scheduler burns no CPU while it waits, while a loop held by its own work burns it all."""

    def __init__(self, interval: float = 0.1, window: float = 5.0) -> None:
        super().__init__(window)
        self.interval = interval
        self._busy: collections.deque[tuple[float, float]] = collections.deque()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        expected = loop.time() + self.interval
        cpu = time.thread_time()
        while True:
            await asyncio.sleep(self.interval)
            now = loop.time()
            used, cpu = time.thread_time() - cpu, time.thread_time()
            self._busy.append((now, used))
            while self._busy and self._busy[0][0] < now - self.window:
                self._busy.popleft()
            self.record(now, max(0.0, now - expected))
            expected = now + self.interval

    def worst_busy(self) -> float:
        """The most CPU the loop's thread used between two ticks in the current window: how
        long the loop's own work held it (a loaded machine does not raise it), seconds."""
        return max((used for _, used in self._busy), default=0.0)
