"""Prometheus metrics of one node: the grid connections, the drives and the S3 requests.

Each node has its own :class:`~prometheus_client.CollectorRegistry` (never the global one, so
several nodes can live in one test process). Grid and drive figures are read when ``/metrics``
is scraped, from ``manager.stats()`` and the drives' ``is_online()``; nothing is counted twice.
S3 requests are counted by an aiohttp middleware, by operation and HTTP status.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from minigrid.manager import Manager
from node.s3.routes import operation_for
from storage.drive import Drive

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_CONNECTION_STATES = ("connected", "connecting", "unconnected", "error", "shutdown")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def s3_operation(method: str, path: str, query: Iterable[str]) -> str:
    """The S3 operation a request is (for the metric label), by the gateway's own routing
    table: an operation it builds or one S3 has that it answers 501, else ``"Other"``."""
    return operation_for(method, path, query)


class _ClusterCollector(Collector):
    """Reads the grid's and the drives' state at scrape time."""

    def __init__(
        self, manager: Manager, drives: Sequence[Drive], ready: Callable[[], bool]
    ) -> None:
        self._manager = manager
        self._drives = drives
        self._ready = ready

    def collect(self) -> Iterable[Metric]:
        stats = self._manager.stats()
        state = GaugeMetricFamily(
            "minigrid_grid_connection_state",
            "1 for the grid connection's current state",
            labels=["peer", "state"],
        )
        connected = GaugeMetricFamily(
            "minigrid_grid_connected", "1 while the grid connection is up", labels=["peer"]
        )
        gauges = {
            "rtt_last": ("minigrid_grid_rtt_seconds", "last ping round-trip time"),
            "rtt_p50": ("minigrid_grid_rtt_p50_seconds", "median of recent round-trip times"),
            "last_seen_age": ("minigrid_grid_last_seen_age_seconds", "since any message came"),
            "peer_loop_lag": ("minigrid_grid_peer_loop_lag_seconds", "the peer's loop lag"),
            "inflight_calls": ("minigrid_grid_inflight_calls", "calls waiting for a reply"),
            "inflight_streams": ("minigrid_grid_inflight_streams", "streams open"),
            "queue_bytes": ("minigrid_grid_queue_bytes", "bytes queued to send"),
        }
        counters = {
            "bytes_in": ("minigrid_grid_received_bytes", "bytes received"),
            "bytes_out": ("minigrid_grid_sent_bytes", "bytes sent"),
            "reconnects": ("minigrid_grid_reconnects", "sessions after the first"),
        }
        families: dict[str, Any] = {
            key: GaugeMetricFamily(name, text, labels=["peer"])
            for key, (name, text) in gauges.items()
        }
        families.update(
            {
                key: CounterMetricFamily(name, text, labels=["peer"])
                for key, (name, text) in counters.items()
            }
        )
        for peer, conn in sorted(stats.items()):
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
        online = GaugeMetricFamily(
            "minigrid_drive_online", "1 while the drive is usable", labels=["drive"]
        )
        for drive in self._drives:
            online.add_metric([drive.endpoint], 1.0 if drive.is_online() else 0.0)
        yield online
        yield GaugeMetricFamily(
            "minigrid_node_ready", "1 while a write quorum of drives is reachable",
            value=1.0 if self._ready() else 0.0,
        )  # fmt: skip


class NodeMetrics:
    """The metrics of one node, with the S3 middleware and the ``/metrics`` handler."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.s3_requests = Counter(
            "minigrid_s3_requests",
            "S3 requests answered, by operation and HTTP status",
            ["op", "status"],
            registry=self.registry,
        )
        self.s3_seconds = Histogram(
            "minigrid_s3_request_seconds",
            "time to answer an S3 request (headers and body)",
            ["op"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )

    def follow(self, manager: Manager, drives: Sequence[Drive], ready: Callable[[], bool]) -> None:
        """Report the grid connections and these drives from now on."""
        self.registry.register(_ClusterCollector(manager, drives, ready))

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Count every request outside ``/minigrid/`` and ``/metrics`` as an S3 request."""
        path = request.path
        if path.startswith("/minigrid/") or path == "/metrics":
            return await handler(request)
        op = s3_operation(request.method, path, request.query)
        loop_time = asyncio.get_running_loop().time
        started = loop_time()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            self.s3_requests.labels(op, str(status)).inc()
            self.s3_seconds.labels(op).observe(loop_time() - started)

    def render(self) -> bytes:
        return generate_latest(self.registry)


__all__ = ["CONTENT_TYPE", "NodeMetrics", "s3_operation"]
