"""Helpers for tests and for users: grids of managers on 127.0.0.1 with free ports.

* :func:`local_grid` starts N managers in this process, each with its own aiohttp server on a
  real loopback socket, and waits until every pair is connected.
* :class:`NodeProcess` starts a manager in a child process (``python -m minigrid.testing``) on a
  socket the parent bound first, so no port can be taken in between.
* :func:`register_test_handlers` installs the echo, error, sleep and loop-blocking handlers.
* :func:`make_test_tls` makes a private CA and a certificate for 127.0.0.1, so either of the
  above can run the grid over TLS (``tls=``).
* :func:`remote_node` connects a manager in this process to a :class:`NodeProcess`;
  :func:`leak_checked_grid` is a two-manager grid that fails the test if anything is left in
  flight or reaches the loop's exception handler; :func:`wait_until` waits on a condition.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
from aiohttp import web

from .config import GridConfig, profile
from .connection import Connection
from .handlers import HandlerID
from .manager import Manager, should_dial
from .streams import ServerStream
from .tls import client_context, issue_certificate, make_ca, server_context

TEST_SECRET = "minigrid-test-secret"


def listening_socket() -> socket.socket:
    """A TCP socket bound to a free port on 127.0.0.1 and listening."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def host_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


async def _echo(payload: bytes) -> bytes:
    return payload


async def _error(payload: bytes) -> bytes:
    raise ValueError(payload.decode("utf-8", "replace") or "test error")


async def _sleep(payload: bytes) -> bytes:
    await asyncio.sleep(float(payload.decode() or "3600"))
    return b"slept"


async def _block_loop(payload: bytes) -> bytes:
    # Deliberately blocks the event loop: used to show a stalled peer.
    end = time.monotonic() + float(payload.decode() or "1")
    while time.monotonic() < end:
        pass
    return b"unblocked"


async def _stream_echo(stream: ServerStream) -> None:
    async for item in stream:
        await stream.send(item)


def generate_request(count: int, size: int, fail_after: int = -1) -> bytes:
    """The initial payload of TEST_STREAM_GENERATE: ``count`` items of ``size`` bytes, each
    starting with its index; with ``fail_after`` ≥ 0 the handler raises after that many."""
    return msgpack.packb([count, size, fail_after])  # type: ignore[no-any-return]


def generated_item(index: int, size: int) -> bytes:
    """Item ``index`` of TEST_STREAM_GENERATE."""
    head = index.to_bytes(4, "big")
    return (head + bytes(max(0, size - 4)))[: max(size, 4)]


async def _stream_generate(stream: ServerStream) -> None:
    count, size, fail_after = msgpack.unpackb(stream.payload)
    for index in range(count):
        if index == fail_after:
            raise RuntimeError(f"generator failed after {index} items")
        await stream.send(generated_item(index, size))


async def _stream_sink(stream: ServerStream) -> None:
    total = 0
    async for item in stream:
        total += len(item)
    await stream.send(str(total).encode())


async def _stream_stall(stream: ServerStream) -> None:
    await asyncio.Event().wait()


def register_test_handlers(manager: Manager) -> None:
    """Install the test handlers: echo, error, sleep(seconds), block_loop(seconds), and the
    streams echo (in 8/out 8), generate (out 8), sink (in 8) and stall (in 5, never reads)."""
    manager.register_single(HandlerID.TEST_ECHO, _echo)
    manager.register_single(HandlerID.TEST_ECHO, _echo, subroute="/d1")
    manager.register_single(HandlerID.TEST_ERROR, _error)
    manager.register_single(HandlerID.TEST_SLEEP, _sleep)
    manager.register_single(HandlerID.TEST_BLOCK_LOOP, _block_loop)
    manager.register_stream(HandlerID.TEST_STREAM_ECHO, _stream_echo, in_capacity=8, out_capacity=8)
    manager.register_stream(HandlerID.TEST_STREAM_GENERATE, _stream_generate, out_capacity=8)
    manager.register_stream(HandlerID.TEST_STREAM_SINK, _stream_sink, in_capacity=8)
    manager.register_stream(HandlerID.TEST_STREAM_STALL, _stream_stall, in_capacity=5)


@dataclass(frozen=True)
class TLSFiles:
    """A CA and one certificate (with its key) that every test node serves with."""

    ca: Path
    cert: Path
    key: Path

    def server(self) -> ssl.SSLContext:
        return server_context(self.cert, self.key)

    def client(self) -> ssl.SSLContext:
        return client_context(self.ca)


def make_test_tls(directory: Path) -> TLSFiles:
    """A private CA in ``directory`` and a certificate for 127.0.0.1 signed by it."""
    ca = make_ca(directory)
    node = issue_certificate(ca, directory, "node", ["127.0.0.1"])
    return TLSFiles(ca.cert, node.cert, node.key)


@dataclass
class LocalGrid:
    """Managers started by :func:`local_grid`, index i serving ``hosts[i]``."""

    managers: list[Manager]
    hosts: list[str]
    runners: list[web.AppRunner] = field(default_factory=list)

    async def close(self) -> None:
        for manager in self.managers:
            await manager.close()
        for runner in self.runners:
            await runner.cleanup()

    def quiet(self) -> bool:
        """No call, handler or stream left in flight on any connection of the grid."""
        return all(
            s.inflight_calls == 0 and s.inflight_handlers == 0 and s.inflight_streams == 0
            for manager in self.managers
            for s in manager.stats().values()
        )


async def serve_manager(
    manager: Manager, sock: socket.socket, *, ssl_context: ssl.SSLContext | None = None
) -> web.AppRunner:
    """Serve ``manager``'s grid routes on an already-listening socket (over TLS with
    ``ssl_context``)."""
    app = web.Application()
    manager.add_routes(app)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.SockSite(runner, sock, ssl_context=ssl_context).start()
    return runner


@contextlib.asynccontextmanager
async def local_grid(
    count: int,
    *,
    secret: str = TEST_SECRET,
    config: GridConfig | None = None,
    register: Callable[[Manager], None] | None = register_test_handlers,
    extra_peers: Sequence[str] = (),
    connect_timeout: float = 10.0,
    tls: TLSFiles | None = None,
) -> AsyncIterator[LocalGrid]:
    """Start ``count`` connected managers on loopback; close them all on exit. With ``tls``
    every manager serves and dials over TLS."""
    sockets = [listening_socket() for _ in range(count)]
    hosts = [host_of(sock) for sock in sockets]
    grid = LocalGrid([], hosts)
    try:
        for host, sock in zip(hosts, sockets, strict=True):
            client = tls.client() if tls is not None else None
            manager = Manager(host, [*hosts, *extra_peers], secret, config=config, tls=client)
            if register is not None:
                register(manager)
            grid.managers.append(manager)
            server = tls.server() if tls is not None else None
            grid.runners.append(await serve_manager(manager, sock, ssl_context=server))
        for manager in grid.managers:
            await manager.start()
        if not extra_peers:
            await asyncio.gather(*(m.wait_connected(connect_timeout) for m in grid.managers))
        yield grid
    finally:
        await grid.close()
        for sock in sockets:
            sock.close()


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Wait until ``predicate()`` is true, checking every 10 ms; AssertionError after
    ``timeout``. For tests: wait on a condition, never on a fixed sleep."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def loop_errors_checked() -> AsyncIterator[list[dict[str, Any]]]:
    """Fail if anything reaches the loop's exception handler (a lost task error, say)."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        yield errors
        gc.collect()
        await asyncio.sleep(0)  # let callbacks scheduled by finalizers run
        assert errors == [], errors
    finally:
        loop.set_exception_handler(previous)


@contextlib.asynccontextmanager
async def leak_checked_grid(
    register: Callable[[Manager], None] | None = None, config: GridConfig | None = None
) -> AsyncIterator[LocalGrid]:
    """A two-manager :func:`local_grid` with the test handlers (and ``register``'s), checked on
    the way out: nothing left in flight, no task left running, nothing sent to the loop's
    exception handler."""

    def both(manager: Manager) -> None:
        register_test_handlers(manager)
        if register is not None:
            register(manager)

    async with loop_errors_checked():
        async with local_grid(2, register=both, config=config) as grid:
            yield grid
            await wait_until(grid.quiet, what="no mux, call or handler left")
        current = asyncio.current_task()
        await wait_until(
            lambda: not [t for t in asyncio.all_tasks() if t is not current and not t.done()],
            what="no task left after the grid closed",
        )


@dataclass
class RemoteNode:
    """A local manager connected to a :class:`NodeProcess` peer (see :func:`remote_node`)."""

    manager: Manager
    node: NodeProcess
    node_sock: socket.socket

    @property
    def conn(self) -> Connection:
        """The local manager's connection to the node."""
        return self.manager.connection(self.node.host)

    def restart_node(self) -> None:
        """Kill the node process and start a new one on the same socket (a new instance)."""
        self.node.kill()
        self.node = NodeProcess(self.node_sock, [self.manager.local], log_path=self.node.log_path)
        self.node.start()


@contextlib.asynccontextmanager
async def remote_node(
    log_path: str = "", *, we_dial: bool | None = None, connect_timeout: float = 15.0
) -> AsyncIterator[RemoteNode]:
    """A manager in this process (with the test handlers) and a node in a child process,
    connected. ``we_dial`` picks which side dials (None: whichever the hosts decide)."""
    ours, theirs = _socket_pair(we_dial)
    node = NodeProcess(theirs, [host_of(ours)], log_path=log_path)
    manager = Manager(host_of(ours), [node.host], TEST_SECRET)
    register_test_handlers(manager)
    runner = await serve_manager(manager, ours)
    result = RemoteNode(manager, node, theirs)
    try:
        await asyncio.to_thread(node.start)
        await manager.start()
        await manager.wait_connected(connect_timeout)
        yield result
    finally:
        await manager.close()
        await runner.cleanup()
        await asyncio.to_thread(result.node.kill)
        ours.close()
        theirs.close()


def _socket_pair(we_dial: bool | None) -> tuple[socket.socket, socket.socket]:
    """Two listening sockets; with ``we_dial`` set, ordered so the first one's host dials."""
    spare: list[socket.socket] = []  # held open until the end, so no port comes back
    try:
        while True:
            ours, theirs = listening_socket(), listening_socket()
            if we_dial is None or should_dial(host_of(ours), host_of(theirs)) == we_dial:
                return ours, theirs
            spare += [ours, theirs]
    finally:
        for sock in spare:
            sock.close()


class NodeProcess:
    """A grid node with the test handlers, running in a child process.

    Give it a listening socket (inherited, so no port can be taken in between), or a ``listen``
    address that the child binds itself (needed inside another network namespace, with
    ``prefix=["ip", "netns", "exec", NAME]``). ``overrides`` set :class:`GridConfig` fields.
    With ``log_path`` the child logs at INFO to that file. With ``tls`` it serves and dials
    over TLS. The child exits when its parent dies.
    """

    def __init__(
        self,
        sock: socket.socket | None,
        peers: Sequence[str],
        *,
        secret: str = TEST_SECRET,
        profile_name: str = "fast",
        extra_args: Sequence[str] = (),
        listen: str = "",
        overrides: dict[str, float] | None = None,
        log_path: str = "",
        prefix: Sequence[str] = (),
        tls: TLSFiles | None = None,
    ) -> None:
        self.host = host_of(sock) if sock is not None else listen
        self._sock = sock
        where = ["--fd", str(sock.fileno())] if sock is not None else ["--listen", listen]
        settings = [f"{key}={value}" for key, value in (overrides or {}).items()]
        tls_args = (
            ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key), "--tls-ca", str(tls.ca)]
            if tls is not None
            else []
        )
        self.args = [
            *prefix,
            sys.executable, "-m", "minigrid.testing", *where,
            "--host", self.host, "--secret", secret, "--profile", profile_name,
            *[arg for peer in peers for arg in ("--peer", peer)],
            *[arg for setting in settings for arg in ("--set", setting)],
            *tls_args, *extra_args,
        ]  # fmt: skip
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> None:
        """Start the child and wait for its READY line."""
        env = dict(os.environ)
        if self.log_path:
            env["MINIGRID_LOG"] = "INFO"
            env["MINIGRID_LOG_FILE"] = self.log_path
        self.proc = subprocess.Popen(
            self.args,
            pass_fds=[self._sock.fileno()] if self._sock is not None else [],
            stdout=subprocess.PIPE,
            stdin=subprocess.PIPE,  # the child exits when this pipe closes (parent gone)
            env=env,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith(b"READY") or not line:
                break
        if not line.startswith(b"READY"):
            self.kill()
            raise RuntimeError(f"grid node {self.host} did not start (last line {line!r})")

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL the child and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.wait()

    def stop(self) -> None:
        """SIGTERM the child (SIGKILL after 5s) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.wait()

    def wait(self) -> None:
        if self.proc is not None:
            self.proc.wait()
            for pipe in (self.proc.stdout, self.proc.stdin):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()

    def log_text(self) -> str:
        """What the child has logged so far (needs ``log_path``)."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except OSError:
            return ""

    def __enter__(self) -> NodeProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _run_node(args: argparse.Namespace) -> None:
    if args.fd is not None:
        sock = socket.socket(fileno=args.fd)
    else:
        address, port = args.listen.rsplit(":", 1)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, int(port)))
        sock.listen(128)
    overrides: dict[str, float] = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = float(value)
    config = profile(args.profile, **overrides)
    tls = (
        TLSFiles(Path(args.tls_ca), Path(args.tls_cert), Path(args.tls_key))
        if args.tls_cert
        else None
    )
    client = tls.client() if tls is not None else None
    manager = Manager(args.host, args.peer, args.secret, config=config, tls=client)
    register_test_handlers(manager)
    runner = await serve_manager(manager, sock, ssl_context=tls.server() if tls else None)
    await manager.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    if not sys.stdin.isatty():
        # Exit when the parent goes away and the stdin pipe closes.
        loop.add_reader(0, lambda: None if os.read(0, 4096) else stop.set())
    print("READY", flush=True)
    try:
        await stop.wait()
    finally:
        await manager.close()
        await runner.cleanup()
        sock.close()


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m minigrid.testing``: one grid node with the test handlers."""
    parser = argparse.ArgumentParser(prog="python -m minigrid.testing")
    parser.add_argument("--fd", type=int, help="inherited listening socket")
    parser.add_argument("--listen", default="", help="address:port to bind instead of --fd")
    parser.add_argument("--set", action="append", default=[], help="GridConfig field=value")
    parser.add_argument("--host", required=True)
    parser.add_argument("--peer", action="append", default=[])
    parser.add_argument("--secret", default=TEST_SECRET)
    parser.add_argument("--profile", default="fast")
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--tls-cert", default="", help="serve and dial over TLS with this")
    parser.add_argument("--tls-key", default="")
    parser.add_argument("--tls-ca", default="")
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key) or (args.tls_cert and not args.tls_ca):
        parser.error("--tls-cert, --tls-key and --tls-ca go together")
    if os.environ.get("MINIGRID_LOG"):
        import logging

        logging.basicConfig(
            level=os.environ["MINIGRID_LOG"].upper(),
            filename=os.environ.get("MINIGRID_LOG_FILE") or None,
            format="%(asctime)s %(name)s %(levelname)s %(message)s",
        )
    if args.uvloop:
        import uvloop

        uvloop.run(_run_node(args))
    else:
        asyncio.run(_run_node(args))


if __name__ == "__main__":
    main()
