"""Handler IDs and the handler registry.

Handler IDs are on the wire, so they live in one enum and are never renumbered. A handler may
be registered once without a subroute, or once per static subroute (for example one per drive
path), so that one handler ID serves many drives.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .mux import check_capacity

if TYPE_CHECKING:
    from .streams import ServerStream

SingleFn = Callable[[bytes], Awaitable[bytes]]
StreamFn = Callable[["ServerStream"], Awaitable[None]]


class HandlerID(enum.IntEnum):
    """Every handler ID. Never renumber; retire IDs instead of reusing them."""

    # Storage: remote drives (subroute = the drive path on the serving node).
    DISK_INFO = 10
    READ_FORMAT = 11
    WRITE_FORMAT = 12
    MAKE_VOLUME = 13
    LIST_VOLUMES = 14
    STAT_VOLUME = 15
    DELETE_VOLUME = 16
    READ_METADATA = 17
    WRITE_METADATA = 18
    DELETE_OBJECT = 19
    CREATE_SHARD = 20  # stream: chunks in, commit or abort
    RENAME_DATA = 21
    COMMIT_RENAME = 22
    UNDO_RENAME = 23
    READ_SHARD = 24  # stream: verified chunks out
    VERIFY_SHARD = 25
    LIST_OBJECTS_PAGE = 26
    WRITE_UPLOAD = 27
    READ_UPLOAD = 28
    LIST_UPLOADS = 29
    DELETE_UPLOAD = 30
    COMMIT_PART = 31
    LIST_PARTS = 32
    ASSEMBLE_PARTS = 33
    # Node-level calls (admin info, faults): 40–59.
    NODE_INFO = 40
    NODE_TOP = 41  # single: this node's live figures for `minigrid admin top`
    NODE_TRACE = 42  # stream: this node's call and request records for `minigrid admin trace`
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


@dataclass(frozen=True, slots=True)
class StreamHandler:
    """A streaming handler: an initial payload, then requests in and responses out."""

    handler_id: int
    subroute: str
    fn: StreamFn
    in_capacity: int
    out_capacity: int

    @property
    def name(self) -> str:
        return handler_name(self.handler_id)


class UnknownHandler(LookupError):
    """No handler for this ID or subroute; the message is sent back as a RemoteError."""


class Registry:
    """Maps ``(handler_id, subroute)`` to handlers."""

    def __init__(self) -> None:
        self._single: dict[tuple[int, str], SingleHandler] = {}
        self._streams: dict[tuple[int, str], StreamHandler] = {}
        self._subroutes: dict[int, set[str]] = {}

    def add_single(self, handler_id: int, fn: SingleFn, *, subroute: str = "") -> None:
        """Register a single-payload handler, optionally for one static subroute."""
        key = self._claim(handler_id, subroute)
        self._single[key] = SingleHandler(int(handler_id), subroute, fn)

    def add_stream(
        self,
        handler_id: int,
        fn: StreamFn,
        *,
        subroute: str = "",
        in_capacity: int = 0,
        out_capacity: int = 1,
    ) -> None:
        """Register a streaming handler. ``in_capacity=0`` means it takes no requests."""
        check_capacity("in_capacity", in_capacity)
        if check_capacity("out_capacity", out_capacity) < 1:
            raise ValueError("out_capacity must be at least 1")
        key = self._claim(handler_id, subroute)
        self._streams[key] = StreamHandler(int(handler_id), subroute, fn, in_capacity, out_capacity)

    def _claim(self, handler_id: int, subroute: str) -> tuple[int, str]:
        key = (int(handler_id), subroute)
        if key in self._single or key in self._streams:
            raise ValueError(f"{handler_name(handler_id)} subroute {subroute!r} registered twice")
        self._subroutes.setdefault(int(handler_id), set()).add(subroute)
        return key

    def stream(self, handler_id: int, subroute: str) -> StreamHandler:
        """Find a stream handler or raise :class:`UnknownHandler` with a clear reason."""
        found = self._streams.get((handler_id, subroute))
        if found is not None:
            return found
        if (handler_id, subroute) in self._single:
            raise UnknownHandler(
                f"{handler_name(handler_id)} is a single-call handler, not a stream"
            )
        raise UnknownHandler(self._explain(handler_id, subroute))

    def single(self, handler_id: int, subroute: str) -> SingleHandler:
        """Find a single handler or raise :class:`UnknownHandler` with a clear reason."""
        found = self._single.get((handler_id, subroute))
        if found is not None:
            return found
        if (handler_id, subroute) in self._streams:
            raise UnknownHandler(
                f"{handler_name(handler_id)} is a stream handler, not a single call"
            )
        raise UnknownHandler(self._explain(handler_id, subroute))

    def _explain(self, handler_id: int, subroute: str) -> str:
        known = self._subroutes.get(handler_id)
        if not known:
            return f"unknown handler {handler_name(handler_id)} (id {handler_id})"
        listed = ", ".join(repr(route) for route in sorted(known))
        return (
            f"unknown subroute {subroute!r} for handler {handler_name(handler_id)} (has {listed})"
        )
