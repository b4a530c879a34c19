"""Liveness: the loop-lag monitor, the health a pong carries, and the diagnosis of a failure.

A peer is declared dead when *nothing at all* has arrived from it for ``dead_after`` seconds
(any message is proof of life, not only pongs). Before accusing it, a node checks its own loop:
if its timers fired late by about as long as the silence, the silence is probably its own fault
(a local stall), and the peer gets a fresh window instead.

When a session ends, the cause is one of::

    remote-stalled   the peer's last pong reported a growing loop lag, or it came back and
                     reported a long stall
    local-stalled    our own loop lag exceeded the window
    network-silent   no bytes arrived and nothing suggests a stall
    reset            the connection was closed or reset
    peer-restarted   the peer came back with a new instance ID
    peer-not-reading our out-queue stayed full with nothing written for the disconnect window
                     (or its control part overflowed): the peer sends but does not read
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from .errors import RemoteProtocolError

log = logging.getLogger("minigrid.grid")

REMOTE_STALLED = "remote-stalled"
LOCAL_STALLED = "local-stalled"
NETWORK_SILENT = "network-silent"
RESET = "reset"
PEER_RESTARTED = "peer-restarted"
PEER_NOT_READING = "peer-not-reading"
CAUSES = (REMOTE_STALLED, LOCAL_STALLED, NETWORK_SILENT, RESET, PEER_RESTARTED, PEER_NOT_READING)

#: A timer that fires this late (seconds) counts as a stall of the loop, and is logged.
STALL_THRESHOLD = 0.5
#: How long a stall is remembered (and reported to peers in pongs).
STALL_MEMORY = 120.0


#: Largest number of seconds (loop lag, stall) a pong may report: about 11 days.
MAX_WIRE_SECONDS: Final = 1e6
#: Largest count (queue depth, calls, streams) a pong may report.
MAX_WIRE_COUNT: Final = 1 << 32
#: Largest monotonic time a ping may carry (seconds; a monotonic clock starts near boot).
MAX_WIRE_TIME: Final = 1e12


def wire_number(value: object, what: str, limit: float) -> float:
    """``value`` from a peer as a number in ``[0, limit]``, or a protocol error of that message.

    Rejects NaN, infinities, booleans and anything that is not an int or a float."""
    if type(value) is not int and type(value) is not float:
        raise RemoteProtocolError(f"{what} is a {type(value).__name__}, not a number")
    if not 0 <= value <= limit:  # also False for NaN
        raise RemoteProtocolError(f"{what} = {value!r} is outside 0-{limit:g}")
    return float(value)


def cause_kind(cause: str) -> str:
    """The category of a cause string (``"network-silent: ..."`` → ``"network-silent"``)."""
    return cause.split(":", 1)[0].strip()


@dataclass(frozen=True, slots=True)
class Health:
    """What a pong says about its sender."""

    loop_lag: float  # worst loop lag in its last window, seconds
    queue: int  # out-queue depth, messages
    calls: int  # single calls in flight, both directions
    streams: int  # streams open, both directions
    stall: float  # its longest recent loop stall, seconds (0 if none)

    def to_wire(self) -> dict[str, Any]:
        return {
            "lag": self.loop_lag,
            "q": self.queue,
            "calls": self.calls,
            "streams": self.streams,
            "stall": self.stall,
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Health:
        """The health in a pong. A missing field reads as 0; a field that is not a finite
        number in range raises :class:`RemoteProtocolError` (that pong is refused)."""

        def seconds(key: str) -> float:
            return wire_number(data.get(key, 0), f"pong field {key!r}", MAX_WIRE_SECONDS)

        def count(key: str) -> int:
            return int(wire_number(data.get(key, 0), f"pong field {key!r}", MAX_WIRE_COUNT))

        return cls(seconds("lag"), count("q"), count("calls"), count("streams"), seconds("stall"))


class LoopMonitor:
    """Measures this process's event-loop lag: a timer that notes how late it fires.

    It also measures how much CPU the loop's own thread used between two ticks (*busy*). Lag
    has two causes: work on the loop (a callback that computes for a long time) and a machine
    too loaded to give the process the CPU. Busy time tells them apart: a loop starved by the
    scheduler burns no CPU while it waits, while a loop held by its own work burns it all."""

    def __init__(self, interval: float = 0.1, window: float = 5.0) -> None:
        self.interval = interval
        self.window = window
        self._samples: collections.deque[tuple[float, float]] = collections.deque()
        self._busy: collections.deque[tuple[float, float]] = collections.deque()
        self._stalls: collections.deque[tuple[float, float]] = collections.deque()  # (end, length)
        self._task: asyncio.Task[None] | None = None
        #: Called with every lag sample (seconds), e.g. to fill a histogram. Must be quick.
        self.observers: list[Callable[[float], None]] = []

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

    def record(self, now: float, lag: float) -> None:
        """Note that a timer due at ``now - lag`` fired at ``now``."""
        self._samples.append((now, lag))
        for observer in self.observers:
            observer(lag)
        while self._samples and self._samples[0][0] < now - self.window:
            self._samples.popleft()
        if lag >= STALL_THRESHOLD:
            self._stalls.append((now, lag))
            log.warning(
                "local event loop stalled for %.1fs (timers fired late); peers are not "
                "accused for that window",
                lag,
            )
        while self._stalls and self._stalls[0][0] < now - STALL_MEMORY:
            self._stalls.popleft()

    def worst_lag(self) -> float:
        """The worst lag in the current window, seconds."""
        return max((lag for _, lag in self._samples), default=0.0)

    def worst_busy(self) -> float:
        """The most CPU the loop's thread used between two ticks in the current window: how
        long the loop's own work held it (a loaded machine does not raise it), seconds."""
        return max((used for _, used in self._busy), default=0.0)

    def longest_stall(self) -> float:
        """The longest stall remembered, seconds."""
        return max((length for _, length in self._stalls), default=0.0)

    def stalled_during(self, start: float, now: float) -> float:
        """The longest stall that overlapped ``[start, now]``, seconds.

        A stall of length L that ended at E covered ``[E - L, E]``.
        """
        return max(
            (length for end, length in self._stalls if end >= start and end - length <= now),
            default=0.0,
        )


def diagnose_silence(silence: float, health: Health | None, ping_interval: float) -> str:
    """Name the likely cause of ``silence`` seconds without any message from the peer."""
    if health is not None and health.loop_lag >= max(0.25, ping_interval / 2):
        return (
            f"{REMOTE_STALLED}: no traffic for {silence:.1f}s; remote loop lag was "
            f"{health.loop_lag:.1f}s at last contact"
        )
    lag = f"{health.loop_lag * 1000:.0f} ms" if health is not None else "unknown"
    return (
        f"{NETWORK_SILENT}: no traffic at all for {silence:.1f}s; remote loop healthy at "
        f"last contact (lag {lag})"
    )
