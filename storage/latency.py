"""Latency bookkeeping: recent-operation windows for ``disk_info`` and the hedge delay.

Pure and synchronous; callers pass in durations measured with the loop's monotonic clock.
"""

from __future__ import annotations

from collections import deque

from storage.drive import LatencyStats


class LatencyWindow:
    """The last ``size`` durations of each kind of operation."""

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._samples: dict[str, deque[float]] = {}

    def record(self, op: str, seconds: float) -> None:
        window = self._samples.get(op)
        if window is None:
            window = self._samples[op] = deque(maxlen=self._size)
        window.append(seconds)

    def snapshot(self) -> dict[str, LatencyStats]:
        stats: dict[str, LatencyStats] = {}
        for op, window in self._samples.items():
            if not window:
                continue
            stats[op] = LatencyStats(
                count=len(window),
                avg_ms=1000.0 * sum(window) / len(window),
                max_ms=1000.0 * max(window),
                last_ms=1000.0 * window[-1],
            )
        return stats


class HedgeDelay:
    """A hedge delay from observed latency, in the style of TCP's retransmission timer.

    It keeps a smoothed mean and mean deviation of the time a shard chunk takes to arrive;
    the delay is ``mean + 4 * deviation``, never below ``floor`` and never above ``ceiling``.
    """

    def __init__(self, floor: float = 0.025, ceiling: float = 2.0) -> None:
        self.floor = floor
        self.ceiling = ceiling
        self._mean: float | None = None
        self._deviation = 0.0

    def observe(self, seconds: float) -> None:
        if self._mean is None:
            self._mean = seconds
            self._deviation = seconds / 2
            return
        error = seconds - self._mean
        self._mean += error / 8
        self._deviation += (abs(error) - self._deviation) / 4

    @property
    def delay(self) -> float:
        if self._mean is None:
            return max(self.floor, min(self.ceiling, 4 * self.floor))
        return max(self.floor, min(self.ceiling, self._mean + 4 * self._deviation))
