"""A TCP proxy on one grid link: added latency and a NAT that forgets idle flows.

This machine's kernel has no ``tc netem``, and a NAT needs a router namespace (root). So for
``minigrid fault delay`` and, on loopback, ``minigrid fault nat``, the node that *dials* a peer
dials it through a :class:`LinkProxy` in its own process (``Manager.route``). The pair's one
connection then crosses the proxy in both directions, and the proxy shapes it:

- **delay**: every byte from the dialer waits ``out_delay`` seconds before it is passed on, every
  byte back ``in_delay``, each plus or minus up to ``jitter`` (uniform). Order is kept, as TCP
  keeps it: a chunk never overtakes the one before it. A bounded queue per direction gives
  back-pressure (a TCP window's worth of bytes in flight).
- **NAT idle timeout**: a flow that carried no byte either way for ``nat_idle`` seconds is
  forgotten. ``drop`` (a home router): everything after that vanishes, both ways, and nothing
  closes. ``reset`` (some firewalls and cloud NATs): the next byte either way is answered by
  resetting both sides (RST).

What a userspace proxy cannot do: it sees bytes, not packets. The endpoints' kernels talk to
the proxy's kernel, which acknowledges what it receives, so a forgotten flow never makes TCP
retransmit (``TCP_USER_TIMEOUT`` cannot fire) and TCP keepalive probes never reach the proxy
(keepalive cannot refresh the flow). Only the grid's own pings notice and refresh. The
``--netns`` NAT (a router namespace with conntrack) shows both kernel behaviours for real.

The proxy runs on the dialing node's event loop: a frozen or blocked dialer freezes it too, as
it freezes the dialer's own sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import struct
from dataclasses import dataclass, field, replace
from typing import Any

log = logging.getLogger("node.faults")

CHUNK = 64 << 10
#: Chunks queued per direction while they wait out their delay (back-pressure beyond it).
QUEUE_CHUNKS = 256
NAT_MODES = ("drop", "reset")


@dataclass(frozen=True)
class LinkShape:
    """What the proxy does to a link. All zero: it passes bytes straight on."""

    out_delay: float = 0.0  # seconds added to bytes from this node (the dialer) to the peer
    in_delay: float = 0.0  # seconds added to bytes from the peer back to this node
    jitter: float = 0.0  # each chunk's delay varies by up to this much either way
    nat_idle: float = 0.0  # seconds of silence after which the flow is forgotten (0: no NAT)
    nat_mode: str = "drop"

    @property
    def empty(self) -> bool:
        return not (self.out_delay or self.in_delay or self.jitter or self.nat_idle)

    def as_dict(self) -> dict[str, Any]:
        shape: dict[str, Any] = {}
        if self.out_delay or self.in_delay or self.jitter:
            shape["delay_ms"] = {"out": round(self.out_delay * 1000, 3),
                                 "in": round(self.in_delay * 1000, 3),
                                 "jitter": round(self.jitter * 1000, 3)}  # fmt: skip
        if self.nat_idle:
            shape["nat"] = {"idle_timeout_s": self.nat_idle, "mode": self.nat_mode}
        return shape


@dataclass
class ProxyCounters:
    flows: int = 0
    forgotten: int = 0
    resets: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    dropped_bytes: int = 0


class Flow:
    """One proxied TCP connection: the dialer's socket and the one to the peer."""

    def __init__(self, proxy: LinkProxy, number: int) -> None:
        self.proxy = proxy
        self.number = number
        self.loop = asyncio.get_running_loop()
        self.last_activity = self.loop.time()
        self.forgotten = False
        self._writers: list[asyncio.StreamWriter] = []
        self._reset = asyncio.Event()

    async def run(self, client: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        """Carry the flow until either side ends it (or the NAT resets it)."""
        reader, writer = client
        self._writers.append(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.proxy.target)
        except OSError as exc:
            log.info("fault proxy %s: cannot reach the peer: %s", self.proxy.name, exc)
            _reset_socket(writer)
            return
        self._writers.append(up_writer)
        pipes = asyncio.gather(self._pipe(reader, up_writer, outbound=True),
                               self._pipe(up_reader, writer, outbound=False))  # fmt: skip
        watcher = asyncio.create_task(self._watch())
        parts: set[asyncio.Future[Any]] = {pipes, watcher}
        for part in parts:
            part.add_done_callback(_retrieve)
        try:
            await asyncio.wait(parts, return_when=asyncio.FIRST_COMPLETED)
        finally:
            pipes.cancel()
            watcher.cancel()
            for each in self._writers:
                each.close()
            await asyncio.wait(parts)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    *, outbound: bool) -> None:  # fmt: skip
        """One direction: read, hold each chunk for its delay, write in order."""
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(QUEUE_CHUNKS)
        async with asyncio.TaskGroup() as group:
            group.create_task(self._receive(reader, queue, outbound))
            group.create_task(self._send(queue, writer))

    async def _receive(self, reader: asyncio.StreamReader,
                       queue: asyncio.Queue[tuple[float, bytes] | None],
                       outbound: bool) -> None:  # fmt: skip
        while data := await reader.read(CHUNK):
            if self._admit(data, outbound):
                await queue.put((self._due(outbound), data))
        await queue.put(None)

    def _admit(self, data: bytes, outbound: bool) -> bool:
        """Whether a chunk goes on (and the NAT's view of the flow)."""
        counters = self.proxy.counters
        if self.forgotten:
            counters.dropped_bytes += len(data)
            if self.proxy.shape.nat_mode == "reset":
                self._reset.set()
            return False
        self.last_activity = self.loop.time()
        if outbound:
            counters.bytes_out += len(data)
        else:
            counters.bytes_in += len(data)
        return True

    def _due(self, outbound: bool) -> float:
        shape = self.proxy.shape
        delay = shape.out_delay if outbound else shape.in_delay
        if shape.jitter:
            delay = max(0.0, delay + random.uniform(-shape.jitter, shape.jitter))
        return self.loop.time() + delay

    async def _send(self, queue: asyncio.Queue[tuple[float, bytes] | None],
                    writer: asyncio.StreamWriter) -> None:  # fmt: skip
        previous = 0.0
        while (item := await queue.get()) is not None:
            due, data = item
            previous = max(previous, due)  # in order: never before the chunk ahead of it
            wait = previous - self.loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if self.forgotten:
                continue  # the NAT forgot the flow while this chunk waited: it vanishes
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()  # the sender finished: pass its FIN on

    async def _watch(self) -> None:
        """The NAT's idle timer, and the reset it answers a forgotten flow's bytes with."""
        while True:
            idle = self.proxy.shape.nat_idle
            if not idle:
                await asyncio.sleep(0.25)
                continue
            if self.forgotten:
                await self._reset.wait()
                self.proxy.counters.resets += 1
                log.warning("fault proxy %s: flow %d reset (a packet of a forgotten flow)",
                            self.proxy.name, self.number)  # fmt: skip
                for writer in self._writers:
                    _reset_socket(writer)
                return
            quiet = self.loop.time() - self.last_activity
            if quiet >= idle:
                self.forgotten = True
                self.proxy.counters.forgotten += 1
                log.warning("fault proxy %s: NAT forgot flow %d after %.1fs idle (%s)",
                            self.proxy.name, self.number, quiet,
                            self.proxy.shape.nat_mode)  # fmt: skip
                continue
            await asyncio.sleep(min(0.1, idle - quiet))


def _retrieve(part: asyncio.Future[Any]) -> None:
    """A side going away is how a flow ends: its error needs no report."""
    if not part.cancelled():
        part.exception()


def _reset_socket(writer: asyncio.StreamWriter) -> None:
    """Close with an RST rather than a FIN (SO_LINGER 0)."""
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass
class LinkProxy:
    """A listening proxy from this node to ``peer`` (at ``target``), shaped by ``shape``."""

    peer: str
    target: tuple[str, int]
    shape: LinkShape = field(default_factory=LinkShape)
    counters: ProxyCounters = field(default_factory=ProxyCounters)
    _server: asyncio.Server | None = None
    _flows: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def name(self) -> str:
        return f"->{self.peer}"

    @property
    def address(self) -> str:
        """``host:port`` the dialer connects to instead of the peer."""
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The flow is a task of ours (not the server's handler task), so close() can end it.
        self.counters.flows += 1
        flow = Flow(self, self.counters.flows)
        task = asyncio.create_task(flow.run((reader, writer)), name=f"proxy {self.name}")
        self._flows.add(task)
        task.add_done_callback(self._flows.discard)

    def reshape(self, **changes: Any) -> LinkShape:
        """Change the shape; flows in progress follow it at once."""
        self.shape = replace(self.shape, **changes)
        return self.shape

    def info(self) -> dict[str, Any]:
        return {**self.shape.as_dict(), "listen": self.address,
                "flows": self.counters.flows, "forgotten": self.counters.forgotten,
                "resets": self.counters.resets, "bytes_out": self.counters.bytes_out,
                "bytes_in": self.counters.bytes_in,
                "dropped_bytes": self.counters.dropped_bytes}  # fmt: skip

    async def close(self) -> None:
        """Stop listening and end every flow (their sockets close)."""
        if self._server is not None:
            self._server.close()
        for task in list(self._flows):
            task.cancel()
        for task in list(self._flows):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._server.wait_closed()


__all__ = ["NAT_MODES", "LinkProxy", "LinkShape"]
