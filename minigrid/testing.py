"""Helpers for tests and for users: grids of managers on 127.0.0.1 with free ports.

* :func:`local_grid` starts N managers in this process, each with its own aiohttp server on a
  real loopback socket, and waits until every pair is connected.
* :class:`NodeProcess` starts a manager in a child process (``python -m minigrid.testing``) on a
  socket the parent bound first, so no port can be taken in between.
* :func:`register_test_handlers` installs the echo, error, sleep and loop-blocking handlers.
* :func:`make_test_tls` makes a private CA and a certificate for 127.0.0.1, so either of the
  above can run the grid over TLS (``tls=``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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

import msgpack
from aiohttp import web

from .config import GridConfig, profile
from .handlers import HandlerID
from .manager import Manager
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
