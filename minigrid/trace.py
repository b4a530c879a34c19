"""Call records: what one grid call or stream was, reported when it ends.

The grid calls every listener in ``Manager.call_listeners`` once for each single call and each
stream that ends on this node, in either direction, with a frozen :class:`CallRecord`. The node
feeds them to ``minigrid admin trace`` and to its Prometheus metrics. Listeners run
synchronously on the event loop, so they must be quick and must not block; one that raises is
logged and the others still run.

Nothing is built when no one listens (``if manager.call_listeners:``), so the hook costs a
truth test per call when unused.

This module is pure (no asyncio, no aiohttp), so the sans-IO session can emit the same records.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, Final

from .errors import Cancelled, DeadlineExceeded, Disconnected

log = logging.getLogger("minigrid.grid")

#: ``CallRecord.direction``: this node called the peer, or the peer called this node.
CLIENT: Final = "client"
SERVER: Final = "server"
#: ``CallRecord.kind``.
CALL: Final = "call"
STREAM: Final = "stream"
#: ``CallRecord.status`` values.
OK: Final = "ok"
ERROR: Final = "error"
TIMEOUT: Final = "timeout"
CANCELLED: Final = "cancelled"
DISCONNECTED: Final = "disconnected"
STATUSES: Final = (OK, ERROR, TIMEOUT, CANCELLED, DISCONNECTED)


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One grid call or stream that has ended, as seen from this node."""

    handler: str  # the handler's name ("ReadFile"), or its number when unknown
    subroute: str  # "" when the handler has none
    peer: str  # the peer's host string
    direction: str  # CLIENT (we called) or SERVER (the peer called us)
    kind: str  # CALL or STREAM
    duration: float  # seconds from the request (or stream open) to the end, monotonic
    status: str  # one of STATUSES
    request_bytes: int  # the request payload; for a stream, the initial payload and every request
    response_bytes: int  # the response payload; for a stream, every response item
    error: str = ""  # what went wrong, when status is not OK

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def status_of(exc: BaseException | None) -> str:
    """The record status for how a call ended: ``None`` is OK, else what the error means."""
    if exc is None:
        return OK
    if isinstance(exc, DeadlineExceeded):
        return TIMEOUT
    if isinstance(exc, Disconnected):
        return DISCONNECTED
    if isinstance(exc, Cancelled) or not isinstance(exc, Exception):
        return CANCELLED  # asyncio.CancelledError is a BaseException, not an Exception
    return ERROR  # the handler failed (RemoteError), or the call broke the protocol


CallListener = Callable[[CallRecord], None]


class CallListeners:
    """The listeners of one manager: ``add``, ``remove``, and ``emit`` from the grid."""

    __slots__ = ("_listeners",)

    def __init__(self) -> None:
        self._listeners: list[CallListener] = []

    def add(self, listener: CallListener) -> None:
        """Call ``listener(record)`` for every call or stream that ends from now on."""
        self._listeners.append(listener)

    def remove(self, listener: CallListener) -> None:
        """Stop calling ``listener`` (no error if it was not added)."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def __bool__(self) -> bool:
        return bool(self._listeners)

    def __len__(self) -> int:
        return len(self._listeners)

    def __iter__(self) -> Iterator[CallListener]:
        return iter(list(self._listeners))

    def emit(self, record: CallRecord) -> None:
        """Give ``record`` to every listener; one that raises is logged, not propagated."""
        for listener in list(self._listeners):
            try:
                listener(record)
            except Exception:
                log.exception("grid: call listener failed")


__all__ = [
    "CALL",
    "CANCELLED",
    "CLIENT",
    "DISCONNECTED",
    "ERROR",
    "OK",
    "SERVER",
    "STATUSES",
    "STREAM",
    "TIMEOUT",
    "CallListener",
    "CallListeners",
    "CallRecord",
    "status_of",
]
