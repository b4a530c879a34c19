"""The node process: one aiohttp server on one port with the grid, S3, health, admin and metrics.

Startup, in order (``minigrid node run`` calls :func:`run_node`):

1. bind the listening socket first (or take the one ``cluster up`` passed down), so a port that
   is taken fails at once, and peers that dial early wait in the accept queue;
2. open this node's drives (emptying their temporary areas) and format the blank ones with the
   planned format (:func:`node.config.planned_formats`); a drive that holds another
   deployment or another slot stops the node with a clear error;
3. start the grid (``Manager``), serve the local drives on it (``serve_drives``) and follow the
   peers (``PeerTable``); every other node's drives become ``RemoteDrive``s;
4. build the object layer over the cluster-wide drive list, in the same order on every node;
5. serve: the node's own routes first, then the S3 gateway's catch-all routes, behind the HTTP
   limits of :mod:`node.http_limits` (connection cap, header timeout, accept-error log).

The node is *ready* when every erasure set has a write quorum of drives online. Each change of
readiness is logged once, like the grid's and the peer table's state changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import ssl
import sys
import time
from typing import Any

from aiohttp import web

from minigrid import Manager
from minigrid.tls import TLSConfigError, client_context, server_context
from node.admin import AdminAuth, AdminService, drive_reports, unknown_admin_route
from node.config import NodeConfig, planned_formats
from node.console import ConsoleService
from node.faults import FaultService
from node.freeze import FreezeService
from node.grid import GridService
from node.healing import HealingService
from node.http_limits import AcceptErrorLog, ServerLimits
from node.journal import Journal, JournalHandler
from node.logs import formatter as log_formatter
from node.metrics import MetricsView, NodeMetrics
from node.observe import ObserveService, heal_summary
from node.procident import ProcessIdentity
from node.s3.gateway import S3Gateway
from node.services import ADMIN_PREFIX, Service
from storage.drive import Drive
from storage.errors import StorageError, UnformattedDrive
from storage.format import FormatInfo
from storage.local import LocalDrive
from storage.objects import ObjectLayer
from storage.peers import PeerTable
from storage.remote import qualified_endpoint

log = logging.getLogger("node")

#: A node's files (drives, logs) are for its owner only.
PRIVATE_UMASK = 0o077
SHUTDOWN_TIMEOUT = 10.0


class NodeError(Exception):
    """The node cannot start; the message says what to fix."""


def listen_socket(config: NodeConfig) -> socket.socket:
    """The node's listening socket: the inherited ``listen_fd``, or a fresh bind."""
    if config.listen_fd is not None:
        sock = socket.socket(fileno=config.listen_fd)
        sock.setblocking(False)
        return sock
    host, port = config.listen_address()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise NodeError(f"port {port} on {host} is already in use") from exc
        raise NodeError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def tls_contexts(config: NodeConfig) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    """(the context to serve with, the context to dial peers with); both None without TLS."""
    if not config.tls:
        return None, None
    try:
        return server_context(config.tls_cert, config.tls_key), client_context(config.tls_ca)
    except TLSConfigError as exc:
        raise NodeError(str(exc)) from exc


class Node:
    """One node of the cluster: the composition root. ``await start()``, then ``await close()``.

    It builds the engine (local drives, the grid manager and its peer table, remote drives, the
    object layer) and runs the services over it, in this order, closing them in reverse:

    1. :class:`~node.grid.GridService`: the grid, the drive service on it, the peer table;
    2. :class:`~node.healing.HealingService`: MRF, the scanner and drive replacement;
    3. :class:`~node.admin.AdminService`: health checks, ``/metrics``, info, config;
       :class:`~node.observe.ObserveService`: ``admin top`` and ``admin trace``;
       :class:`~node.freeze.FreezeService` and :class:`~node.faults.FaultService`: fault
       injection (refused without ``--allow-faults``);
       :class:`~node.console.ConsoleService`: the live web console at ``/minigrid/console``;
    4. :class:`~node.s3.gateway.S3Gateway`: the S3 API (its catch-all routes are served last).
    """

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.layout = config.layout
        self.formats: list[FormatInfo] = planned_formats(self.layout)
        self.metrics = NodeMetrics()
        self.journal = Journal()
        self.identity = ProcessIdentity.current()
        self.started_monotonic = time.monotonic()
        self.local_drives: dict[str, LocalDrive] = {}
        self.drives: list[Drive] = []
        self.services: list[Service] = []
        self.grid: GridService | None = None
        self.layer: ObjectLayer | None = None
        self.gateway: S3Gateway | None = None
        self.healing: HealingService | None = None
        self.observe: ObserveService | None = None
        self.console: ConsoleService | None = None
        self.http_limits = ServerLimits(config.max_connections, config.header_timeout)
        self._stack = contextlib.AsyncExitStack()
        self._runner: web.AppRunner | None = None
        self._was_ready: bool | None = None
        self._blank: list[str] = []  # local drives this start formatted

    @property
    def manager(self) -> Manager | None:
        return self.grid.manager if self.grid is not None else None

    @property
    def peers(self) -> PeerTable | None:
        return self.grid.peers if self.grid is not None else None

    @property
    def addresses(self) -> list[Any]:
        """Where the HTTP server listens (``(host, port, ...)`` per socket)."""
        return list(self._runner.addresses) if self._runner is not None else []

    # --- startup ------------------------------------------------------------------------------

    async def start(self) -> None:
        config = self.config
        server_tls, client_tls = tls_contexts(config)
        sock = listen_socket(config)
        self._keep_journal()
        try:
            await self._open_local_drives()
            self.grid = GridService(config, self.local_drives, client_tls)
            await self._run(self.grid)
            self.drives = self._cluster_drives(self.grid.peers)
            sets = [[self.drives[p] for p in positions] for positions in self.layout.sets()]
            self.layer = ObjectLayer(
                sets,
                parity=self.layout.parity,
                deployment_id=self.layout.deployment_id,
                rejoin=self.grid.peers.rejoin,
            )
            self.gateway = self._gateway(self.layer)
            self.healing = self._healing(self.layer, self.grid.peers, self.gateway)
            await self._run(self.healing)
            await self._run(AdminService(self, self.gateway.handle))
            self.observe = ObserveService(config.me.url, self.grid.manager, self.metrics, self,
                                          self.journal)  # fmt: skip
            await self._run(self.observe)
            await self._run(FreezeService(config.allow_faults, self.grid.manager.peers,
                                          self.observe.ask_process,
                                          self.observe.process_of))  # fmt: skip
            await self._run(FaultService(config.allow_faults, self.grid.manager,
                                         self.local_drives))  # fmt: skip
            self.console = self._console(self.observe, self.grid.manager, client_tls)
            await self._run(self.console)
            await self._run(self.gateway)
            self._follow_metrics(self.grid.manager, self.gateway, self.healing)
            self.grid.manager.state_listeners.append(lambda *_: self._log_readiness())
            await self._serve(sock, server_tls)
        except BaseException:
            sock.close()
            await self.close()
            raise
        log.info(
            "node %d of %d serving %s: %d drives here, %d in %d set(s) of %d (parity %d), "
            "profile %s, %s%s",
            config.node, len(config.nodes), config.me.url, len(self.local_drives),
            len(self.drives), self.layout.set_count, self.layout.set_drive_count,
            self.layout.parity, config.profile, "TLS" if config.tls else "plaintext (no TLS)",
            ", FAULT INJECTION ALLOWED" if config.allow_faults else "",
        )  # fmt: skip
        self._log_readiness()

    def _follow_metrics(
        self, manager: Manager, gateway: S3Gateway, healing: HealingService
    ) -> None:
        view = MetricsView(
            manager=manager, drives=self.drives, local_drives=self.local_drives,
            ready=lambda: bool(self.ready), s3_inflight=lambda: gateway.inflight,
            heal_status=healing.status,
        )  # fmt: skip
        self.metrics.follow(view)
        self._stack.callback(self.metrics.close)

    def _console(self, observe: ObserveService, manager: Manager,
                 client_tls: ssl.SSLContext | None) -> ConsoleService:  # fmt: skip
        faults = any(service.name == "faults" for service in self.services)
        return ConsoleService(self.config, observe, self.drive_states,
                              lambda: manager.instance_id, client_tls,
                              faults_built=faults)  # fmt: skip

    def _keep_journal(self) -> None:
        """Keep this node's recent log events for the console (:mod:`node.journal`)."""
        handler = JournalHandler(self.journal)
        root = logging.getLogger()
        root.addHandler(handler)
        self._stack.callback(root.removeHandler, handler)

    async def _run(self, service: Service) -> None:
        """Start a service; it is closed (in reverse order) by :meth:`close`."""
        self._stack.push_async_callback(service.close)
        self.services.append(service)
        await service.start()

    def _gateway(self, layer: ObjectLayer) -> S3Gateway:
        config = self.config
        credentials = {config.access_key: config.secret_key}
        credentials[config.admin_access_key] = config.admin_secret_key
        return S3Gateway(layer, credentials, region=config.region, body_timeout=config.body_timeout)

    def _healing(self, layer: ObjectLayer, peers: PeerTable, gateway: S3Gateway) -> HealingService:
        config = self.config
        by_path = {path: self.formats[p] for p, (owner, path) in enumerate(self.layout.drives)
                   if owner == config.node}  # fmt: skip
        healing = HealingService(
            layer, peers, self.local_drives, by_path,
            inflight=lambda: gateway.inflight, speed=config.heal_speed, deep=config.scanner_deep,
            unsafe_inline=config.unsafe_inline_heal,
            unsafe_slice_mib=config.unsafe_heal_slice_mib,
            drive_check_every=config.drive_check_interval,
            scanner_pause=config.scanner_interval, mrf_delay=config.mrf_delay,
            stale_upload_age=config.stale_upload_age,
        )  # fmt: skip
        for path in self._blank:
            healing.replaced(path)
        return healing

    async def _serve(self, sock: socket.socket, server_tls: ssl.SSLContext | None) -> None:
        """Serve every service's routes on the node's one port, behind the HTTP limits."""
        app = web.Application(middlewares=[self.metrics.middleware])
        observe, console = self.observe, self.console
        if observe is not None:

            async def end_live_views(_app: web.Application) -> None:
                observe.stop_streams()  # else a reader of top or trace holds the shutdown up
                if console is not None:
                    console.stop_streams()  # and so would an open console page

            app.on_shutdown.append(end_live_views)
        admin = AdminAuth(self.config)
        for service in self.services:
            routes = service.routes()
            for route in routes.admin:
                app.router.add_route(route.method, ADMIN_PREFIX + route.path,
                                     admin.guard(route.handler))  # fmt: skip
        app.router.add_route("*", ADMIN_PREFIX + "/{rest:.*}", admin.guard(unknown_admin_route))
        for service in self.services:
            for route in service.routes().public:
                app.router.add_route(route.method, route.path, route.handler,
                                     expect_handler=route.expect_handler)  # fmt: skip
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, **self.http_limits.runner_kwargs()
        )
        self._stack.push_async_callback(self._stop_http)
        await self._runner.setup()
        accept_errors = AcceptErrorLog(asyncio.get_running_loop())
        self._stack.callback(accept_errors.close)
        await self.http_limits.serve(self._runner, sock, ssl_context=server_tls)

    async def _stop_http(self) -> None:
        if self._runner is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SHUTDOWN_TIMEOUT):
                    await self._runner.cleanup()

    async def _open_local_drives(self) -> None:
        """Open this node's drives and give each blank one its planned format."""
        config = self.config
        if not config.fsync:
            log.warning("fsync is off: a power cut can lose writes that were acknowledged")
        for position, (owner, path) in enumerate(self.layout.drives):
            if owner != config.node:
                continue
            endpoint = qualified_endpoint(config.host, path)
            try:
                drive = await LocalDrive.open(path, endpoint, fsync=config.fsync)
            except (OSError, StorageError) as exc:
                raise NodeError(f"cannot open drive {path}: {exc}") from exc
            if await self._check_format(drive, self.formats[position], position):
                self._blank.append(path)
            self.local_drives[path] = drive

    @staticmethod
    async def _check_format(drive: LocalDrive, planned: FormatInfo, position: int) -> bool:
        """Check a drive's format; format a blank one (and say so: it must be healed)."""
        try:
            found = await drive.read_format()
        except UnformattedDrive:
            await drive.write_format(planned)
            log.info("formatted drive %s (position %d)", drive.endpoint, position)
            return True
        except StorageError as exc:
            raise NodeError(f"drive {drive.root}: cannot read its format: {exc}") from exc
        if found.deployment_id != planned.deployment_id:
            raise NodeError(
                f"drive {drive.root} belongs to deployment {found.deployment_id}, not "
                f"{planned.deployment_id}: wipe it or point the node at the right drives"
            )
        if found.drive_id != planned.drive_id or not found.same_layout(planned):
            raise NodeError(
                f"drive {drive.root} holds another slot of this deployment (the node or "
                f"drive order changed?); expected position {position}"
            )
        return False

    def _cluster_drives(self, peers: PeerTable) -> list[Drive]:
        """Every drive in global order: local drives directly, the others over the grid."""
        drives: list[Drive] = []
        for owner, path in self.layout.drives:
            if owner == self.config.node:
                drives.append(self.local_drives[path])
            else:
                drives.append(peers.remote_drive(self.config.nodes[owner].host, path))
        return drives

    # --- the admin API's view (node.admin.NodeView) ---------------------------------------

    @property
    def ready(self) -> bool:
        return bool(self.readiness()["ready"])

    def readiness(self) -> dict[str, Any]:
        """Whether every erasure set has a write quorum of drives online, and why not."""
        if self.layer is None:
            return {"ready": False, "reason": "starting", "drives_online": 0, "drives": 0}
        sets = []
        problems = []
        for eset in self.layer.sets:
            online = eset.online()
            sets.append(
                {"index": eset.index, "online": online, "drives": len(eset.drives),
                 "write_quorum": eset.write_quorum}
            )  # fmt: skip
            if online < eset.write_quorum:
                problems.append(
                    f"set {eset.index}: {online} of {len(eset.drives)} drives online, "
                    f"write quorum is {eset.write_quorum}"
                )
        online_total = sum(1 for drive in self.drives if drive.is_online())
        return {
            "ready": not problems,
            "reason": "; ".join(problems) or "write quorum reached on every set",
            "drives_online": online_total,
            "drives": len(self.drives),
            "sets": sets,
        }

    def _log_readiness(self) -> None:
        report = self.readiness()
        ready = bool(report["ready"])
        if ready == self._was_ready:
            return
        self._was_ready = ready
        if ready:
            log.info("ready: %s", report["reason"])
        else:
            log.warning("not ready: %s", report["reason"])

    def summary(self) -> dict[str, Any]:
        config = self.config
        return {
            "index": config.node,
            "url": config.me.url,
            "host": config.host,
            "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self.started_monotonic, 3),
            "profile": config.profile,
            "deployment_id": config.layout.deployment_id,
            "allow_faults": config.allow_faults,
            "tls": config.tls,
            "grid_instance": self.manager.instance_id if self.manager is not None else "",
        }

    async def drive_states(self) -> list[dict[str, Any]]:
        """Every drive of the cluster as this node sees it (see :func:`drive_report`), with
        its position, owner node and erasure set."""
        owners = [owner for owner, _ in self.layout.drives]
        drives = await drive_reports(self.drives, self.formats, owners)
        set_of = {p: i for i, positions in enumerate(self.layout.sets()) for p in positions}
        for drive in drives:
            drive["set"] = set_of[drive["position"]]
        return drives

    async def info(self) -> dict[str, Any]:
        """This node, every drive of the cluster as it sees them, and each service's report."""
        drives = await self.drive_states()
        report: dict[str, Any] = {
            "node": self.summary(),
            "nodes": [spec.to_dict() for spec in self.config.nodes],
            "ready": self.readiness(),
            "layout": {
                "set_drive_count": self.layout.set_drive_count,
                "sets": self.layout.set_count,
                "parity": self.layout.parity,
                "data": self.layout.set_drive_count - self.layout.parity,
            },
            "drives": drives,
        }
        for service in self.services:
            report.update(service.info())
        return report

    async def metrics_text(self) -> bytes:
        await self.metrics.refresh()
        return self.metrics.render()

    def top(self) -> dict[str, Any]:
        """This node's live figures for ``minigrid admin top`` (cheap: no I/O)."""
        manager, config = self.manager, self.config
        assert manager is not None
        stats = manager.stats()
        links = [
            {"peer": host, "state": s.state, "rtt_s": s.rtt_last, "last_seen_s": s.last_seen_age,
             "cause": s.last_cause, "reconnects": s.reconnects, "dials": s.dial_attempts,
             "connected_s": s.connected_for,
             "peer_loop_lag_s": s.peer_loop_lag, "queue": s.queue_messages,
             "queue_bytes": s.queue_bytes, "queue_waiters": s.queue_waiters,
             "calls_out": s.inflight_calls,
             "calls_in": s.inflight_handlers, "streams": s.inflight_streams}
            for host, s in sorted(stats.items())
        ]  # fmt: skip
        ready = self.readiness()
        return {
            "node": config.me.url,
            "host": config.host,
            "index": config.node,
            "pid": os.getpid(),
            "process": self.identity.to_dict() if self.identity is not None else None,
            "uptime_s": round(time.monotonic() - self.started_monotonic, 3),
            "loop_lag_s": manager.monitor.worst_lag(),
            "loop_busy_s": round(manager.monitor.worst_busy(), 4),
            "loop_stall_s": manager.monitor.longest_stall(),
            "s3_inflight": self.gateway.inflight if self.gateway is not None else 0,
            "s3": self.metrics.s3_totals(),
            "grid_calls_out": sum(s.inflight_calls for s in stats.values()),
            "grid_calls_in": sum(s.inflight_handlers for s in stats.values()),
            "grid_streams": sum(s.inflight_streams for s in stats.values()),
            "ready": bool(ready["ready"]),
            "drives_online": ready["drives_online"],
            "drives": ready["drives"],
            "heal": heal_summary(self.healing.status()) if self.healing is not None else None,
            "reads": self.layer.stats.counters() if self.layer is not None else None,
            "links": links,
        }

    # --- shutdown -----------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the services in reverse order (HTTP first, the grid last)."""
        await self._stack.aclose()
        self._runner = None


def setup_logging(config: NodeConfig) -> None:
    """Log to ``log_file`` (appending) or to stderr, one line per event, as text or JSON
    (:mod:`node.logs`)."""
    handler: logging.Handler
    if config.log_file:
        handler = logging.FileHandler(config.log_file)
        if os.path.isfile(config.log_file):  # not /dev/stderr and the like
            os.chmod(config.log_file, 0o600)  # a log made before the umask was set
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(log_formatter(config.log_format, config.host))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.log_level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


async def serve(config: NodeConfig) -> None:
    """Run a node until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    node = Node(config)
    await node.start()
    try:
        await stop.wait()
        log.info("stopping")
    finally:
        await node.close()
    log.info("stopped")


def run_node(config: NodeConfig) -> int:
    """The body of ``minigrid node run``: the exit status (0 after a clean stop)."""
    os.umask(PRIVATE_UMASK)
    setup_logging(config)
    try:
        asyncio.run(serve(config))
    except NodeError as exc:
        log.error("cannot start: %s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


__all__ = ["Node", "NodeError", "listen_socket", "run_node", "serve", "setup_logging"]
