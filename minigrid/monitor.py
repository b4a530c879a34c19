"""The loop-lag monitor: a timer that notes how late it fires (the asyncio half of
:class:`minigrid.liveness.LoopStats`)."""

from __future__ import annotations

import asyncio
import contextlib

from .liveness import LoopStats


class LoopMonitor(LoopStats):
    """Measures this process's event-loop lag. Owned by the :class:`~minigrid.Manager`."""

    def __init__(self, interval: float = 0.1, window: float = 5.0) -> None:
        super().__init__(window)
        self.interval = interval
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
        while True:
            await asyncio.sleep(self.interval)
            now = loop.time()
            self.record(now, max(0.0, now - expected))
            expected = now + self.interval
