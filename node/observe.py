"""Live views of the cluster for ``minigrid admin top`` and ``minigrid admin trace``.

Admin endpoints (under ``/minigrid/admin/v1``, admin SigV4), both streaming JSON lines:

- ``GET /top?interval=1&count=0&scope=cluster``: one line per interval,
  ``{"time": ..., "nodes": [snapshot, ...]}``, with this node's snapshot and every peer's (asked
  over the grid with ``NODE_TOP``); a peer that cannot answer is ``{"node": host, "error": why}``.
  ``count=0`` streams until the client leaves; ``scope=node`` leaves the peers out.
- ``GET /trace?handler=&peer=&min_duration=&kind=grid,s3&scope=cluster``: one line per grid
  call or stream that ended and per S3 request answered, on this node and (with
  ``scope=cluster``) on every peer, whose records come over a ``NODE_TRACE`` grid stream. A
  ``{"type": "heartbeat", ...}`` line comes every second, with how many records were dropped
  because the client read too slowly (each subscriber's queue is bounded; the node never
  waits for a trace reader).

So one published endpoint is enough to watch a whole remote cluster. Nothing is recorded while
nobody watches: the node listens to the grid and the gateway only while a trace is open.

The console (:mod:`node.console`) reads the same snapshots, asking each node with
``events_since`` for its recent events too (:mod:`node.journal`): a ``NODE_TOP`` call whose
payload is ``{"events_since": N}`` answers the snapshot plus ``"journal"``, the node's events
after number N. Each peer's ``process`` identity (pid, start time, boot and PID namespace)
is remembered from its last answer (:meth:`ObserveService.process_of`), so a node can tell
whether a peer runs on its own machine even while that peer is frozen.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from aiohttp import web

from minigrid import CallError, HandlerID, Manager
from minigrid.streams import ServerStream
from minigrid.trace import CallRecord
from node.journal import Journal
from node.metrics import NodeMetrics, S3Record
from node.services import Route, Routes

log = logging.getLogger("node.observe")

#: Grid handlers of the views themselves: left out of the trace (it would trace itself).
OWN_HANDLERS: Final = frozenset({HandlerID.NODE_TOP.name, HandlerID.NODE_TRACE.name})
KINDS: Final = ("grid", "s3")
SUBSCRIBER_CAPACITY = 10_000
BATCH = 256  # records per grid stream item, and per write to an HTTP client
HEARTBEAT = 1.0
PEER_TOP_TIMEOUT = 2.0
PEER_RETRY = 1.0
MAX_PEER_ITEM = 1 << 20
MIN_INTERVAL, MAX_INTERVAL = 0.2, 60.0


class BadQuery(ValueError):
    """A query parameter is wrong; the message says which and why."""


@dataclass(frozen=True)
class TraceFilter:
    """Which records a trace wants: by handler (or S3 API), peer, duration and kind."""

    handler: str = ""  # a grid handler or S3 API name, any case; "" for all
    peer: str = ""  # part of the grid peer's host, or of the S3 client's address
    min_duration: float = 0.0  # seconds
    kinds: tuple[str, ...] = KINDS

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> TraceFilter:
        """From an admin request's query, checking every value."""
        raw = query.get("min_duration", "") or "0"
        try:
            min_duration = float(raw)
        except ValueError:
            raise BadQuery(f"min_duration must be a number of seconds, not {raw!r}") from None
        if not math.isfinite(min_duration) or min_duration < 0:
            raise BadQuery(f"min_duration must be 0 or more seconds, not {raw!r}")
        kinds = tuple(k for k in (query.get("kind", "") or ",".join(KINDS)).split(",") if k)
        unknown = [k for k in kinds if k not in KINDS]
        if unknown or not kinds:
            raise BadQuery(f"kind must be grid, s3 or both (grid,s3), not {query.get('kind')!r}")
        return cls(query.get("handler", "")[:64], query.get("peer", "")[:256], min_duration, kinds)

    def to_dict(self) -> dict[str, Any]:
        return {"handler": self.handler, "peer": self.peer,
                "min_duration": self.min_duration, "kind": ",".join(self.kinds)}  # fmt: skip

    def matches(self, entry: Mapping[str, Any]) -> bool:
        """Whether a trace entry (see :func:`grid_entry`, :func:`s3_entry`) passes."""
        if entry["type"] not in self.kinds or entry["duration"] < self.min_duration:
            return False
        if self.handler:
            name = entry["handler"] if entry["type"] == "grid" else entry["api"]
            if name.lower() != self.handler.lower():
                return False
        if self.peer:
            where = entry["peer"] if entry["type"] == "grid" else entry["remote"]
            if self.peer not in where:
                return False
        return True


def grid_entry(node: str, record: CallRecord) -> dict[str, Any]:
    """A grid call record as a trace entry."""
    return {"type": "grid", "node": node, "time": time.time(), **record.as_dict()}


def s3_entry(node: str, record: S3Record) -> dict[str, Any]:
    """An S3 request as a trace entry."""
    return {"type": "s3", "node": node, "time": time.time(), **record.as_dict()}


@dataclass
class Subscriber:
    """One trace reader: a bounded queue of entries; what does not fit is counted, not kept."""

    filter: TraceFilter
    capacity: int = SUBSCRIBER_CAPACITY
    entries: collections.deque[dict[str, Any]] = field(default_factory=collections.deque)
    dropped: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, entry: dict[str, Any], *, filtered: bool = False) -> None:
        """Queue ``entry`` if it passes the filter (``filtered``: it already did, elsewhere)."""
        if not filtered and not self.filter.matches(entry):
            return
        if len(self.entries) >= self.capacity:
            self.dropped += 1
            return
        self.entries.append(entry)
        self.wake.set()

    async def take(self, timeout: float) -> list[dict[str, Any]]:
        """Up to :data:`BATCH` entries, waiting at most ``timeout`` for the first."""
        if not self.entries:
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.wake.wait()
        count = min(BATCH, len(self.entries))
        return [self.entries.popleft() for _ in range(count)]


class TraceHub:
    """This node's trace readers; it listens to the grid and the gateway only while it has any."""

    def __init__(self, node: str, manager: Manager, metrics: NodeMetrics) -> None:
        self.node = node
        self._manager = manager
        self._metrics = metrics
        self._subscribers: list[Subscriber] = []

    def subscribe(self, trace_filter: TraceFilter) -> Subscriber:
        subscriber = Subscriber(trace_filter)
        if not self._subscribers:
            self._manager.call_listeners.add(self._on_call)
            self._metrics.s3_listeners.append(self._on_s3)
        self._subscribers.append(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        if subscriber in self._subscribers:
            self._subscribers.remove(subscriber)
        if not self._subscribers:
            self._manager.call_listeners.remove(self._on_call)
            with contextlib.suppress(ValueError):
                self._metrics.s3_listeners.remove(self._on_s3)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def _on_call(self, record: CallRecord) -> None:
        if record.handler in OWN_HANDLERS:
            return
        entry = grid_entry(self.node, record)
        for subscriber in self._subscribers:
            subscriber.offer(entry)

    def _on_s3(self, record: S3Record) -> None:
        entry = s3_entry(self.node, record)
        for subscriber in self._subscribers:
            subscriber.offer(entry)


class TopView(Protocol):
    """What ``top`` reads of a node."""

    def top(self) -> dict[str, Any]: ...


def heal_summary(status: Mapping[str, Any]) -> dict[str, Any]:
    """The heal progress ``top`` shows, from ``HealingService.status()``."""
    mrf = status.get("mrf", {})
    current = status.get("scanner", {}).get("current") or {}
    drives = [
        {"drive": path, "scanned": t.get("objects_scanned", 0),
         "healed": t.get("objects_healed", 0), "failed": t.get("objects_failed", 0),
         "bucket": t.get("bucket", "")}
        for path, t in sorted(status.get("drives_healing", {}).items())
    ]  # fmt: skip
    return {
        "mrf_queued": mrf.get("queued", 0),
        "mrf_healed": mrf.get("healed", 0),
        "scanner_cycle": current.get("cycle", 0),
        "scanner_scanned": current.get("scanned", 0),
        "scanner_healed": current.get("healed", 0),
        "drives": drives,
    }


def _interval(query: Mapping[str, str]) -> tuple[float, int]:
    try:
        interval = float(query.get("interval", "") or "1")
        count = int(query.get("count", "") or "0")
    except ValueError:
        raise BadQuery("interval must be seconds and count a whole number") from None
    if not MIN_INTERVAL <= interval <= MAX_INTERVAL or count < 0:
        raise BadQuery(f"interval must be {MIN_INTERVAL}-{MAX_INTERVAL}s and count 0 or more")
    return interval, count


def _scope(query: Mapping[str, str]) -> bool:
    """True for the whole cluster (the default), False for this node only."""
    scope = query.get("scope", "") or "cluster"
    if scope not in ("cluster", "node"):
        raise BadQuery(f"scope must be cluster or node, not {scope!r}")
    return scope == "cluster"


def _take_peer_item(raw: bytes, into: Subscriber) -> int:
    """Queue the entries of one trace item from a peer; return the peer's dropped count.

    The peer is authenticated, but its item is still checked: a malformed one is ignored."""
    try:
        item = json.loads(raw) if len(raw) <= MAX_PEER_ITEM else {}
        entries = item["entries"]
        dropped = int(item["dropped"])
    except (ValueError, KeyError, TypeError):
        return 0
    if not isinstance(entries, list):
        return 0
    for entry in entries[:BATCH]:
        if isinstance(entry, dict) and entry.get("type") in KINDS:
            into.offer(entry, filtered=True)
    return max(0, dropped)


def _events_since(payload: bytes) -> int | None:
    """The ``events_since`` of a ``NODE_TOP`` payload (None: no events wanted)."""
    if not payload:
        return None
    try:
        since = json.loads(payload).get("events_since")
    except (ValueError, AttributeError):
        return None
    return since if isinstance(since, int) and since >= 0 else None


def _line(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), default=str).encode() + b"\n"


def json_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": message, "code": code}, status=status)


class ObserveService:
    """``top`` and ``trace``: the admin endpoints and the grid handlers behind them."""

    name = "observe"

    def __init__(self, node: str, manager: Manager, metrics: NodeMetrics, view: TopView,
                 journal: Journal | None = None) -> None:  # fmt: skip
        self.node = node
        self.manager = manager
        self.view = view
        self.journal = journal
        self.hub = TraceHub(node, manager, metrics)
        self._processes: dict[str, dict[str, Any]] = {}
        self._stopping = asyncio.Event()
        manager.register_single(HandlerID.NODE_TOP, self._grid_top)
        manager.register_stream(HandlerID.NODE_TRACE, self._grid_trace, out_capacity=8)

    async def start(self) -> None:
        return None

    def stop_streams(self) -> None:
        """End every open ``top`` and ``trace`` response (the node is shutting down)."""
        self._stopping.set()

    async def close(self) -> None:
        self.stop_streams()

    def routes(self) -> Routes:
        return Routes(admin=[Route("GET", "/top", self.top_route),
                             Route("GET", "/trace", self.trace_route)])  # fmt: skip

    def info(self) -> dict[str, Any]:
        return {"observe": {"trace_readers": self.hub.subscribers}}

    # --- top ----------------------------------------------------------------------------------

    def _own_top(self, events_since: int | None) -> dict[str, Any]:
        top = self.view.top()
        if events_since is not None and self.journal is not None:
            top["journal"] = self.journal.since(events_since)
        return top

    async def _grid_top(self, payload: bytes) -> bytes:
        return json.dumps(self._own_top(_events_since(payload)), default=str).encode()

    async def _peer_top(self, peer: str, events_since: int | None = None) -> dict[str, Any]:
        payload = b"" if events_since is None else json.dumps(
            {"events_since": events_since}).encode()  # fmt: skip
        try:
            raw = await self.manager.connection(peer).call(
                HandlerID.NODE_TOP, payload, timeout=PEER_TOP_TIMEOUT
            )
            answer = json.loads(raw)
        except CallError as exc:
            return {"node": peer, "error": str(exc)}
        except ValueError as exc:
            return {"node": peer, "error": f"bad answer: {exc}"}
        if not isinstance(answer, dict):
            return {"node": peer, "error": "bad answer: not an object"}
        if isinstance(answer.get("process"), dict):
            self._processes[peer] = answer["process"]
        return answer

    async def ask_process(self, peer: str) -> dict[str, Any] | None:
        """Ask ``peer`` for its ``top`` now; the process identity it reports (None: no answer)."""
        answer = await self._peer_top(peer)
        process = answer.get("process")
        return process if "error" not in answer and isinstance(process, dict) else None

    def process_of(self, peer: str) -> dict[str, Any] | None:
        """The process identity ``peer`` reported in its last ``top`` answer, if any."""
        return self._processes.get(peer)

    async def snapshot(
        self, cluster: bool, events_since: Mapping[str, int] | None = None
    ) -> dict[str, Any]:
        """This node's figures, and every peer's when ``cluster``. With ``events_since``
        (host -> event number), each node's answer also carries its journal after that number
        (a node left out of the mapping: from the start)."""
        since = None if events_since is None else events_since.get(self.node, 0)
        nodes = [self._own_top(since)]
        if cluster:
            nodes += await asyncio.gather(*(
                self._peer_top(p, None if events_since is None else events_since.get(p, 0))
                for p in self.manager.peers
            ))  # fmt: skip
        return {"time": time.time(), "nodes": nodes}

    async def top_route(self, request: web.Request) -> web.StreamResponse:
        try:
            interval, count = _interval(request.query)
            cluster = _scope(request.query)
        except BadQuery as exc:
            return json_error(400, "InvalidArgument", str(exc))
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        sent = 0
        try:
            while not self._stopping.is_set():
                started = loop.time()
                await response.write(_line(await self.snapshot(cluster)))
                sent += 1
                if count and sent >= count:
                    break
                await self._pause(interval - (loop.time() - started))
            await response.write_eof()
        except ConnectionError:
            pass  # the reader left
        return response

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, seconds)):
                await self._stopping.wait()

    # --- trace --------------------------------------------------------------------------------

    async def _grid_trace(self, stream: ServerStream) -> None:
        """A peer's trace reader: our matching entries, in batches, until it leaves."""
        try:
            raw = json.loads(stream.payload or b"{}")
            trace_filter = TraceFilter.from_query({k: str(v) for k, v in raw.items()})
        except (ValueError, AttributeError) as exc:
            raise ValueError(f"bad trace filter: {exc}") from None
        subscriber = self.hub.subscribe(trace_filter)
        reported = 0
        try:
            while True:
                batch = await subscriber.take(HEARTBEAT)
                if batch or subscriber.dropped != reported:
                    reported = subscriber.dropped
                    item = {"entries": batch, "dropped": reported}
                    await stream.send(json.dumps(item, default=str).encode())
        finally:
            self.hub.unsubscribe(subscriber)

    async def _follow_peer(self, peer: str, trace_filter: TraceFilter, into: Subscriber) -> None:
        """Forward a peer's trace into ``into`` while the request lasts, across reconnects."""
        conn = self.manager.connection(peer)
        payload = json.dumps(trace_filter.to_dict()).encode()
        while True:
            if not conn.is_connected:
                await conn.wait_change()
                continue
            reported = 0  # the peer's dropped count, as of its last item on this stream
            try:
                async with conn.stream(HandlerID.NODE_TRACE, payload) as stream:
                    async for raw in stream:
                        dropped = _take_peer_item(raw, into)
                        if dropped > reported:
                            into.dropped += dropped - reported
                            reported = dropped
            except CallError as exc:
                log.debug("trace from %s interrupted: %s", peer, exc)
            await asyncio.sleep(PEER_RETRY)

    async def trace_route(self, request: web.Request) -> web.StreamResponse:
        try:
            trace_filter = TraceFilter.from_query(request.query)
            cluster = _scope(request.query)
        except BadQuery as exc:
            return json_error(400, "InvalidArgument", str(exc))
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        subscriber = self.hub.subscribe(trace_filter)
        followers = set()
        if cluster:
            for peer in self.manager.peers:
                followers.add(asyncio.create_task(
                    self._follow_peer(peer, trace_filter, subscriber), name=f"trace {peer}"
                ))  # fmt: skip
        try:
            await self._write_trace(response, subscriber)
            await response.write_eof()
        except ConnectionError:
            pass  # the reader left
        finally:
            self.hub.unsubscribe(subscriber)
            for task in followers:
                task.cancel()
            await asyncio.gather(*followers, return_exceptions=True)
        return response

    async def _write_trace(self, response: web.StreamResponse, subscriber: Subscriber) -> None:
        loop = asyncio.get_running_loop()
        last_beat = loop.time()
        while not self._stopping.is_set():
            batch = await subscriber.take(HEARTBEAT)
            if batch:
                await response.write(b"".join(_line(entry) for entry in batch))
            if loop.time() - last_beat >= HEARTBEAT:
                last_beat = loop.time()
                beat = {"type": "heartbeat", "node": self.node, "time": time.time(),
                        "dropped": subscriber.dropped}  # fmt: skip
                await response.write(_line(beat))


__all__ = [
    "KINDS",
    "BadQuery",
    "ObserveService",
    "Subscriber",
    "TopView",
    "TraceFilter",
    "TraceHub",
    "grid_entry",
    "heal_summary",
    "s3_entry",
]
