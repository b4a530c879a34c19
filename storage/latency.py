"""Latency bookkeeping: recent-operation windows for ``disk_info``, the set-wide hedge delay
and the per-drive percentiles that time hedged reads and the metadata straggler cut-off.

Pure and synchronous; callers pass in durations measured with the loop's monotonic clock.
"""

from __future__ import annotations

from collections import deque

from storage.drive import Drive, LatencyStats


def node_of(drive: Drive) -> str:
    """The node serving ``drive`` (its grid peer), or "" for a drive of this process."""
    host = getattr(drive, "host", "")
    return host if isinstance(host, str) else ""


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


class DriveLatency:
    """Recent latency per drive and kind of operation, and the hedge deadline it gives.

    Each ``(drive, kind)`` keeps its last ``window`` durations; a drive's deadline for a kind
    is ``factor`` times its recent ``quantile`` (p95 by default), clamped to
    ``[floor, ceiling]``. A drive with fewer than ``min_samples`` of its own uses the
    estimate over every drive's samples of that kind (the set-wide estimate), and with no
    samples at all, ``fallback`` (the first reads of a fresh process).

    One slow drive therefore raises only its own deadline: the others are still hedged after
    their own recent p95, however long the slow one takes. Pure and synchronous; callers pass
    in durations measured with the loop's monotonic clock.
    """

    def __init__(
        self,
        *,
        window: int = 64,
        quantile: float = 0.95,
        factor: float = 3.0,
        floor: float = 0.025,
        ceiling: float = 1.0,
        min_samples: int = 8,
        fallback: float = 0.1,
    ) -> None:
        self.window = window
        self.quantile = quantile
        self.factor = factor
        self.floor = floor
        self.ceiling = ceiling
        self.min_samples = min_samples
        self.fallback = fallback
        self._samples: dict[tuple[str, str], deque[float]] = {}
        self._overall: dict[str, deque[float]] = {}
        self._cache: dict[tuple[str, str], float | None] = {}
        #: Drives that missed a deadline and have not answered since, with their node.
        self._late: dict[str, str] = {}

    def observe(self, drive: str, kind: str, seconds: float) -> None:
        """Record that one ``kind`` operation on ``drive`` took ``seconds``."""
        mine = self._samples.get((drive, kind))
        if mine is None:
            mine = self._samples[(drive, kind)] = deque(maxlen=self.window)
        mine.append(seconds)
        overall = self._overall.get(kind)
        if overall is None:
            # The set-wide window holds a few drives' worth, so one drive cannot fill it.
            overall = self._overall[kind] = deque(maxlen=4 * self.window)
        overall.append(seconds)
        self._cache.pop((drive, kind), None)
        self._cache.pop(("", kind), None)
        self._late.pop(drive, None)

    def mark_late(self, drive: str, node: str = "") -> None:
        """``drive`` (served by ``node``, "" for a local one) missed a deadline: it and its
        node's other drives are :meth:`suspect` until it answers again.

        A missed deadline is not recorded as a sample: a frozen drive's history would then
        make the next read wait longer for it."""
        self._late[drive] = node

    def suspect(self, drive: str, node: str = "") -> bool:
        """Whether ``drive``, or another drive of its node, is late right now."""
        return drive in self._late or (bool(node) and node in self._late.values())

    def _percentile(self, samples: deque[float] | None) -> float | None:
        if samples is None or len(samples) < self.min_samples:
            return None
        ordered = sorted(samples)
        return ordered[min(len(ordered) - 1, int(self.quantile * len(ordered)))]

    def percentile(self, drive: str, kind: str) -> float | None:
        """``drive``'s own recent quantile for ``kind``, or None without enough history."""
        key = (drive, kind)
        if key not in self._cache:
            self._cache[key] = self._percentile(self._samples.get(key))
        return self._cache[key]

    def set_percentile(self, kind: str) -> float | None:
        """The recent quantile of ``kind`` over every drive (None without enough samples)."""
        key = ("", kind)
        if key not in self._cache:
            self._cache[key] = self._percentile(self._overall.get(kind))
        return self._cache[key]

    def deadline(self, drive: str, kind: str) -> float:
        """How long a ``kind`` operation on ``drive`` may take before it counts as late."""
        recent = self.percentile(drive, kind)
        if recent is None:
            recent = self.set_percentile(kind)
        if recent is None:
            return max(self.floor, min(self.ceiling, self.fallback))
        return max(self.floor, min(self.ceiling, self.factor * recent))

    def snapshot(self) -> dict[str, dict[str, float | int | None]]:
        """``{"<drive> <kind>": {"count", "p95_ms", "deadline_ms"}}`` for the admin API."""
        return {
            f"{drive} {kind}": {
                "count": len(samples),
                "p95_ms": None if (p := self.percentile(drive, kind)) is None else 1000 * p,
                "deadline_ms": 1000 * self.deadline(drive, kind),
            }
            for (drive, kind), samples in sorted(self._samples.items())
        }
