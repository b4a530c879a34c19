"""Prometheus metrics of one node: the grid, the event loop, the drives, S3 and healing.

Each node has its own :class:`~prometheus_client.CollectorRegistry` (never the global one, so
several nodes can live in one test process). Names follow Prometheus conventions: a
``minigrid_`` prefix, base units in the name (``_seconds``, ``_bytes``), ``_total`` on
counters. Every series is listed in ``docs/operations.md``.

Two kinds of figures:

- **events**, counted as they happen: S3 requests (an aiohttp middleware, which also hands each
  request's :class:`S3Record` to the trace), grid calls and streams (``Manager.call_listeners``),
  grid disconnects by cause (``Manager.state_listeners``), event-loop lag samples
  (``LoopMonitor.observers``), and the operations of this node's drives
  (``LocalDrive.observers``);
- **state**, read when ``/metrics`` is scraped: every grid connection's ``ConnStats``, every
  drive's online flag, this node's drives' capacity (refreshed by :meth:`NodeMetrics.refresh`
  just before a scrape), and the heal services' progress. Nothing is counted twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from minigrid import Connection, State
from minigrid.liveness import CAUSES, cause_kind
from minigrid.manager import Manager
from minigrid.trace import CallRecord
from node.s3.routes import operation_for
from storage.drive import DiskInfo, Drive
from storage.errors import StorageError
from storage.local import LocalDrive

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# No ``*_created`` series: they double the output and nobody graphs them. (Process-wide, and
# only ever set one way.)
disable_created_metrics()  # type: ignore[no-untyped-call]
_CONNECTION_STATES = tuple(state.value for state in State)
#: Disconnect causes counted by name; any other is counted as "other" (bounded labels).
DISCONNECT_CAUSES = (*CAUSES, "protocol-error", "error", "other")
#: How long a scrape waits for this node's drives to say how full they are.
CAPACITY_TIMEOUT = 2.0

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def s3_operation(method: str, path: str, query: Iterable[str]) -> str:
    """The S3 operation a request is (for the metric label), by the gateway's own routing
    table: an operation it builds or one S3 has that it answers 501, else ``"Other"``."""
    return operation_for(method, path, query)


@dataclass(frozen=True, slots=True)
class S3Record:
    """One S3 request this node answered (for the trace)."""

    api: str  # the S3 operation, "PutObject"
    method: str
    path: str  # the request path: /bucket/key
    status: int
    duration: float  # seconds, from the request head to the end of the response
    request_bytes: int  # the request body's Content-Length (0 when unknown)
    response_bytes: int
    remote: str  # the client's address

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- state read at scrape time -----------------------------------------------------------------

_GRID_GAUGES = {
    "rtt_last": ("minigrid_grid_rtt_seconds", "last ping round-trip time"),
    "rtt_p50": ("minigrid_grid_rtt_p50_seconds", "median of recent round-trip times"),
    "rtt_max": ("minigrid_grid_rtt_max_seconds", "largest round-trip time seen"),
    "last_seen_age": ("minigrid_grid_last_seen_age_seconds", "since any message came"),
    "peer_loop_lag": ("minigrid_grid_peer_loop_lag_seconds", "the peer's loop lag (its pongs)"),
    "connected_for": ("minigrid_grid_connected_seconds", "age of the current session"),
    "inflight_calls": ("minigrid_grid_inflight_calls", "our calls waiting for a reply"),
    "inflight_handlers": ("minigrid_grid_inflight_handlers", "the peer's calls running here"),
    "inflight_streams": ("minigrid_grid_inflight_streams", "streams open, both directions"),
    "queue_messages": ("minigrid_grid_queue_messages", "messages queued to send"),
    "queue_bytes": ("minigrid_grid_queue_bytes", "data bytes queued to send"),
    "held_bytes": ("minigrid_grid_held_bytes", "bytes from the peer held here"),
}
_GRID_COUNTERS = {
    "bytes_in": ("minigrid_grid_received_bytes", "bytes received"),
    "bytes_out": ("minigrid_grid_sent_bytes", "bytes sent"),
    "messages_in": ("minigrid_grid_received_messages", "messages received"),
    "messages_out": ("minigrid_grid_sent_messages", "messages sent"),
    "reconnects": ("minigrid_grid_reconnects", "sessions after the first"),
    "dial_attempts": ("minigrid_grid_dial_attempts", "dials made (dialing side only)"),
    "protocol_errors": ("minigrid_grid_protocol_errors", "messages refused as protocol errors"),
    "refused": ("minigrid_grid_refused", "calls and streams refused as busy"),
}


def _grid_families(manager: Manager) -> Iterable[Metric]:
    state = GaugeMetricFamily(
        "minigrid_grid_connection_state",
        "1 for the grid connection's current state",
        labels=["peer", "state"],
    )
    connected = GaugeMetricFamily(
        "minigrid_grid_connected", "1 while the grid connection is up", labels=["peer"]
    )
    families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
        key: GaugeMetricFamily(name, text, labels=["peer"])
        for key, (name, text) in _GRID_GAUGES.items()
    }
    for key, (name, text) in _GRID_COUNTERS.items():
        families[key] = CounterMetricFamily(name, text, labels=["peer"])
    for peer, conn in sorted(manager.stats().items()):
        for name in _CONNECTION_STATES:
            state.add_metric([peer, name], 1.0 if conn.state == name else 0.0)
        connected.add_metric([peer], 1.0 if conn.state == "connected" else 0.0)
        values = conn.as_dict()
        for key, family in families.items():
            value = values.get(key)
            if value is not None:
                family.add_metric([peer], float(value))
    yield state
    yield connected
    yield from families.values()


def _heal_families(status: Mapping[str, Any], endpoints: Mapping[str, str]) -> Iterable[Metric]:
    """MRF, scanner and drive-heal progress from ``HealingService.status()``; a drive is
    labelled by its endpoint (``endpoints``: path to endpoint), like every drive series."""
    mrf = status.get("mrf", {})
    yield GaugeMetricFamily("minigrid_mrf_queued_objects", "objects waiting in the MRF queue",
                            value=float(mrf.get("queued", 0)))  # fmt: skip
    yield GaugeMetricFamily("minigrid_mrf_parked_objects", "objects waiting for drives to return",
                            value=float(mrf.get("parked", 0)))  # fmt: skip
    results = CounterMetricFamily(
        "minigrid_mrf_objects", "objects MRF handled, by result", labels=["result"]
    )
    for result in ("reported", "healed", "clean", "failed", "dropped"):
        results.add_metric([result], float(mrf.get(result, 0)))
    yield results
    yield CounterMetricFamily("minigrid_mrf_healed_bytes", "bytes MRF wrote back",
                              value=float(mrf.get("bytes_healed", 0)))  # fmt: skip
    scanner = status.get("scanner", {})
    current = scanner.get("current") or {}
    yield GaugeMetricFamily("minigrid_scanner_cycle", "the scanner's current cycle number",
                            value=float(current.get("cycle", 0)))  # fmt: skip
    cycle = GaugeMetricFamily(
        "minigrid_scanner_cycle_objects",
        "objects of the current cycle so far, by what happened to them",
        labels=["stage"],
    )
    for stage in ("scanned", "checked", "healed", "failed"):
        cycle.add_metric([stage], float(current.get(stage, 0)))
    yield cycle
    last = scanner.get("last") or {}
    yield GaugeMetricFamily("minigrid_scanner_last_cycle_seconds", "length of the last full cycle",
                            value=float(last.get("seconds", 0)))  # fmt: skip
    healing = status.get("drives_healing", {})
    drives = GaugeMetricFamily(
        "minigrid_drive_heal_objects",
        "objects of a drive heal in progress, by what happened to them",
        labels=["drive", "stage"],
    )
    for path, tracker in sorted(healing.items()):
        for stage in ("scanned", "healed", "failed", "skipped"):
            value = float(tracker.get(f"objects_{stage}", 0))
            drives.add_metric([endpoints.get(path, path), stage], value)
    yield drives
    yield GaugeMetricFamily("minigrid_drives_healing", "this node's drives being healed",
                            value=float(len(healing)))  # fmt: skip


class _NodeCollector(Collector):
    """Reads the grid's, the drives' and the healers' state at scrape time."""

    def __init__(self, metrics: NodeMetrics, view: MetricsView) -> None:
        self._metrics = metrics
        self._view = view

    def collect(self) -> Iterable[Metric]:
        view = self._view
        yield from _grid_families(view.manager)
        online = GaugeMetricFamily(
            "minigrid_drive_online", "1 while the drive is usable (this node's view)",
            labels=["drive"],
        )  # fmt: skip
        for drive in view.drives:
            online.add_metric([drive.endpoint], 1.0 if drive.is_online() else 0.0)
        yield online
        yield from self._metrics.local_drive_families(view.local_drives)
        yield GaugeMetricFamily(
            "minigrid_node_ready", "1 while a write quorum of drives is reachable",
            value=1.0 if view.ready() else 0.0,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "minigrid_s3_inflight_requests", "S3 requests being answered now",
            value=float(view.s3_inflight()),
        )  # fmt: skip
        status = view.heal_status()
        if status is not None:
            endpoints = {path: drive.endpoint for path, drive in view.local_drives.items()}
            yield from _heal_families(status, endpoints)


@dataclass
class MetricsView:
    """What the metrics read from the node at scrape time."""

    manager: Manager
    drives: Sequence[Drive]
    local_drives: Mapping[str, LocalDrive]
    ready: Callable[[], bool]
    s3_inflight: Callable[[], int]
    heal_status: Callable[[], Mapping[str, Any] | None]


class NodeMetrics:
    """The metrics of one node, with the S3 middleware and the drive and grid hooks."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        #: Called with every :class:`S3Record` (the trace listens here). Must be quick.
        self.s3_listeners: list[Callable[[S3Record], None]] = []
        self.s3_requests = Counter(
            "minigrid_s3_requests", "S3 requests answered, by API and HTTP status",
            ["api", "status"], registry=registry,
        )  # fmt: skip
        self.s3_seconds = Histogram(
            "minigrid_s3_request_seconds", "time to answer an S3 request (headers and body)",
            ["api"], registry=registry, buckets=LATENCY_BUCKETS,
        )  # fmt: skip
        self.s3_received = Counter("minigrid_s3_received_bytes", "S3 request body bytes",
                                   ["api"], registry=registry)  # fmt: skip
        self.s3_sent = Counter("minigrid_s3_sent_bytes", "S3 response body bytes", ["api"],
                               registry=registry)  # fmt: skip
        self.grid_calls = Counter(
            "minigrid_grid_calls", "grid calls and streams ended, by handler and status",
            ["handler", "direction", "kind", "status"], registry=registry,
        )  # fmt: skip
        self.grid_call_seconds = Histogram(
            "minigrid_grid_call_seconds", "how long grid calls and streams took",
            ["handler", "direction"], registry=registry, buckets=LATENCY_BUCKETS,
        )  # fmt: skip
        self.grid_disconnects = Counter(
            "minigrid_grid_disconnects", "grid sessions lost, by peer and cause",
            ["peer", "cause"], registry=registry,
        )  # fmt: skip
        self.loop_lag = Histogram(
            "minigrid_loop_lag_seconds", "how late the event loop ran a 100 ms timer",
            registry=registry, buckets=LAG_BUCKETS,
        )  # fmt: skip
        self.drive_seconds = Histogram(
            "minigrid_drive_operation_seconds", "time of operations on this node's drives",
            ["drive", "op"], registry=registry, buckets=LATENCY_BUCKETS,
        )  # fmt: skip
        self.drive_errors = Counter(
            "minigrid_drive_errors", "operations this node's drives failed (I/O errors)",
            ["drive", "op", "error"], registry=registry,
        )  # fmt: skip
        self._capacity: dict[str, DiskInfo | None] = {}
        self._hooks: list[Callable[[], None]] = []

    # --- wiring -------------------------------------------------------------------------------

    def follow(self, view: MetricsView) -> None:
        """Count this node's events and report its state from now on (:meth:`close` stops)."""
        manager = view.manager
        for peer in manager.peers:
            for cause in DISCONNECT_CAUSES:
                self.grid_disconnects.labels(peer, cause)  # every series exists from the start
        manager.call_listeners.add(self._on_call)
        manager.state_listeners.append(self._on_state)
        manager.monitor.observers.append(self.loop_lag.observe)
        self._hooks.append(lambda: manager.call_listeners.remove(self._on_call))
        self._hooks.append(lambda: _discard(manager.state_listeners, self._on_state))
        self._hooks.append(lambda: _discard(manager.monitor.observers, self.loop_lag.observe))
        for drive in view.local_drives.values():
            observer = self._drive_observer(drive.endpoint)
            drive.observers.append(observer)
            self._hooks.append(functools.partial(_discard, drive.observers, observer))
        self.registry.register(_NodeCollector(self, view))
        self._view = view

    def close(self) -> None:
        """Stop listening to the grid and the drives."""
        for undo in self._hooks:
            undo()
        self._hooks.clear()

    def _on_call(self, record: CallRecord) -> None:
        self.grid_calls.labels(record.handler, record.direction, record.kind, record.status).inc()
        self.grid_call_seconds.labels(record.handler, record.direction).observe(record.duration)

    def _on_state(self, conn: Connection, old: State, new: State, cause: str) -> None:
        if old is State.CONNECTED and new is State.ERROR:
            kind = cause_kind(cause)
            self.grid_disconnects.labels(
                conn.remote, kind if kind in DISCONNECT_CAUSES else "other"
            ).inc()

    def _drive_observer(self, endpoint: str) -> Callable[[str, float, str], None]:
        seconds, errors = self.drive_seconds, self.drive_errors

        def observe(op: str, elapsed: float, error: str) -> None:
            seconds.labels(endpoint, op).observe(elapsed)
            if error:
                errors.labels(endpoint, op, error).inc()

        return observe

    # --- drives' capacity ---------------------------------------------------------------------

    async def refresh(self) -> None:
        """Ask this node's drives how full they are (before a scrape), with a timeout."""
        view = getattr(self, "_view", None)
        if view is None:
            return
        drives = list(view.local_drives.values())
        results = await asyncio.gather(*(_disk_info(d) for d in drives))
        self._capacity = {d.endpoint: info for d, info in zip(drives, results, strict=True)}

    def local_drive_families(self, drives: Mapping[str, LocalDrive]) -> Iterable[Metric]:
        state = GaugeMetricFamily(
            "minigrid_drive_state", "1 for this node's drive's current state",
            labels=["drive", "state"],
        )  # fmt: skip
        sizes = {
            "total": GaugeMetricFamily(
                "minigrid_drive_total_bytes", "drive size", labels=["drive"]
            ),
            "free": GaugeMetricFamily("minigrid_drive_free_bytes", "space left", labels=["drive"]),
            "used": GaugeMetricFamily("minigrid_drive_used_bytes", "space used", labels=["drive"]),
        }
        for drive in drives.values():
            info = self._capacity.get(drive.endpoint)
            if not drive.is_online() or (drive.endpoint in self._capacity and info is None):
                current = "offline"
            else:
                current = "healing" if drive.healing else "ok"
            for name in ("ok", "healing", "offline"):
                state.add_metric([drive.endpoint, name], 1.0 if name == current else 0.0)
            if info is not None:
                for key, family in sizes.items():
                    family.add_metric([drive.endpoint], float(getattr(info, key)))
        yield state
        yield from sizes.values()

    # --- S3 -----------------------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Count and time every request outside ``/minigrid/`` and ``/metrics`` as S3."""
        path = request.path
        if path.startswith("/minigrid/") or path == "/metrics":
            return await handler(request)
        loop_time = asyncio.get_running_loop().time
        started = loop_time()
        status = 500
        sent = 0
        try:
            response = await handler(request)
            status = response.status
            sent = response.body_length if response.prepared else response.content_length or 0
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            self._count(request, status, loop_time() - started, sent)

    def _count(self, request: web.Request, status: int, elapsed: float, sent: int) -> None:
        api = s3_operation(request.method, request.path, request.query)
        received = request.content_length or 0
        self.s3_requests.labels(api, str(status)).inc()
        self.s3_seconds.labels(api).observe(elapsed)
        if received:
            self.s3_received.labels(api).inc(received)
        if sent:
            self.s3_sent.labels(api).inc(sent)
        if self.s3_listeners:
            record = S3Record(api, request.method, request.path, status, elapsed, received, sent,
                              request.remote or "")  # fmt: skip
            for listener in list(self.s3_listeners):
                listener(record)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def s3_totals(self) -> dict[str, Any]:
        """Every S3 request answered so far, summed over APIs (for ``top`` and the console,
        which turn two readings into rates): requests, server errors (5xx), body bytes each
        way, and the latency histogram: cumulative counts per bucket bound and in all."""
        requests = errors = 0.0
        for sample in _samples(self.s3_requests):
            if sample.name.endswith("_total"):
                requests += sample.value
                errors += sample.value if sample.labels.get("status", "").startswith("5") else 0
        buckets = dict.fromkeys(LATENCY_BUCKETS, 0.0)
        observed = 0.0
        for sample in _samples(self.s3_seconds):
            bound = sample.labels.get("le", "")
            if sample.name.endswith("_count"):
                observed += sample.value
            elif sample.name.endswith("_bucket") and bound != "+Inf":
                buckets[float(bound)] = buckets.get(float(bound), 0.0) + sample.value
        return {
            "requests": int(requests), "errors": int(errors),
            "received_bytes": int(sum(s.value for s in _samples(self.s3_received)
                                      if s.name.endswith("_total"))),
            "sent_bytes": int(sum(s.value for s in _samples(self.s3_sent)
                                  if s.name.endswith("_total"))),
            "latency_le": list(LATENCY_BUCKETS),
            "latency_counts": [int(buckets[b]) for b in LATENCY_BUCKETS],
            "latency_total": int(observed),
        }  # fmt: skip


async def _disk_info(drive: LocalDrive) -> DiskInfo | None:
    if not drive.is_online():
        return None
    try:
        async with asyncio.timeout(CAPACITY_TIMEOUT):
            return await drive.disk_info()
    except (TimeoutError, StorageError):
        return None


def _samples(metric: Collector) -> Iterable[Any]:
    for family in metric.collect():
        yield from family.samples


def _discard(items: list[Any], item: object) -> None:
    with contextlib.suppress(ValueError):
        items.remove(item)


__all__ = [
    "CONTENT_TYPE",
    "DISCONNECT_CAUSES",
    "MetricsView",
    "NodeMetrics",
    "S3Record",
    "s3_operation",
]
