"""Liveness, sans-IO: the health a pong carries, loop-stall records, the silence window, and
why a session ended.

A peer is declared dead when *nothing at all* has arrived from it for its silence window (any
message is proof of life, not only pongs). The window (:class:`SilenceWindow`) is
``dead_after`` for a peer that has looked healthy, and grows, up to ``dead_after_max``, with
the evidence that the peer or the path to it is slow: the loop lag the peer reports in its
pongs, the round-trip time the pongs measure, and the longest gaps between its frames beyond
the ping interval. A frozen or silently cut-off peer that was healthy is declared down after
``dead_after``; one that has been saying "my loop is late" gets the time its lag calls for.
Before accusing a peer, a node checks its own loop: if its timers fired late by about half the
window, the silence is probably its own fault (a local stall), and the peer gets a fresh window
instead.

When a session ends, its :class:`Cause` is one of (:class:`CauseKind`)::

    remote-stalled   the peer's last pong reported a growing loop lag, or it came back and
                     reported a long stall
    local-stalled    our own loop lag exceeded the window
    network-silent   no bytes arrived and nothing suggests a stall
    reset            the connection was closed or reset
    peer-restarted   the peer came back with a new instance ID
    peer-not-reading our out-queue stayed full with nothing written for the disconnect window
                     (or its control part overflowed): the peer sends but does not read
    protocol-error   the peer sent a frame that breaks the protocol

This module never imports asyncio: :class:`LoopStats` only records what a timer measured; the
timer that measures it is :class:`minigrid.monitor.LoopMonitor`.
"""

from __future__ import annotations

import collections
import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from .errors import RemoteProtocolError

log = logging.getLogger("minigrid.grid")


class CauseKind(enum.StrEnum):
    """What ended a session (or kept one from starting). The value is what logs show."""

    REMOTE_STALLED = "remote-stalled"
    LOCAL_STALLED = "local-stalled"
    NETWORK_SILENT = "network-silent"
    RESET = "reset"
    PEER_RESTARTED = "peer-restarted"
    PEER_NOT_READING = "peer-not-reading"
    PROTOCOL_ERROR = "protocol-error"
    #: A verified new dial from the same instance took the session's place.
    REPLACED = "replaced"
    #: One stream's client went quiet (its stream, not the session, ended).
    STREAM_SILENT = "stream-silent"
    SHUTDOWN = "shutdown"
    #: A bug in this node (logged with a traceback).
    ERROR = "error"
    # Why a session could not start (the dialing side's view).
    DIAL_FAILED = "dial failed"
    REJECTED = "rejected by peer"
    HANDSHAKE_FAILED = "handshake failed"


@dataclass(frozen=True, slots=True)
class Cause:
    """Why a session ended: a :class:`CauseKind` and, for people, the evidence."""

    kind: CauseKind
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.kind.value}: {self.detail}" if self.detail else self.kind.value


REMOTE_STALLED = CauseKind.REMOTE_STALLED.value
LOCAL_STALLED = CauseKind.LOCAL_STALLED.value
NETWORK_SILENT = CauseKind.NETWORK_SILENT.value
RESET = CauseKind.RESET.value
PEER_RESTARTED = CauseKind.PEER_RESTARTED.value
PEER_NOT_READING = CauseKind.PEER_NOT_READING.value
#: The kinds a lost session is diagnosed as.
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


def cause_kind(cause: str | Cause) -> str:
    """The category of a cause (``"network-silent: ..."`` → ``"network-silent"``)."""
    if isinstance(cause, Cause):
        return cause.kind.value
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


class SilenceWindow:
    """How long a peer may stay silent before it is declared dead (sans-IO, virtual time).

    In the spirit of a phi-accrual detector, the window follows what was observed of the peer
    instead of being one fixed number: ``floor + allowance × evidence``, at most ``cap``,
    where *evidence* is the largest of, over the last ``memory`` seconds,

    * the loop lag the peer reported in its pongs (its own timers were that late),
    * the round-trip time of a ping (the peer, the path or our loop took that long),
    * an inbound gap beyond the ping interval (frames stopped for that much longer than they
      should have, and then came).

    A healthy idle peer is heard from at least every ping interval, so its evidence is about
    zero and its window is ``floor``. The evidence is kept as two maxima over half the memory
    each (the current half and the one before), so noting it costs O(1) per frame, and a spike
    is forgotten ``memory / 2`` to ``memory`` seconds later (the session asks for the window at
    every ping, so the halves turn over on time).
    """

    __slots__ = ("_current", "_previous", "_since", "allowance", "cap", "floor", "memory")

    def __init__(
        self, floor: float, cap: float, allowance: float, memory: float, now: float
    ) -> None:
        self.floor = floor
        self.cap = max(cap, floor)
        self.allowance = allowance
        self.memory = memory
        self._current = 0.0  # the largest evidence noted since _since
        self._previous = 0.0  # ... and in the half memory before it
        self._since = now

    def _rotate(self, now: float) -> None:
        half = self.memory / 2
        if now - self._since < half:
            return
        # A whole half went by: the current maximum becomes the previous one (or, after a
        # whole memory with nothing noted, both are forgotten).
        self._previous = self._current if now - self._since < 2 * half else 0.0
        self._current = 0.0
        self._since = now

    def note(self, now: float, evidence: float) -> None:
        """The peer (or the path to it) was ``evidence`` seconds slow at ``now``."""
        self._rotate(now)
        if evidence > self._current:
            self._current = evidence

    def evidence(self, now: float) -> float:
        """The largest evidence of slowness remembered at ``now``, seconds."""
        self._rotate(now)
        return max(self._current, self._previous)

    def window(self, now: float) -> float:
        """The silence, in seconds, after which the peer is declared dead."""
        stretch = self.allowance * self.evidence(now)
        return self.floor + min(stretch, self.cap - self.floor)


class LocalLoop(Protocol):
    """What a session asks about its own node's loop (:class:`LoopStats` answers)."""

    def worst_lag(self) -> float: ...

    def longest_stall(self) -> float: ...

    def stalled_during(self, start: float, now: float) -> float: ...


class LoopStats:
    """Lag samples and remembered stalls of one event loop, as a timer measured them."""

    def __init__(self, window: float = 5.0) -> None:
        self.window = window
        self._samples: collections.deque[tuple[float, float]] = collections.deque()
        self._stalls: collections.deque[tuple[float, float]] = collections.deque()  # (end, length)
        #: Called with every lag sample (seconds), e.g. to fill a histogram. Must be quick.
        self.observers: list[Callable[[float], None]] = []

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

    def longest_stall(self) -> float:
        """The longest stall remembered, seconds."""
        return max((length for _, length in self._stalls), default=0.0)

    def stalled_during(self, start: float, now: float) -> float:
        """The longest stall that overlapped ``[start, now]``, seconds.

        A stall of length L that ended at E covered ``[E - L, E]``; one that ended exactly at
        ``start`` does not overlap it (a fresh window starting when a stall ended is not
        excused by that stall again).
        """
        return max(
            (length for end, length in self._stalls if end > start and end - length <= now),
            default=0.0,
        )


def log_fields(
    local: str,
    remote: str,
    cause: Cause | None = None,
    *,
    last_seen_s: float | None = None,
    health: Health | None = None,
    handler: str | None = None,
    subroute: str | None = None,
    **more: object,
) -> dict[str, object]:
    """Structured fields for a log line about a peer (``extra=`` of a log call; the node's JSON
    log writes them out): who, why, and how the peer looked at last contact."""
    return {
        "local": local,
        "remote": remote,
        "cause": cause.kind.value if cause is not None else None,
        "cause_detail": str(cause) if cause is not None else None,
        "handler": handler,
        "subroute": subroute,
        "last_seen_s": round(last_seen_s, 3) if last_seen_s is not None else None,
        "peer_loop_lag_s": round(health.loop_lag, 3) if health is not None else None,
        **more,
    }


def diagnose_silence(
    silence: float, health: Health | None, ping_interval: float, window: float | None = None
) -> Cause:
    """Name the likely cause of ``silence`` seconds without any message from the peer (the
    silence ``window`` it was allowed, when given, is named too)."""
    allowed = f" (window {window:.2f}s)" if window is not None else ""
    if health is not None and health.loop_lag >= max(0.25, ping_interval / 2):
        return Cause(
            CauseKind.REMOTE_STALLED,
            f"no traffic for {silence:.1f}s{allowed}; remote loop lag was "
            f"{health.loop_lag:.1f}s at last contact",
        )
    lag = f"{health.loop_lag * 1000:.0f} ms" if health is not None else "unknown"
    return Cause(
        CauseKind.NETWORK_SILENT,
        f"no traffic at all for {silence:.1f}s{allowed}; remote loop healthy at last contact "
        f"(lag {lag})",
    )
