"""Liveness, sans-IO: the health a pong carries, loop-stall records, and why a session ended.

A peer is declared dead when *nothing at all* has arrived from it for ``dead_after`` seconds
(any message is proof of life, not only pongs). Before accusing it, a node checks its own loop:
if its timers fired late by about as long as the silence, the silence is probably its own fault
(a local stall), and the peer gets a fresh window instead.

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

        A stall of length L that ended at E covered ``[E - L, E]``.
        """
        return max(
            (length for end, length in self._stalls if end >= start and end - length <= now),
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


def diagnose_silence(silence: float, health: Health | None, ping_interval: float) -> Cause:
    """Name the likely cause of ``silence`` seconds without any message from the peer."""
    if health is not None and health.loop_lag >= max(0.25, ping_interval / 2):
        return Cause(
            CauseKind.REMOTE_STALLED,
            f"no traffic for {silence:.1f}s; remote loop lag was "
            f"{health.loop_lag:.1f}s at last contact",
        )
    lag = f"{health.loop_lag * 1000:.0f} ms" if health is not None else "unknown"
    return Cause(
        CauseKind.NETWORK_SILENT,
        f"no traffic at all for {silence:.1f}s; remote loop healthy at last contact (lag {lag})",
    )
