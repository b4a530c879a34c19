"""The grid manager: the local host, every peer, the handler registry, and the grid routes.

Exactly one websocket exists per pair of nodes. Both sides work out who dials from the two host
strings alone (:func:`should_dial`), so no message is needed to agree, and a dial from the side
that should have accepted is refused.

Handshake, on ``GET /minigrid/grid/v1`` (the exchange itself is :mod:`minigrid.handshake`):

1. The dialer upgrades to a websocket, saying nothing else. Past the caps on unauthenticated
   handshakes (in all, and per remote address) the upgrade gets 503 at once.
2. The acceptor sends its Connect with a fresh nonce; the dialer answers with its own Connect,
   nonce and proof; the acceptor checks the version, that the host is a peer that dials it, and
   the proof, all within ``handshake_timeout`` of the upgrade, then answers with its own proof
   (or a rejection with a reason code). The dialer checks that proof before it uses the session.
3. Only then does anything change: a verified dial from the right peer replaces the session
   that peer had (it dialed because it thinks the old one is dead, or it restarted). A failed,
   replayed or timed-out handshake never touches a session that is up.

Why inside the websocket, after the upgrade: the challenge must reach the dialer before its
proof, which takes a round trip that the upgrade request alone cannot carry; doing it on the
same socket binds the proof to that one connection with no shared table of outstanding
challenges for anyone to flood, and keeps the whole exchange one byte stream (the later
sans-IO session will own it). The cost is that an unauthenticated peer holds an upgraded
socket until it answers, so that is capped in count and in time (:class:`GridConfig`
``max_pending_handshakes``, ``max_pending_per_address``, ``handshake_timeout``).

The accepting side never dials, so while unconnected it *pokes* the dialer ("dial me now") on
``GET /minigrid/grid/v1/poke``: the same handshake with the ``poke`` purpose, so a poke is as
fresh and as authentic as a dial, and cannot be replayed. A verified poke from a new instance
of a peer ends the session with its old instance at once.

Rejections are logged once per peer and reason code, on both sides, not on every retry
(:class:`minigrid.rejections.RejectionLog`, bounded).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import random
import ssl
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final

import aiohttp
from aiohttp import web

from . import protocol, sockets
from .config import GridConfig
from .connection import Connection
from .errors import HandshakeError, HandshakeRejected
from .handlers import Registry, SingleFn, StreamFn
from .handshake import (
    AcceptorHandshake,
    Code,
    DialerHandshake,
    Hello,
    Purpose,
    derive_key,
    printable,
    reject_frame,
)
from .links import LinkFault, Links
from .liveness import PEER_RESTARTED, LoopMonitor
from .rejections import RejectionLog
from .state import State
from .stats import ConnStats
from .trace import CallListeners

log = logging.getLogger("minigrid.grid")

#: Rejections that pass by themselves (the peer is loaded or stopping): not worth a warning on
#: the dialing side. The accepting side says "busy" once per address; that is the one to read.
_TRANSIENT: Final = frozenset({Code.BUSY, Code.CLOSING})

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


def grid_url(host: str, *, tls: bool = False, path: str = GRID_PATH) -> str:
    """The grid URL of a host string such as ``127.0.0.1:9001`` or ``http://node2:9000``.

    A bare host gets ``https://`` when ``tls`` (aiohttp then speaks ``wss://``)."""
    if host.startswith(("http://", "https://")):
        base = host
    else:
        base = f"{'https' if tls else 'http'}://{host}"
    return base.rstrip("/") + path


def _hostname(host: str) -> str:
    """The host name (or address) of a host string, for a TLS check: ``node2:9000`` -> ``node2``."""
    netloc = host.split("://", 1)[-1].split("/", 1)[0]
    if netloc.startswith("["):
        return netloc[1 : netloc.index("]")]
    return netloc.rsplit(":", 1)[0] if ":" in netloc else netloc


def _tls_version(transport_owner: Any) -> str:
    """The TLS version of a websocket's connection ("TLSv1.3"), or "" when it is plaintext."""
    ssl_object = transport_owner.get_extra_info("ssl_object")
    if ssl_object is None:
        return ""
    return str(ssl_object.version() or "TLS")


class Manager:
    """Owns this node's grid: the registry, one :class:`Connection` per peer, the routes.

    ``tls``: the client context for dialing peers over ``wss://`` (it decides which
    certificates to trust); ``None`` dials plaintext ``ws://``. Serving TLS is the HTTP
    server's job (see :func:`minigrid.tls.server_context`)."""

    def __init__(
        self,
        local: str,
        peers: Iterable[str],
        secret: str | bytes,
        *,
        config: GridConfig | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.local = local
        self.config = config or GridConfig()
        self.instance_id = uuid.uuid4().hex
        self.registry = Registry()
        self._key = derive_key(secret)
        self._tls = tls
        self._peers = [peer for peer in dict.fromkeys(peers) if peer != local]
        self._connections: dict[str, Connection] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._serving: dict[str, asyncio.Task[Any]] = {}
        self._installing: dict[str, asyncio.Lock] = {}
        self._session: aiohttp.ClientSession | None = None
        self._rejections = RejectionLog(log)
        self._pending: collections.Counter[str] = collections.Counter()
        self._closed = False
        self._started = False
        #: Called synchronously as ``listener(conn, old_state, new_state, cause)`` on every
        #: state change, e.g. to keep a peer table in step with the grid.
        self.state_listeners: list[Callable[[Connection, State, State, str], None]] = []
        #: Called with a :class:`~minigrid.trace.CallRecord` whenever a call or stream ends.
        self.call_listeners = CallListeners()
        #: This process's event-loop lag, reported to peers in every pong.
        self.monitor = LoopMonitor(interval=self.config.lag_interval)
        self._pokes: dict[str, asyncio.Event] = {}
        #: Simulated partitions per peer (fault injection; see :meth:`partition`).
        self.links = Links()

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

    def http_routes(
        self,
    ) -> list[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]]:
        """The grid's HTTP routes (sessions and pokes) as ``(method, path, handler)``."""
        return [("GET", GRID_PATH, self._accept), ("GET", POKE_PATH, self._accept_poke)]

    def add_routes(self, app: web.Application) -> None:
        """Serve the grid routes (sessions and pokes) on an aiohttp application."""
        for method, path, handler in self.http_routes():
            app.router.add_route(method, path, handler)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def peers(self) -> list[str]:
        return list(self._peers)

    @property
    def tls(self) -> bool:
        """Whether this node dials its peers over TLS."""
        return self._tls is not None

    @property
    def pending_handshakes(self) -> int:
        """Unauthenticated handshakes in progress on the accepting side."""
        return sum(self._pending.values())

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
            self._installing[peer] = asyncio.Lock()
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

    def partition(self, remote: str, mode: str | None) -> None:
        """Act out a network partition from ``remote`` on this end (fault injection).

        ``mode`` is ``"silent"`` (packets dropped), ``"reset"`` (packets answered with a
        reset) or None (the partition heals); see :mod:`minigrid.links`. Tell the peer too,
        for a partition that both ends see."""
        conn = self.connection(remote)
        fault = None if mode is None else LinkFault(mode)
        self.links.set(remote, fault)
        if fault is LinkFault.RESET:
            conn.drop("reset: connection reset by peer (partitioned)")
        what = f"partitioned ({mode}; fault injection)" if fault else "partition lifted"
        log.info("grid %s->%s: %s", self.local, remote, what)

    def route(self, remote: str, address: str | None) -> None:
        """Dial ``remote`` at ``address`` (``host:port`` of a proxy in front of it; fault
        injection), or directly again with None. The handshake still names ``remote``, and TLS
        still checks ``remote``'s certificate. Only new sessions take the new route: drop the
        current one (``connection(remote).drop(...)``) to move it."""
        self.connection(remote)  # an unknown peer is a KeyError, as everywhere
        self.links.set_route(remote, address)
        what = f"dialed through {address} (fault injection)" if address else "dialed directly"
        log.info("grid %s->%s: %s", self.local, remote, what)

    async def _link_open(self, remote: str) -> None:
        """Before dialing or poking ``remote``: fail or hang as a partition would."""
        fault = self.links.get(remote)
        if fault is LinkFault.RESET:
            raise ConnectionRefusedError(f"connection to {remote} reset (partitioned)")
        if fault is LinkFault.SILENT:
            await self.links.wait_clear(remote)  # until the caller's handshake timeout

    async def _link_accepts(self, remote: str, ws: web.WebSocketResponse) -> bool:
        """Whether a verified dial from ``remote`` may be answered; a partitioned one is
        closed at once (reset) or left unanswered until the handshake timeout (silent)."""
        fault = self.links.get(remote)
        if fault is LinkFault.SILENT:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.handshake_timeout):
                    await self.links.wait_clear(remote)
                    return True
        if fault is None:
            return True
        with contextlib.suppress(Exception):
            await ws.close()
        return False

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
            except (HandshakeError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                cause = self._outbound_failed(
                    ("dial-out", conn.remote), f"grid {self.local}->{conn.remote}", "dial", exc
                )
            else:
                self._rejections.clear(("dial-out", conn.remote))
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

    def _outbound_failed(
        self, key: tuple[str, str], prefix: str, what: str, exc: BaseException
    ) -> str:
        """Say why a dial or a poke failed, and return that cause. A rejection or a TLS
        failure is a problem to fix: a warning, once per peer and code. A peer that is down,
        busy or stopping is routine: debug only."""
        code = ""
        if isinstance(exc, HandshakeError):
            cause, code = _handshake_cause(exc), exc.code
        else:
            cause = f"{what} failed: {_describe(exc)}"
            if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
                code = Code.TLS
        if code and code not in _TRANSIENT:
            self._rejections.note(key, code, f"{prefix}: {cause}")
        else:
            log.debug("%s: %s", prefix, cause)
        return cause

    async def _dial(self, conn: Connection) -> tuple[aiohttp.ClientWebSocketResponse, str]:
        conn.counters.dial_attempts += 1
        async with asyncio.timeout(self.config.handshake_timeout):
            await self._link_open(conn.remote)
            ws = await self._open(conn.remote, GRID_PATH)
            try:
                sockets.tune(ws.get_extra_info("socket"), self.config)
                acceptor = await self._prove(ws, conn.remote, Purpose.DIAL)
            except BaseException:
                await ws.close()
                raise
        conn.counters.tls = _tls_version(ws)
        return ws, acceptor.instance

    async def _open(self, remote: str, path: str) -> aiohttp.ClientWebSocketResponse:
        """Upgrade to a websocket on ``remote``'s grid ``path`` (no credentials yet)."""
        assert self._session is not None
        routed = self.links.route(remote)
        try:
            return await self._session.ws_connect(
                grid_url(routed or remote, tls=self.tls, path=path),
                max_msg_size=_WS_MAX,
                compress=0,
                autoping=True,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=1.0),
                ssl=self._tls if self._tls is not None else True,
                server_hostname=_hostname(remote) if routed and self.tls else None,
            )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == 503:
                raise HandshakeRejected(
                    Code.BUSY, "the peer is busy or shutting down (HTTP 503)"
                ) from exc
            reason = f"HTTP {exc.status}: {printable(exc.message)} (not a minigrid v2 grid route?)"
            raise HandshakeRejected(Code.UNKNOWN, reason) from exc

    async def _prove(
        self, ws: aiohttp.ClientWebSocketResponse, remote: str, purpose: Purpose
    ) -> Hello:
        """The dialer's half of the handshake; the acceptor's verified Connect."""
        handshake = DialerHandshake(self._key, self.local, self.instance_id, remote, purpose)
        await ws.send_bytes(handshake.receive_challenge(await _receive_frame(ws)))
        return handshake.receive_response(await _receive_frame(ws))

    # --------------------------------------------------------------- accepting

    async def _accept(self, request: web.Request) -> web.StreamResponse:
        ws, handshake = await self._handshake(request, Purpose.DIAL)
        dialer = handshake.peer
        if dialer is None or not await self._link_accepts(dialer.host, ws):
            return ws
        conn = self._connections[dialer.host]
        task = asyncio.current_task()
        assert task is not None
        try:
            # One at a time per peer: two verified dials racing must not both serve.
            async with self._installing[dialer.host]:
                if self._closed:  # close() ran while we checked the proof
                    await ws.close()
                    return ws
                await self._replace_session(conn, dialer.instance)
                self._serving[dialer.host] = task
            await ws.send_bytes(handshake.accept())
            sockets.tune(ws.get_extra_info("socket"), self.config)
            conn.counters.tls = _tls_version(ws)
            if conn.state is State.UNCONNECTED or conn.state is State.ERROR:
                conn._set_state(State.CONNECTING)
            await conn.serve(ws, dialer.instance)
        except (ConnectionError, aiohttp.ClientError) as exc:
            log.debug("grid %s: session from %s ended before it began: %s",
                      self.local, dialer.host, _describe(exc))  # fmt: skip
        finally:
            if self._serving.get(dialer.host) is task:
                del self._serving[dialer.host]
        return ws

    async def _accept_poke(self, request: web.Request) -> web.StreamResponse:
        """A peer we dial says "dial me now" (and which instance it is)."""
        ws, handshake = await self._handshake(request, Purpose.POKE)
        poker = handshake.peer
        if poker is None or not await self._link_accepts(poker.host, ws):
            return ws
        conn = self._connections[poker.host]
        if conn.is_connected and poker.instance != conn.remote_instance:
            conn.drop(f"{PEER_RESTARTED}: poked by new instance {poker.instance[:8]}")
        self._pokes[poker.host].set()
        with contextlib.suppress(ConnectionError, RuntimeError, aiohttp.ClientError):
            await ws.send_bytes(handshake.accept())
        await ws.close()
        return ws

    async def _handshake(
        self, request: web.Request, purpose: Purpose
    ) -> tuple[web.WebSocketResponse, AcceptorHandshake]:
        """The acceptor's half, up to a verified Connect (``handshake.peer``). When it fails,
        ``peer`` is None, the rejection has been sent, the socket closed, and the log has said
        so once. Counts against the pending caps until the proof is checked."""
        address = request.remote or "?"
        busy = self._check_capacity(address)
        if busy is not None:
            self._refused(purpose, address, None, busy)
            raise web.HTTPServiceUnavailable(text=busy.reason, headers={"Retry-After": "1"})
        ws = web.WebSocketResponse(max_msg_size=_WS_MAX, compress=False, autoping=True, timeout=1.0)
        handshake = AcceptorHandshake(
            self._key, self.local, self.instance_id, purpose,
            admit=lambda host: self._admit(purpose, host),
        )  # fmt: skip
        self._pending[address] += 1
        try:
            await self._challenge(request, ws, handshake, address)
        finally:
            self._pending[address] -= 1
            if self._pending[address] <= 0:
                del self._pending[address]
        if handshake.peer is not None:
            self._rejections.clear((f"{purpose.value}-in", handshake.peer.host))
        return ws, handshake

    async def _challenge(
        self,
        request: web.Request,
        ws: web.WebSocketResponse,
        handshake: AcceptorHandshake,
        address: str,
    ) -> None:
        """Upgrade, challenge, check the answer; on any failure, refuse and close."""
        purpose = handshake.purpose
        try:
            async with asyncio.timeout(self.config.handshake_timeout):
                await ws.prepare(request)
                await ws.send_bytes(handshake.challenge())
                handshake.receive_connect(await _receive_frame(ws))
                return
        except HandshakeError as exc:
            self._refused(purpose, address, handshake.claimed, exc)
            with contextlib.suppress(ConnectionError, RuntimeError, aiohttp.ClientError):
                await ws.send_bytes(reject_frame(Code.parse(exc.code), exc.reason))
        except TimeoutError:
            self._refused(purpose, address, handshake.claimed, HandshakeError(
                Code.TIMEOUT, f"no proof within {self.config.handshake_timeout:g}s"
            ))  # fmt: skip
        except (ConnectionError, aiohttp.ClientError, OSError) as exc:
            log.debug("grid %s: %s handshake from %s broke off: %s",
                      self.local, purpose.value, address, _describe(exc))  # fmt: skip
        with contextlib.suppress(Exception):
            await ws.close()

    def _check_capacity(self, address: str) -> HandshakeError | None:
        if self._closed:
            return HandshakeError(Code.CLOSING, f"{self.local} is shutting down")
        if self.pending_handshakes >= self.config.max_pending_handshakes:
            return HandshakeError(
                Code.BUSY, f"{self.config.max_pending_handshakes} handshakes already pending"
            )
        if self._pending[address] >= self.config.max_pending_per_address:
            return HandshakeError(
                Code.BUSY,
                f"{self.config.max_pending_per_address} handshakes already pending from {address}",
            )
        return None

    def _admit(self, purpose: Purpose, host: str) -> tuple[Code, str] | None:
        """Whether ``host`` may make this kind of connection to us (before its proof)."""
        conn = self._connections.get(host)
        if conn is None:
            return Code.UNKNOWN_HOST, f"{printable(host, 64)} is not a peer of {self.local}"
        if self._closed:
            return Code.CLOSING, f"{self.local} is shutting down"
        if purpose is Purpose.DIAL and conn.dialer:
            return Code.WRONG_SIDE, f"{self.local} dials {host}, not the reverse"
        if purpose is Purpose.POKE and not conn.dialer:
            return Code.WRONG_SIDE, f"{host} dials {self.local}; only the accepting side pokes"
        return None

    def _refused(
        self, purpose: Purpose, address: str, claimed: str | None, exc: HandshakeError
    ) -> None:
        """Log a refusal once per (kind, who) and code. *Who* is a known peer's host, else
        the remote address: never a host string an unknown peer made up."""
        who = claimed if claimed is not None and claimed in self._connections else address
        claim = f" claiming {printable(claimed, 64)}" if claimed and claimed != who else ""
        if exc.code == Code.CLOSING:  # we are going away: nothing for anyone to fix
            log.debug("grid %s: refused %s from %s: shutting down", self.local, purpose.value, who)
            return
        self._rejections.note(
            (f"{purpose.value}-in", who),
            exc.code,
            f"grid {self.local}: rejected {purpose.value} from {who}{claim}: "
            f"{exc.code}: {exc.reason}",
        )

    async def _replace_session(self, conn: Connection, instance: str) -> None:
        """A verified new dial while a session is up: the old one is dead (or the peer
        restarted). Called only after the dialer's proof checked out."""
        old = self._serving.get(conn.remote)
        if old is None or old is asyncio.current_task():
            return
        cause = "peer-restarted" if instance != conn.remote_instance else "replaced by a new dial"
        conn.pending_cause = cause
        old.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            async with asyncio.timeout(2.0):
                await asyncio.wait({old})

    # ------------------------------------------------------------------ poking

    async def _poke_loop(self, conn: Connection) -> None:
        """As the accepting side, tell the dialer we are reachable whenever we are unconnected."""
        key = ("poke-out", conn.remote)
        while not self._closed:
            if conn.state is not State.CONNECTED:
                try:
                    await self._poke(conn.remote)
                except (HandshakeError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                    prefix = f"grid {self.local}: poke to {conn.remote}"
                    self._outbound_failed(key, prefix, "poke", exc)
                else:
                    self._rejections.clear(key)
            # While connected, sleep until the state changes; while not, poke every interval.
            timeout = None if conn.is_connected else self.config.poke_interval
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await conn.wait_change()

    async def _poke(self, remote: str) -> None:
        """One poke: a handshake with the ``poke`` purpose, then close."""
        async with asyncio.timeout(self.config.handshake_timeout):
            await self._link_open(remote)
            ws = await self._open(remote, POKE_PATH)
            try:
                await self._prove(ws, remote, Purpose.POKE)
            finally:
                await ws.close()


async def _receive_frame(ws: aiohttp.ClientWebSocketResponse | web.WebSocketResponse) -> bytes:
    """The next binary frame of a handshake; a close or anything else is a broken handshake."""
    msg = await ws.receive()
    if msg.type is aiohttp.WSMsgType.BINARY:
        data: bytes = msg.data
        return data
    if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
        raise ConnectionResetError("the peer closed the websocket during the handshake")
    if msg.type is aiohttp.WSMsgType.ERROR:
        raise ConnectionResetError(f"websocket error during the handshake: {msg.data}")
    raise HandshakeError(Code.MALFORMED, f"expected a binary frame, got {msg.type.name}")


def _handshake_cause(exc: HandshakeError) -> str:
    if isinstance(exc, HandshakeRejected):
        return f"rejected by peer: {exc.code}: {exc.reason}"
    return f"handshake failed: {exc.code}: {exc.reason}"


def _next_backoff(previous: float, config: GridConfig) -> float:
    """Jittered exponential backoff: ~1–2s first, doubling to the cap.

    ``previous < 0`` means a session was up until now: wait only a moment."""
    if previous < 0:
        return config.first_redial_max * random.random()
    if previous == 0:
        return config.backoff_initial * (1 + random.random())
    return min(config.backoff_cap, previous * 2) * (0.75 + random.random() * 0.25)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"TLS: the peer's certificate is not trusted: {exc.certificate_error}"
    if isinstance(exc, aiohttp.ClientSSLError):
        return f"TLS handshake failed (is the peer serving TLS?): {exc.os_error}"
    text = str(exc)
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__
