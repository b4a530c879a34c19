"""Handler IDs and the handler registry.

Handler IDs are on the wire, so they live in one enum and are never renumbered. A handler may
be registered once without a subroute, or once per static subroute (for example one per drive
path), so that one handler ID serves many drives.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

SingleFn = Callable[[bytes], Awaitable[bytes]]


class HandlerID(enum.IntEnum):
    """Every handler ID. Never renumber; retire IDs instead of reusing them."""

    # Storage (remote drives): filled by the cluster issue.
    DISK_INFO = 10
    # Reserved for tests, benchmarks and the demo: 200–249.
    TEST_ECHO = 200
    TEST_ERROR = 201
    TEST_SLEEP = 202
    TEST_BLOCK_LOOP = 203
    TEST_STREAM_ECHO = 210
    TEST_STREAM_GENERATE = 211
    TEST_STREAM_SINK = 212
    TEST_STREAM_STALL = 213


def handler_name(handler_id: int) -> str:
    """A readable name for logs: the enum name, or the number for an unknown ID."""
    try:
        return HandlerID(handler_id).name
    except ValueError:
        return f"handler#{handler_id}"


@dataclass(frozen=True, slots=True)
class SingleHandler:
    """A single-payload handler: bytes in, bytes out."""

    handler_id: int
    subroute: str
    fn: SingleFn

    @property
    def name(self) -> str:
        return handler_name(self.handler_id)


class UnknownHandler(LookupError):
    """No handler for this ID or subroute; the message is sent back as a RemoteError."""


class Registry:
    """Maps ``(handler_id, subroute)`` to handlers."""

    def __init__(self) -> None:
        self._single: dict[tuple[int, str], SingleHandler] = {}
        self._subroutes: dict[int, set[str]] = {}

    def add_single(self, handler_id: int, fn: SingleFn, *, subroute: str = "") -> None:
        """Register a single-payload handler, optionally for one static subroute."""
        key = (int(handler_id), subroute)
        if key in self._single:
            raise ValueError(f"{handler_name(handler_id)} subroute {subroute!r} registered twice")
        self._single[key] = SingleHandler(int(handler_id), subroute, fn)
        self._subroutes.setdefault(int(handler_id), set()).add(subroute)

    def single(self, handler_id: int, subroute: str) -> SingleHandler:
        """Find a single handler or raise :class:`UnknownHandler` with a clear reason."""
        found = self._single.get((handler_id, subroute))
        if found is not None:
            return found
        raise UnknownHandler(self._explain(handler_id, subroute))

    def _explain(self, handler_id: int, subroute: str) -> str:
        known = self._subroutes.get(handler_id)
        if not known:
            return f"unknown handler {handler_name(handler_id)} (id {handler_id})"
        listed = ", ".join(repr(route) for route in sorted(known))
        return (
            f"unknown subroute {subroute!r} for handler {handler_name(handler_id)} (has {listed})"
        )
