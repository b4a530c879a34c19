"""The grid manager: the local host, every peer, the handler registry, and one route.

Exactly one websocket exists per pair of nodes. Both sides work out who dials from the two host
strings alone (:func:`should_dial`), so no message is needed to agree, and a dial from the side
that should have accepted is refused.

Handshake, on ``GET /minigrid/grid/v1``:

1. The dialer sends ``Authorization: Bearer <token>`` (see :mod:`minigrid.auth`). A missing
   token gets 401, a bad one or an unknown host 403, and the node keeps serving.
2. After the upgrade the dialer sends ``CONNECT`` with its host, instance ID and version.
3. The acceptor answers ``CONNECT_RESPONSE``: accepted (with its own token, so the dialer knows
   it reached a node holding the same secret) or rejected with a reason.

Rejections are logged once per peer and reason, on both sides, not on every retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import uuid
from collections.abc import Callable, Iterable
from typing import Any, Final

import aiohttp
from aiohttp import web

from . import auth, protocol, sockets
from .config import GridConfig
from .connection import Connection
from .errors import GridError, HandshakeRejected, RemoteProtocolError
from .handlers import Registry, SingleFn, StreamFn
from .liveness import PEER_RESTARTED, LoopMonitor
from .protocol import Op
from .state import State
from .stats import ConnStats

log = logging.getLogger("minigrid.grid")

GRID_PATH: Final = "/minigrid/grid/v1"
POKE_PATH: Final = GRID_PATH + "/poke"
_WS_MAX = protocol.MAX_FRAME_SIZE + 1024


def should_dial(local: str, remote: str) -> bool:
    """True if ``local`` dials ``remote``. Both sides get opposite answers with no messages."""
    forward = hashlib.sha256(f"{local}\x00{remote}".encode()).digest()
    backward = hashlib.sha256(f"{remote}\x00{local}".encode()).digest()
    if forward != backward:
        return forward < backward
    return local < remote


def grid_url(host: str) -> str:
    """The grid URL of a host string such as ``127.0.0.1:9001`` or ``http://node2:9000``."""
    base = host if host.startswith(("http://", "https://")) else f"http://{host}"
    return base.rstrip("/") + GRID_PATH


class _LogOnce:
    """Log a message once per key until the message changes or the key is cleared."""

    def __init__(self) -> None:
        self._last: dict[str, str] = {}

    def warn(self, key: str, message: str) -> None:
        if self._last.get(key) != message:
            self._last[key] = message
            log.warning("%s", message)

    def clear(self, key: str) -> None:
        self._last.pop(key, None)


class Manager:
    """Owns this node's grid: the registry, one :class:`Connection` per peer, the route."""

    def __init__(
        self,
        local: str,
        peers: Iterable[str],
        secret: str | bytes,
        *,
        config: GridConfig | None = None,
    ) -> None:
        self.local = local
        self.config = config or GridConfig()
        self.instance_id = uuid.uuid4().hex
        self.registry = Registry()
        self._key = auth.derive_key(secret)
        self._peers = [peer for peer in dict.fromkeys(peers) if peer != local]
        self._connections: dict[str, Connection] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._serving: dict[str, asyncio.Task[Any]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._log_once = _LogOnce()
        self._closed = False
        self._started = False
        #: Called synchronously as ``listener(conn, old_state, new_state, cause)`` on every
        #: state change, e.g. to keep a peer table in step with the grid.
        self.state_listeners: list[Callable[[Connection, State, State, str], None]] = []
        #: This process's event-loop lag, reported to peers in every pong.
        self.monitor = LoopMonitor(interval=self.config.lag_interval)
        self._pokes: dict[str, asyncio.Event] = {}

    # ------------------------------------------------------------------ setup

    def register_single(self, handler_id: int, fn: SingleFn, *, subroute: str = "") -> None:
        """Register a raw single-payload handler (see also :mod:`minigrid.typed`)."""
        self.registry.add_single(handler_id, fn, subroute=subroute)

    def register_stream(
        self,
        handler_id: int,
        fn: StreamFn,
        *,
        subroute: str = "",
        in_capacity: int = 0,
        out_capacity: int = 1,
    ) -> None:
        """Register a streaming handler (see :mod:`minigrid.streams`)."""
        self.registry.add_stream(
            handler_id, fn, subroute=subroute, in_capacity=in_capacity, out_capacity=out_capacity
        )

    def add_routes(self, app: web.Application) -> None:
        """Serve the grid route on an aiohttp application."""
        app.router.add_get(GRID_PATH, self._accept)
        app.router.add_post(POKE_PATH, self._poked)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def peers(self) -> list[str]:
        return list(self._peers)

    async def start(self) -> None:
        """Create the connections and start dialing the peers this side dials."""
        if self._started:
            return
        self._started = True
        self.monitor.start()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=True)
        )
        for peer in self._peers:
            conn = Connection(self, peer, dialer=should_dial(self.local, peer))
            self._connections[peer] = conn
            self._pokes[peer] = asyncio.Event()
            if conn.dialer:
                self._spawn(self._dial_loop(conn), f"grid-dial {peer}")
            else:
                self._spawn(self._poke_loop(conn), f"grid-poke {peer}")

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def connection(self, remote: str) -> Connection:
        """The connection to ``remote`` (raises KeyError for an unknown host)."""
        try:
            return self._connections[remote]
        except KeyError:
            raise KeyError(f"{remote!r} is not a peer of {self.local!r}") from None

    def connections(self) -> list[Connection]:
        return list(self._connections.values())

    def stats(self) -> dict[str, ConnStats]:
        """A statistics snapshot of every peer connection."""
        return {host: conn.stats() for host, conn in self._connections.items()}

    async def wait_connected(self, timeout: float = 10.0) -> None:
        """Wait until every peer connection is up."""
        async with asyncio.timeout(timeout):
            for conn in self._connections.values():
                await conn.wait_state(State.CONNECTED)

    async def close(self) -> None:
        """Stop dialing, end every session and fail everything in flight."""
        if self._closed:
            return
        self._closed = True
        for conn in self._connections.values():
            conn.close()
        tasks = list(self._tasks) + list(self._serving.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        await self.monitor.stop()

    # ----------------------------------------------------------------- dialing

    async def _dial_loop(self, conn: Connection) -> None:
        delay = 0.0
        poked = self._pokes[conn.remote]
        while not self._closed:
            poked.clear()
            conn._set_state(State.CONNECTING)
            try:
                ws, instance = await self._dial(conn)
            except HandshakeRejected as exc:
                cause = f"rejected by peer: {exc.reason}"
                self._log_once.warn(conn.remote, f"grid {self.local}->{conn.remote}: {cause}")
            except (aiohttp.ClientError, OSError, TimeoutError, RemoteProtocolError) as exc:
                cause = f"dial failed: {_describe(exc)}"
                log.debug("grid %s->%s: %s", self.local, conn.remote, cause)
            else:
                self._log_once.clear(conn.remote)
                self._serving[conn.remote] = task = asyncio.current_task()  # type: ignore[assignment]
                try:
                    cause = await conn.serve(ws, instance)
                finally:
                    if self._serving.get(conn.remote) is task:
                        del self._serving[conn.remote]
                delay = -1.0  # the session was up: redial almost at once
            if self.closed:
                return
            if conn.state is not State.ERROR:
                conn._set_state(State.ERROR, cause)
            delay = _next_backoff(delay, self.config)
            if poked.is_set():
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await poked.wait()
                log.debug("grid %s->%s: poked, dialing now", self.local, conn.remote)

    async def _dial(self, conn: Connection) -> tuple[aiohttp.ClientWebSocketResponse, str]:
        assert self._session is not None
        conn.counters.dial_attempts += 1
        token = auth.make_token(self._key, self.local)
        async with asyncio.timeout(self.config.handshake_timeout):
            try:
                ws = await self._session.ws_connect(
                    grid_url(conn.remote),
                    headers={"Authorization": f"Bearer {token}"},
                    max_msg_size=_WS_MAX,
                    compress=0,
                    autoping=True,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=1.0),
                )
            except aiohttp.WSServerHandshakeError as exc:
                if exc.status in (401, 403):
                    raise HandshakeRejected(f"HTTP {exc.status}: {exc.message}") from exc
                raise
            try:
                sockets.tune(ws.get_extra_info("socket"), self.config)
                hello = {
                    "host": self.local,
                    "instance": self.instance_id,
                    "version": protocol.PROTOCOL_VERSION,
                }
                await ws.send_bytes(protocol.encode(Op.CONNECT, payload=protocol.pack_obj(hello)))
                reply = await _receive_one(ws, Op.CONNECT_RESPONSE)
                if not reply.get("accepted"):
                    raise HandshakeRejected(str(reply.get("reason", "no reason given")))
                try:
                    peer_host = auth.verify_token(self._key, str(reply.get("token", "")))
                except auth.TokenError as exc:
                    raise HandshakeRejected(f"peer failed to prove the secret: {exc}") from exc
                if peer_host != conn.remote:
                    raise HandshakeRejected(f"peer says it is {peer_host!r}, not {conn.remote!r}")
                return ws, str(reply.get("instance", ""))
            except BaseException:
                await ws.close()
                raise

    # --------------------------------------------------------------- accepting

    def _reject(self, status: int, key: str, reason: str, what: str = "dial") -> web.Response:
        # Keyed by the reason too: one address can carry several peers (ports), and each
        # distinct rejection is said once, not once per retry.
        self._log_once.warn(
            f"{what}:{key}:{reason}", f"grid {self.local}: rejected {what} from {key}: {reason}"
        )
        return web.Response(status=status, text=reason)

    async def _accept(self, request: web.Request) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        remote_addr = request.remote or "?"
        if not header.startswith("Bearer "):
            return self._reject(401, remote_addr, "missing grid bearer token")
        try:
            host = auth.verify_token(self._key, header[7:])
        except auth.TokenError as exc:
            return self._reject(403, remote_addr, str(exc))
        conn = self._connections.get(host)
        if conn is None or self._closed:
            return self._reject(403, host, f"{host!r} is not a known peer of {self.local!r}")
        if conn.dialer:
            return self._reject(
                403, host, f"wrong side: {self.local} dials {host}, not the reverse"
            )
        ws = web.WebSocketResponse(max_msg_size=_WS_MAX, compress=False, autoping=True, timeout=1.0)
        await ws.prepare(request)
        sockets.tune(
            request.transport.get_extra_info("socket") if request.transport else None, self.config
        )
        try:
            async with asyncio.timeout(self.config.handshake_timeout):
                hello = await _receive_one(ws, Op.CONNECT)
        except (TimeoutError, GridError, aiohttp.ClientError, OSError) as exc:
            self._log_once.warn(
                f"accept:{host}", f"grid {self.local}: handshake from {host} failed: {exc}"
            )
            await ws.close()
            return ws
        reason = _check_hello(hello, host)
        if reason:
            self._log_once.warn(f"accept:{host}", f"grid {self.local}: rejected {host}: {reason}")
            reply = {"accepted": False, "reason": reason}
            await ws.send_bytes(
                protocol.encode(Op.CONNECT_RESPONSE, payload=protocol.pack_obj(reply))
            )
            await ws.close()
            return ws
        self._log_once.clear(f"accept:{host}")
        await self._replace_session(conn, str(hello["instance"]))
        reply = {
            "accepted": True,
            "host": self.local,
            "instance": self.instance_id,
            "token": auth.make_token(self._key, self.local),
        }
        await ws.send_bytes(protocol.encode(Op.CONNECT_RESPONSE, payload=protocol.pack_obj(reply)))
        task = asyncio.current_task()
        assert task is not None
        self._serving[host] = task
        try:
            if conn.state is State.UNCONNECTED or conn.state is State.ERROR:
                conn._set_state(State.CONNECTING)
            await conn.serve(ws, str(hello["instance"]))
        finally:
            if self._serving.get(host) is task:
                del self._serving[host]
        return ws

    async def _poke_loop(self, conn: Connection) -> None:
        """As the accepting side, tell the dialer we are reachable whenever we are unconnected."""
        assert self._session is not None
        url = grid_url(conn.remote).replace(GRID_PATH, POKE_PATH)
        while not self._closed:
            if conn.state is not State.CONNECTED:
                token = auth.make_token(self._key, self.local)
                try:
                    async with asyncio.timeout(1.0):
                        async with self._session.post(
                            url,
                            data=protocol.pack_obj({"instance": self.instance_id}),
                            headers={"Authorization": f"Bearer {token}"},
                        ) as response:
                            await response.read()
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    log.debug("grid %s: poke to %s failed: %s", self.local, conn.remote, exc)
            # While connected, sleep until the state changes; while not, poke every interval.
            timeout = None if conn.is_connected else self.config.poke_interval
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await conn.wait_change()

    async def _poked(self, request: web.Request) -> web.Response:
        """A peer we dial says it is reachable (and which instance it is)."""
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return web.Response(status=401, text="missing grid bearer token")
        try:
            host = auth.verify_token(self._key, header[7:])
        except auth.TokenError as exc:
            return self._reject(403, request.remote or "?", str(exc), what="poke")
        conn = self._connections.get(host)
        if conn is None or not conn.dialer:
            return web.Response(status=403, text=f"{host!r} is not a peer that {self.local} dials")
        try:
            body = protocol.unpack_map(await request.read(), "poke")
        except GridError:
            body = {}
        instance = body.get("instance")
        if conn.is_connected and isinstance(instance, str) and instance != conn.remote_instance:
            conn.drop(f"{PEER_RESTARTED}: poked by new instance {instance[:8]}")
        self._pokes[host].set()
        return web.Response(status=204)

    async def _replace_session(self, conn: Connection, instance: str) -> None:
        """A new dial while a session is up: the old one is dead (or the peer restarted)."""
        old = self._serving.get(conn.remote)
        if old is None or old is asyncio.current_task():
            return
        cause = "peer-restarted" if instance != conn.remote_instance else "replaced by a new dial"
        conn.pending_cause = cause
        old.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            async with asyncio.timeout(2.0):
                await asyncio.wait({old})


def _check_hello(hello: dict[str, Any], token_host: str) -> str:
    if hello.get("version") != protocol.PROTOCOL_VERSION:
        return (
            f"protocol version mismatch: peer speaks {hello.get('version')!r}, "
            f"we speak {protocol.PROTOCOL_VERSION}"
        )
    if hello.get("host") != token_host:
        return f"Connect names host {hello.get('host')!r} but the token names {token_host!r}"
    if not isinstance(hello.get("instance"), str) or not hello["instance"]:
        return "Connect carries no instance ID"
    return ""


async def _receive_one(
    ws: aiohttp.ClientWebSocketResponse | web.WebSocketResponse, op: Op
) -> dict[str, Any]:
    msg = await ws.receive()
    if msg.type is not aiohttp.WSMsgType.BINARY:
        raise RemoteProtocolError(f"expected {op.name}, got websocket {msg.type.name}")
    messages = protocol.decode_frame(msg.data)
    if len(messages) != 1 or messages[0].op != op:
        raise RemoteProtocolError(f"expected one {op.name} message")
    return protocol.unpack_map(messages[0].payload, op.name)


def _next_backoff(previous: float, config: GridConfig) -> float:
    """Jittered exponential backoff: ~1–2s first, doubling to the cap.

    ``previous < 0`` means a session was up until now: wait only a moment."""
    if previous < 0:
        return config.first_redial_max * random.random()
    if previous == 0:
        return config.backoff_initial * (1 + random.random())
    return min(config.backoff_cap, previous * 2) * (0.75 + random.random() * 0.25)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__
