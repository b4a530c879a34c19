"""One long-lived connection to one peer, driving the sans-IO protocol over a websocket.

A :class:`Connection` outlives the websockets it runs on: each websocket is a *session*. While a
session is up a reader task decodes frames and dispatches messages synchronously, and a writer
task drains the out-queue into merged frames. When a session ends, for any reason, everything in
flight fails at once with :class:`~minigrid.errors.Disconnected`, the queues are emptied, and
only then is the socket closed. No code path awaits a send while holding anything a reconnect
needs, so a full queue can never keep a new session from coming up (the MinIO deadlock).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aiohttp

from . import protocol, trace
from .errors import (
    Cancelled,
    DeadlineExceeded,
    Disconnected,
    GridError,
    LimitExceeded,
    PayloadTooLarge,
    RemoteError,
    RemoteProtocolError,
)
from .handlers import SingleHandler, UnknownHandler, handler_name
from .liveness import (
    LOCAL_STALLED,
    MAX_WIRE_TIME,
    NETWORK_SILENT,
    PEER_NOT_READING,
    PEER_RESTARTED,
    REMOTE_STALLED,
    Health,
    cause_kind,
    diagnose_silence,
    wire_number,
)
from .mux import HELD_OVERHEAD, Budget, Fragments
from .protocol import Flags, Message, Op
from .state import State, check_transition
from .stats import ConnStats, Counters
from .streams import ClientStream, ServerStream

if TYPE_CHECKING:
    from .manager import Manager

log = logging.getLogger("minigrid.grid")

_ERR = int(Flags.PAYLOAD_IS_ERR)
_MORE = int(Flags.MORE)
_SUBROUTE = int(Flags.SUBROUTE)
_REQUEST = int(Op.REQUEST)
_RESPONSE = int(Op.RESPONSE)
_CLIENT_OPS = frozenset(int(op) for op in protocol.CLIENT_OPS)
_CLOSE_TYPES = frozenset(
    {aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED}
)
#: Per session, the first few protocol errors of single messages or muxes, and the first
#: refusal for a cap, are logged; the rest are only counted (``ConnStats``), so a hostile peer
#: cannot flood the log.
_LOGGED_PER_SESSION = 3


#: The reader lets the rest of the loop run at least this often, however fast frames arrive.
READ_YIELD_EVERY = 0.005


class _Expired(Exception):
    """Internal: a server-side call ran past its deadline."""


class Connection:
    """The connection from this node to one peer. Get it from :meth:`Manager.connection`."""

    def __init__(self, manager: Manager, remote: str, *, dialer: bool) -> None:
        self.manager = manager
        self.config = manager.config
        self.local = manager.local
        self.remote = remote
        #: True when this side dials (decided by :func:`minigrid.manager.should_dial`).
        self.dialer = dialer
        self.remote_instance = ""
        self._state = State.UNCONNECTED
        self._state_changed = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._mux_ids = itertools.count(1)
        self._generation = 0
        # Out-queue: control overtakes data; data is bounded by count and bytes.
        self._control: collections.deque[bytes] = collections.deque()
        self._data: collections.deque[bytes] = collections.deque()
        self._data_bytes = 0
        self._space_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._writer_wake: asyncio.Future[None] | None = None
        # In-flight work, keyed by mux id. Client ids are ours; server ids are the peer's.
        self._client_calls: dict[int, asyncio.Future[bytes]] = {}
        # Calls the peer has running here: mux id -> (task, what its payload costs the budget).
        # Whoever removes an entry gives the cost back (a task cancelled before it ever ran
        # cannot do it itself).
        self._server_calls: dict[int, tuple[asyncio.Task[None], int]] = {}
        self._client_streams: dict[int, ClientStream] = {}
        self._server_streams: dict[int, ServerStream] = {}
        # Call payloads being reassembled, keyed by (op, mux id).
        self._partial: dict[tuple[int, int], Fragments] = {}
        #: Bytes received from the peer and held here, across every mux (a new one per
        #: session; whatever holds bytes releases them to the budget it charged).
        self.budget = Budget(self.config.max_held_bytes)
        self._max_control = self.config.max_control_messages
        # When the data queue last refused a message with no frame written since (None: the
        # writer has made progress since the queue was last full).
        self._full_since: float | None = None
        self._ws: aiohttp.ClientWebSocketResponse | aiohttp.web.WebSocketResponse | None = None
        self._breaches = 0  # protocol errors of single messages or muxes, this session
        self._refusals = 0  # requests or streams refused for a cap, this session
        self.counters = Counters()
        self.last_cause = ""
        #: Set by the manager before it cancels a session, so the session reports why.
        self.pending_cause = ""
        self._drop: asyncio.Future[str] | None = None
        self._transport: asyncio.Transport | None = None
        self._peer_health: Health | None = None
        # The last disconnect, while a later report (a pong with a long stall, a new instance)
        # may still revise its diagnosis: (when it happened, its cause).
        self._revisable: tuple[float, str] | None = None
        self._last_seen = 0.0
        self._dispatch: dict[int, Callable[[Message], None]] = {
            int(Op.REQUEST): self._on_request,
            int(Op.RESPONSE): self._on_response,
            int(Op.DISCONNECT_SERVER_MUX): self._on_disconnect_server_mux,
            int(Op.PING): self._on_ping,
            int(Op.PONG): self._on_pong,
            int(Op.CONNECT_MUX): self._on_connect_mux,
            int(Op.ACK_MUX): self._on_ack_mux,
            int(Op.CLIENT_MSG): self._on_client_msg,
            int(Op.SERVER_MSG): self._on_server_msg,
            int(Op.UNBLOCK_CLIENT): self._on_unblock_client,
            int(Op.UNBLOCK_SERVER): self._on_unblock_server,
            int(Op.DISCONNECT_CLIENT_MUX): self._on_disconnect_client_mux,
            int(Op.MUX_CONNECT_ERROR): self._on_mux_connect_error,
        }

    # ------------------------------------------------------------------ state

    @property
    def state(self) -> State:
        """The current :class:`~minigrid.state.State`."""
        return self._state

    @property
    def is_connected(self) -> bool:
        return self._state is State.CONNECTED

    def _set_state(self, new: State, cause: str = "") -> None:
        if new is self._state:
            return
        check_transition(self._state, new)
        old, self._state = self._state, new
        if cause and new is not State.CONNECTED:
            self.last_cause = cause
        if new is State.CONNECTED or old is State.CONNECTED or new is State.SHUTDOWN:
            log.info(
                "grid %s->%s: %s -> %s%s",
                self.local,
                self.remote,
                old.value,
                new.value,
                f" ({cause})" if cause else "",
                extra=self.log_fields(cause, state=new.value),
            )
        self._state_changed.set()
        self._state_changed = asyncio.Event()
        for listener in self.manager.state_listeners:
            try:
                listener(self, old, new, self.last_cause)
            except Exception:
                log.exception("grid: state listener failed")

    def log_fields(
        self,
        cause: str = "",
        *,
        handler: str | None = None,
        subroute: str | None = None,
        **more: object,
    ) -> dict[str, object]:
        """Structured fields for a log line about this peer (``extra=`` of a log call): who,
        why, and how the peer looked at last contact."""
        seen = self._last_seen
        health = self._peer_health
        return {
            "local": self.local,
            "remote": self.remote,
            "cause": cause_kind(cause) if cause else None,
            "cause_detail": cause or None,
            "handler": handler,
            "subroute": subroute,
            "last_seen_s": round(self._loop.time() - seen, 3) if seen else None,
            "peer_loop_lag_s": round(health.loop_lag, 3) if health is not None else None,
            **more,
        }

    async def wait_state(self, wanted: State, timeout: float | None = None) -> None:
        """Wait until the connection is in ``wanted`` (raises TimeoutError on timeout)."""
        async with asyncio.timeout(timeout):
            while self._state is not wanted:
                await self._state_changed.wait()

    async def wait_change(self) -> None:
        """Wait for the next state change."""
        await self._state_changed.wait()

    def stats(self) -> ConnStats:
        """A snapshot of this connection's statistics."""
        now = self._loop.time()
        return self.counters.snapshot(
            now=now,
            state=self._state.value,
            remote=self.remote,
            remote_instance=self.remote_instance,
            last_seen=self._last_seen,
            queue_messages=len(self._data) + len(self._control),
            queue_bytes=self._data_bytes,
            inflight_calls=len(self._client_calls),
            inflight_handlers=len(self._server_calls),
            inflight_streams=len(self._client_streams) + len(self._server_streams),
            last_cause=self.last_cause,
            held_bytes=self.budget.held,
            queue_waiters=len(self._space_waiters),
        )

    # ---------------------------------------------------------------- out-queue

    def _kick(self) -> None:
        waiter = self._writer_wake
        if waiter is not None:
            self._writer_wake = None
            if not waiter.done():
                waiter.set_result(None)

    def _put_control(self, message: bytes) -> None:
        """Queue a control message. Never blocks: control messages are small, and their queue
        only fills when the peer stops reading, which ends the session instead."""
        if self._state is State.CONNECTED:
            control = self._control
            if len(control) >= self._max_control:
                self._not_reading(
                    f"{len(control)} control messages queued and unsent (cap {self._max_control})"
                )
                return
            control.append(message)
            self._kick()

    def _not_reading(self, detail: str) -> None:
        """End the session: the peer keeps sending but does not read what we send."""
        cause = f"{PEER_NOT_READING}: {detail}; the peer sends but does not read"
        if self.drop(cause):
            log.warning("grid %s->%s: disconnecting: %s", self.local, self.remote, cause)

    def _put_terminal(self, message: bytes) -> None:
        """Queue the last message of a stream direction past the bound: it must never wait,
        and there is at most one per mux."""
        if self._state is State.CONNECTED:
            self._data.append(message)
            self._data_bytes += len(message)
            self._kick()

    def _try_put_data(self, message: bytes) -> bool:
        if self._data and (
            len(self._data) >= self.config.max_queue_messages
            or self._data_bytes + len(message) > self.config.max_queue_bytes
        ):
            if self._full_since is None:
                self._full_since = self._loop.time()
            return False
        self._data.append(message)
        self._data_bytes += len(message)
        self._kick()
        return True

    def _put_data_nowait(self, message: bytes) -> bool:
        """Queue a data message if the session is up and the queue has room; else False."""
        return self._state is State.CONNECTED and self._try_put_data(message)

    async def _put_data(self, message: bytes) -> None:
        """Queue a data message, waiting (cancellably) while the queue is full."""
        if self._state is not State.CONNECTED:
            raise self._disconnected()
        if self._try_put_data(message):
            return
        generation = self._generation
        while True:
            waiter: asyncio.Future[None] = self._loop.create_future()
            self._space_waiters.append(waiter)
            try:
                await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self._space_waiters.remove(waiter)
            if generation != self._generation or self._state is not State.CONNECTED:
                raise self._disconnected()
            if self._try_put_data(message):
                return

    def _wake_space_waiters(self, count: int) -> None:
        while count > 0 and self._space_waiters:
            waiter = self._space_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                count -= 1

    def _take_batch(self) -> list[bytes]:
        batch: list[bytes] = []
        control, data = self._control, self._data
        max_messages = self.config.merge_max_messages
        while control and len(batch) < max_messages:
            batch.append(control.popleft())
        size = sum(map(len, batch))
        max_bytes = self.config.merge_max_bytes
        taken = 0
        while data and len(batch) < max_messages:
            nxt = data[0]
            if batch and size + len(nxt) > max_bytes:
                break
            data.popleft()
            batch.append(nxt)
            size += len(nxt)
            taken += 1
            self._data_bytes -= len(nxt)
        if taken:
            self._wake_space_waiters(taken)
        return batch

    async def _write_loop(
        self, ws: aiohttp.ClientWebSocketResponse | aiohttp.web.WebSocketResponse
    ) -> None:
        counters = self.counters
        links = self.manager.links
        while True:
            if not self._control and not self._data:
                self._writer_wake = self._loop.create_future()
                await self._writer_wake
                continue
            await links.wait_clear(self.remote)  # a simulated silent partition holds the queue
            batch = self._take_batch()
            frame = protocol.merge(batch)
            await ws.send_bytes(frame)
            self._full_since = None  # the peer is reading
            counters.frames_out += 1
            counters.messages_out += len(batch)
            counters.bytes_out += len(frame)

    # ---------------------------------------------------------------- sessions

    def _disconnected(self) -> Disconnected:
        cause = self.last_cause or self._state.value
        return Disconnected(
            f"grid connection {self.local}->{self.remote} is down ({cause})", cause=cause
        )

    def report_call(
        self,
        handler: int | str,
        subroute: str,
        direction: str,
        kind: str,
        duration: float,
        failure: BaseException | None,
        request_bytes: int,
        response_bytes: int,
    ) -> None:
        """Tell the call listeners that a call or stream ended (only call when there are any)."""
        name = handler if isinstance(handler, str) else handler_name(handler)
        self.manager.call_listeners.emit(
            trace.CallRecord(
                handler=name,
                subroute=subroute,
                peer=self.remote,
                direction=direction,
                kind=kind,
                duration=duration,
                status=trace.status_of(failure),
                request_bytes=request_bytes,
                response_bytes=response_bytes,
                error="" if failure is None else (str(failure) or type(failure).__name__),
            )
        )

    async def serve(
        self,
        ws: aiohttp.ClientWebSocketResponse | aiohttp.web.WebSocketResponse,
        remote_instance: str,
    ) -> str:
        """Run one session on an open, handshaken websocket until it ends; return the cause."""
        if self.remote_instance and remote_instance != self.remote_instance:
            self._revise(
                f"{PEER_RESTARTED}: instance {self.remote_instance[:8]} -> {remote_instance[:8]}"
            )
        self.remote_instance = remote_instance
        self._peer_health = None
        self._generation += 1
        self.budget = Budget(self.config.max_held_bytes)
        self._full_since = None
        self._breaches = self._refusals = 0
        self._ws = ws
        self._last_seen = self._loop.time()
        self.counters.session_started(self._loop.time())
        self._set_state(State.CONNECTED)
        self._drop = self._loop.create_future()
        writer = getattr(ws, "_writer", None)
        self._transport = getattr(writer, "transport", None)
        tasks: list[asyncio.Future[Any]] = [
            asyncio.create_task(self._read_loop(ws), name=f"grid-read {self.remote}"),
            asyncio.create_task(self._write_loop(ws), name=f"grid-write {self.remote}"),
            asyncio.create_task(self._liveness_loop(), name=f"grid-liveness {self.remote}"),
            self._drop,
        ]
        cause = "shutdown"
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            cause = self._session_cause(done.pop())
        except asyncio.CancelledError:
            cause, self.pending_cause = self.pending_cause or "shutdown", ""
            raise
        finally:
            for task in tasks:
                task.cancel()
            # Fail everything before closing the socket: callers must not wait on a slow close.
            self._teardown(cause)
            self._ws = None
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await ws.close()
        return cause

    async def send_raw_frame(self, frame: bytes) -> None:
        """Send ``frame`` as one websocket frame, exactly as given: no encoding, no queue.

        A test hook, for hostile-peer tests that need bytes no well-behaved node would send;
        nothing in minigrid or the node calls it."""
        ws = self._ws
        if ws is None or self._state is not State.CONNECTED:
            raise self._disconnected()
        try:
            await ws.send_bytes(frame)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            raise self._disconnected() from None  # the session ended under the send
        except (ConnectionError, aiohttp.ClientError) as exc:
            raise self._disconnected() from exc

    def expect_raw_reply(self, mux_id: int) -> asyncio.Future[bytes]:
        """A future for the reply the peer sends to a raw request on ``mux_id``, as if a call
        of ours were waiting on it: the payload, RemoteError, or Disconnected when the session
        ends. The test hook that goes with :meth:`send_raw_frame`; pick mux ids far above the
        connection's own (say from 2**48)."""
        if self._state is not State.CONNECTED:
            raise self._disconnected()
        future: asyncio.Future[bytes] = self._loop.create_future()
        calls = self._client_calls
        calls[mux_id] = future

        def forget(_: asyncio.Future[bytes]) -> None:
            if calls.get(mux_id) is future:
                del calls[mux_id]

        future.add_done_callback(forget)
        return future

    def pause_reading(self, paused: bool = True) -> None:
        """Stop (or resume) reading this session's socket, as a frozen peer would.

        Fault injection for tests and labs: the peer's writes back up into its out-queue."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if paused:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def drop(self, cause: str = "reset: dropped on request") -> bool:
        """End the current session as if the socket had been reset (fault injection, tests).

        The dialing side redials as usual. Returns False if no session was running."""
        if self._drop is not None and not self._drop.done():
            self._drop.set_result(cause)
            return True
        return False

    def _session_cause(self, task: asyncio.Future[Any]) -> str:
        if task.cancelled():
            return "cancelled"
        exc = task.exception()
        if exc is None:
            result = str(task.result() or "reset: session ended")
            if cause_kind(result) == "reset":
                now = self._loop.time()
                stall = self.manager.monitor.stalled_during(now - self.config.dead_after, now)
                if stall >= self.config.dead_after / 2:
                    return (
                        f"{LOCAL_STALLED}: our loop stalled {stall:.1f}s and the peer "
                        f"gave up on us ({result})"
                    )
            return result
        if isinstance(exc, RemoteProtocolError):
            log.warning("grid %s->%s: protocol error from peer: %s", self.local, self.remote, exc)
            return f"protocol-error: {exc}"
        if isinstance(exc, (ConnectionError, aiohttp.ClientError, OSError)):
            return f"reset: {exc.__class__.__name__}: {exc}"
        log.error("grid %s->%s: session failed", self.local, self.remote, exc_info=exc)
        return f"error: {exc!r}"

    def _teardown(self, cause: str) -> None:
        """End the session's bookkeeping at once: fail calls, cancel handlers, drop the queue."""
        self._generation += 1
        self._log_casualties(cause)
        if self._state is State.CONNECTED:
            self._revisable = (self._loop.time(), cause)
            self._set_state(State.ERROR, cause)
        else:
            self.last_cause = cause
        self._control.clear()
        self._data.clear()
        self._data_bytes = 0
        self._partial.clear()
        error = self._disconnected()
        for waiter in self._space_waiters:
            if not waiter.done():
                waiter.set_exception(error)
        self._space_waiters.clear()
        calls, self._client_calls = self._client_calls, {}
        for future in calls.values():
            if not future.done():
                future.set_exception(error)
        handlers, self._server_calls = self._server_calls, {}
        for task, _ in handlers.values():
            task.cancel()
        client_streams, self._client_streams = self._client_streams, {}
        for client_stream in client_streams.values():
            client_stream.on_disconnect(error)
        server_streams, self._server_streams = self._server_streams, {}
        for server_stream in server_streams.values():
            server_stream._send_closed = True
            server_stream._fail(error)
            if server_stream.task is not None:
                server_stream.task.cancel()
        self._kick()

    def _log_casualties(self, cause: str) -> None:
        """One line for everything a lost session takes with it, never one per call."""
        handlers = [task.get_name() for task, _ in self._server_calls.values()]
        handlers += [
            f"{st.handler_name} {st.subroute}".strip() for st in self._server_streams.values()
        ]
        calls, streams = len(self._client_calls), len(self._client_streams)
        if not (handlers or calls or streams) or cause == "shutdown":
            return
        named = collections.Counter(handlers)
        listed = ", ".join(
            f"{name} x{count}" if count > 1 else name for name, count in named.items()
        )
        log.warning(
            "grid %s->%s: session lost (%s): failed %d calls and %d streams; cancelled %d "
            "handlers%s",
            self.local,
            self.remote,
            cause,
            calls,
            streams,
            len(handlers),
            f" ({listed})" if listed else "",
        )

    def _revise(self, cause: str) -> None:
        """A later report explains the last disconnect better: say so once, and keep it."""
        if self._revisable is None:
            return
        when, earlier = self._revisable
        self._revisable = None
        if cause_kind(earlier) == cause_kind(cause):
            return
        self.last_cause = f"{cause} (revised from {cause_kind(earlier)})"
        log.warning(
            "grid %s->%s: the disconnect %.1fs ago was most likely %s, not %s",
            self.local,
            self.remote,
            self._loop.time() - when,
            cause,
            cause_kind(earlier),
        )

    async def _liveness_loop(self) -> str:
        """Ping the peer, watch for silence, and keep streams honest. Returns a cause."""
        config, loop, monitor = self.config, self._loop, self.manager.monitor
        tick = min(0.25, config.ping_interval / 4)
        next_ping = loop.time() + config.ping_interval
        # A first ping at once: RTT and the peer's health are known from the start.
        self._put_control(protocol.encode(Op.PING, payload=protocol.pack_obj({"t": loop.time()})))
        while True:
            expected = loop.time() + tick
            await asyncio.sleep(tick)
            now = loop.time()
            late = now - expected
            silence = now - self._last_seen
            if late >= config.dead_after / 2 or (
                silence > config.dead_after
                and monitor.stalled_during(self._last_seen, now) >= config.dead_after / 2
            ):
                # Our own loop was stalled: the silence is ours. Give the peer a fresh window.
                log.warning(
                    "grid %s->%s: local loop stalled %.1fs; not accusing the peer for that window",
                    self.local,
                    self.remote,
                    max(late, silence),
                )
                self._last_seen = now
                if self._full_since is not None:
                    self._full_since = now
                next_ping = now
                continue
            if silence > config.dead_after:
                return diagnose_silence(silence, self._peer_health, config.ping_interval)
            full_since = self._full_since
            if full_since is not None and now - full_since > config.dead_after:
                cause = (
                    f"{PEER_NOT_READING}: out-queue full for {now - full_since:.1f}s with "
                    f"nothing written ({len(self._data)} messages, {self._data_bytes} bytes "
                    "queued); the peer sends but does not read"
                )
                log.warning("grid %s->%s: disconnecting: %s", self.local, self.remote, cause)
                return cause
            if now >= next_ping:
                next_ping = now + config.ping_interval
                self._put_control(protocol.encode(Op.PING, payload=protocol.pack_obj({"t": now})))
            self._check_streams(now)

    def _check_streams(self, now: float) -> None:
        config = self.config
        for stream in list(self._client_streams.values()):
            if now - stream.last_seen > config.stream_client_timeout:
                stream.on_disconnect(
                    Disconnected(
                        f"{stream.handler_name}: the server stopped answering this stream for "
                        f"{now - stream.last_seen:.1f}s",
                        cause=NETWORK_SILENT,
                    )
                )
                self._put_control(protocol.encode(Op.DISCONNECT_SERVER_MUX, mux_id=stream.mux_id))
            elif now - stream.last_ping >= config.stream_ping_interval:
                stream.last_ping = now
                self._put_control(protocol.encode(Op.PING, mux_id=stream.mux_id))
        for server in list(self._server_streams.values()):
            age = now - server.last_seen
            if age > config.stream_timeout:
                health = self._peer_health
                why = (
                    f"remote loop stalled {health.loop_lag:.1f}s at last contact"
                    if health is not None and health.loop_lag >= config.ping_interval / 2
                    else "no traffic on this stream; remote loop healthy at last contact"
                )
                log.warning(
                    "canceling remote connection %s->%s not seen for %.1fs "
                    "(handler=%s subroute=%s): %s",
                    self.local,
                    self.remote,
                    age,
                    server.handler_name,
                    server.subroute or "-",
                    why,
                    extra=self.log_fields(
                        f"stream-silent: {why}",
                        handler=server.handler_name,
                        subroute=server.subroute,
                        last_seen_s=round(age, 3),
                    ),
                )
                del self._server_streams[server.mux_id]
                self._put_control(
                    protocol.encode(
                        Op.DISCONNECT_CLIENT_MUX,
                        mux_id=server.mux_id,
                        payload=f"server canceled the stream: not seen for {age:.1f}s".encode(),
                    )
                )
                self._cancel_server_stream(server, f"client not seen for {age:.1f}s")

    def health(self) -> Health:
        """This node's health as reported in pongs."""
        monitor = self.manager.monitor
        return Health(
            loop_lag=monitor.worst_lag(),
            queue=len(self._data) + len(self._control),
            calls=len(self._client_calls) + len(self._server_calls),
            streams=len(self._client_streams) + len(self._server_streams),
            stall=monitor.longest_stall(),
        )

    async def _read_loop(
        self, ws: aiohttp.ClientWebSocketResponse | aiohttp.web.WebSocketResponse
    ) -> str:
        counters = self.counters
        dispatch = self._dispatch
        loop = self._loop
        links = self.manager.links
        yielded = loop.time()
        while True:
            msg = await ws.receive()
            await links.wait_clear(self.remote)  # silent partition: nothing "arrives"
            if msg.type is aiohttp.WSMsgType.BINARY:
                data: bytes = msg.data
                now = self._last_seen = loop.time()
                counters.frames_in += 1
                counters.bytes_in += len(data)
                messages = protocol.decode_frame(data)
                counters.messages_in += len(messages)
                for message in messages:
                    handler = dispatch.get(message.op)
                    if handler is None:
                        raise RemoteProtocolError(f"unexpected {Op(message.op).name} in a session")
                    handler(message)
                if now - yielded > READ_YIELD_EVERY:
                    # Frames already buffered come back from receive() without a pause: a
                    # peer sending faster than we process would hold the loop (the writer,
                    # the timers, every other peer) for as long as it keeps sending.
                    await asyncio.sleep(0)
                    yielded = loop.time()
            elif msg.type in _CLOSE_TYPES:
                return f"reset: closed by peer (code {ws.close_code})"
            elif msg.type is aiohttp.WSMsgType.ERROR:
                raise ConnectionResetError(f"websocket error: {ws.exception()!r}")
            else:
                raise RemoteProtocolError(f"unexpected websocket message type {msg.type!r}")

    # ---------------------------------------------------------- fragmentation

    def _reassemble(self, op: int, message: Message, what: str) -> bytes | None:
        """Collect a call's ``MORE``-flagged fragments; return the whole payload at the last.

        Fragment n of a payload carries seq n. A fragment that continues nothing (seq > 0 and
        no payload under way) is the rest of a payload refused earlier, and is dropped. On any
        error the fragments held so far are dropped too, and the error is raised."""
        key = (op, message.mux_id)
        partial = self._partial.get(key)
        seq = message.seq
        if partial is None:
            if seq:
                return None
            if not message.flags & _MORE:
                return message.payload
            partial = self._partial[key] = Fragments(self.budget)
        try:
            if seq != len(partial.parts):
                raise RemoteProtocolError(
                    f"{what}: fragment {seq} out of order (expected {len(partial.parts)})"
                )
            if message.flags & _MORE:
                partial.add(message.payload, protocol.MAX_REASSEMBLED, what)
                return None
            del self._partial[key]
            return partial.finish(message.payload, protocol.MAX_REASSEMBLED, what)
        except RemoteProtocolError:
            self._partial.pop(key, None)
            partial.release()
            raise

    def _drop_partial(self, op: int, mux_id: int) -> None:
        partial = self._partial.pop((op, mux_id), None)
        if partial is not None:
            partial.release()

    async def _send_payload(
        self, op: int, mux_id: int, handler_id: int, deadline_ms: int, flags: int, payload: bytes
    ) -> None:
        """Queue a payload as one message, or as ≤1 MiB fragments if it is larger."""
        checksum = self.config.checksum_payloads
        if len(payload) <= protocol.CHUNK_SIZE:
            await self._put_data(
                protocol.encode(
                    op,
                    mux_id=mux_id,
                    deadline_ms=deadline_ms,
                    handler_id=handler_id,
                    flags=flags,
                    payload=payload,
                    checksum=checksum,
                )
            )
            return
        if len(payload) > protocol.MAX_REASSEMBLED:
            raise PayloadTooLarge(
                f"payload of {len(payload)} bytes is over {protocol.MAX_REASSEMBLED}"
            )
        for seq, (chunk, more) in enumerate(protocol.iter_chunks(payload)):
            await self._put_data(
                protocol.encode(
                    op,
                    mux_id=mux_id,
                    seq=seq,
                    deadline_ms=deadline_ms,
                    handler_id=handler_id,
                    flags=flags | (_MORE if more else 0),
                    payload=chunk,
                    checksum=checksum,
                )
            )

    # ------------------------------------------------------------ single calls

    async def call(
        self,
        handler_id: int,
        payload: bytes = b"",
        *,
        subroute: str = "",
        timeout: float | None = None,
    ) -> bytes:
        """Call a single-payload handler on the peer and return its response.

        Raises :class:`RemoteError` when the handler fails, :class:`Disconnected` when the
        connection is down or drops, and :class:`DeadlineExceeded` when ``timeout`` (default
        ``config.call_timeout``) passes. On cancellation or expiry the peer is told to drop
        the work.
        """
        if self._state is not State.CONNECTED:
            raise self._disconnected()
        if timeout is None:
            timeout = self.config.call_timeout
        loop = self._loop
        mux_id = next(self._mux_ids)
        future: asyncio.Future[bytes] = loop.create_future()
        self._client_calls[mux_id] = future
        expiry = loop.call_later(timeout, _expire, future, handler_id, timeout)
        flags = 0
        request_bytes = len(payload)
        if subroute:
            payload = protocol.with_subroute(subroute, payload)
            flags = _SUBROUTE
        generation = self._generation
        started = loop.time()
        failure: BaseException | None = None
        reply = b""
        try:
            await self._send_payload(
                _REQUEST, mux_id, int(handler_id), max(1, int(timeout * 1000)), flags, payload
            )
            reply = await future
            return reply
        except (asyncio.CancelledError, DeadlineExceeded) as exc:
            failure = exc
            if generation == self._generation:
                # Tell the peer the caller is gone, so it cancels the handler and drops the result.
                self._put_control(protocol.encode(Op.DISCONNECT_SERVER_MUX, mux_id=mux_id))
            raise
        except BaseException as exc:
            failure = exc
            raise
        finally:
            expiry.cancel()
            self._client_calls.pop(mux_id, None)
            if self.manager.call_listeners:
                elapsed = loop.time() - started
                self.report_call(handler_id, subroute, trace.CLIENT, trace.CALL, elapsed,
                                 failure, request_bytes, len(reply))  # fmt: skip

    def _on_response(self, message: Message) -> None:
        future = self._client_calls.get(message.mux_id)
        if future is None or future.done():
            if self._partial:
                self._drop_partial(_RESPONSE, message.mux_id)
            return  # the caller gave up; drop the late result
        if self._partial or message.flags & _MORE or message.seq:
            try:
                payload = self._reassemble(_RESPONSE, message, "response")
            except RemoteProtocolError as exc:
                self._breach(message, exc)
                future.set_exception(
                    RemoteError(
                        f"protocol error in the response: {exc}",
                        handler=handler_name(message.handler_id),
                    )
                )
                return
            if payload is None:
                return
        else:
            payload = message.payload
        if message.flags & _ERR:
            text = protocol.error_text(payload)
            future.set_exception(RemoteError(text, handler=handler_name(message.handler_id)))
        else:
            future.set_result(payload)

    def _on_request(self, message: Message) -> None:
        if self._partial or message.flags & _MORE or message.seq:
            try:
                payload = self._reassemble(_REQUEST, message, "request")
            except RemoteProtocolError as exc:
                self._refuse_call(message, exc)
                return
            if payload is None:
                return
        else:
            payload = message.payload
        subroute = ""
        if message.flags & _SUBROUTE:
            try:
                subroute, payload = protocol.split_subroute(payload)
            except RemoteProtocolError as exc:
                self._refuse_call(message, exc)
                return
        try:
            handler = self.manager.registry.single(message.handler_id, subroute)
        except UnknownHandler as exc:
            self._reply_error(message.mux_id, message.handler_id, str(exc))
            return
        calls = self._server_calls
        if len(calls) >= self.config.max_inflight_handlers:
            self._refuse_call(
                message,
                LimitExceeded(
                    f"{len(calls)} calls on this connection are already running "
                    f"(cap {self.config.max_inflight_handlers})"
                ),
            )
            return
        if message.mux_id in calls:
            self._refuse_call(
                message, RemoteProtocolError(f"mux {message.mux_id} is already a running call")
            )
            return
        cost = len(payload) + HELD_OVERHEAD
        try:
            self.budget.charge(cost, "request")
        except LimitExceeded as exc:
            self._refuse_call(message, exc)
            return
        timeout = message.deadline_ms / 1000 if message.deadline_ms else self.config.call_timeout
        task = self._loop.create_task(
            self._run_single(message.mux_id, handler, payload, timeout), name=handler.name
        )
        calls[message.mux_id] = (task, cost)

    async def _run_single(
        self, mux_id: int, handler: SingleHandler, payload: bytes, timeout: float
    ) -> None:
        """Run one call and queue its reply. The call keeps its slot (and its payload its
        share of the budget) until the reply is queued: with a peer that does not read, the
        slots fill and further requests are refused at once, instead of replies piling up."""
        task = asyncio.current_task()
        assert task is not None
        loop = self._loop
        started = loop.time()
        expiry = loop.call_later(timeout, _expire_task, task)
        sizes = (len(payload), 0)
        failure: BaseException | None = None
        try:
            # The handler is awaited here, not in a helper coroutine: one frame less per call.
            result: object = None
            try:
                result = await handler.fn(payload)
            except asyncio.CancelledError as exc:
                if not getattr(task, "_minigrid_expired", False):
                    failure = exc
                    raise  # the caller left or the connection dropped: nobody wants an answer
                task.uncancel()
                flags, body = _ERR, f"{handler.name}: deadline of {timeout:.3f}s exceeded".encode()
                failure = DeadlineExceeded(body.decode())
            except Exception as exc:
                flags, body = _ERR, (str(exc) or exc.__class__.__name__).encode()
                failure = exc
            else:
                flags, body = _check_result(handler, result)
                if flags:
                    failure = RemoteError(body.decode(errors="replace"))
            finally:
                expiry.cancel()
            sizes = (sizes[0], len(body))
            del payload, result
            waiting = self._reply(task, mux_id, handler.handler_id, flags, body)
            del body  # while the reply waits, only what it needs is kept
            if waiting is not None:
                await waiting
        except GridError as exc:
            failure = exc  # the connection dropped while the reply waited for room
        finally:
            entry = self._server_calls.get(mux_id)
            if entry is not None and entry[0] is task:
                del self._server_calls[mux_id]
                self.budget.release(entry[1])
            if self.manager.call_listeners:
                self.report_call(handler.handler_id, handler.subroute, trace.SERVER, trace.CALL,
                                 loop.time() - started, failure, *sizes)  # fmt: skip

    def _reply(
        self, task: asyncio.Task[None], mux_id: int, handler_id: int, flags: int, body: bytes
    ) -> Awaitable[None] | None:
        """Queue a call's reply: None once done, or what to await while it waits for room.
        A reply that waits is held for the peer: it is charged to the budget (or refused, if
        that would go over) while it waits."""
        if len(body) > protocol.CHUNK_SIZE:
            if self._hold_reply(task, mux_id, handler_id, len(body)):
                return self._send_payload(_RESPONSE, mux_id, handler_id, 0, flags, body)
            return None
        reply = protocol.encode(
            _RESPONSE,
            mux_id=mux_id,
            handler_id=handler_id,
            flags=flags,
            payload=body,
            checksum=self.config.checksum_payloads,
        )
        if self._put_data_nowait(reply):
            return None  # the common case: queued at once, without creating a coroutine
        if self._hold_reply(task, mux_id, handler_id, len(reply)):
            return self._put_data(reply)
        return None

    def _hold_reply(
        self, task: asyncio.Task[None], mux_id: int, handler_id: int, size: int
    ) -> bool:
        """A reply about to wait for room: its call is charged for the reply from now on
        instead of the request (the handler is done with that). False if the budget refused
        it (the call is answered "busy" instead) or the call is no longer ours to answer."""
        entry = self._server_calls.get(mux_id)
        if entry is None or entry[0] is not task:
            return False
        cost = size + HELD_OVERHEAD
        try:
            if cost > entry[1]:
                self.budget.charge(cost - entry[1], "reply waiting to be sent")
            else:
                self.budget.release(entry[1] - cost)
        except LimitExceeded as exc:
            self._refused(f"reply to request {mux_id} dropped: {exc}")
            self._reply_error(mux_id, handler_id, f"busy: {exc}; retry later")
            return False
        self._server_calls[mux_id] = (task, cost)
        return True

    def _reply_error(self, mux_id: int, handler_id: int, text: str) -> None:
        """Answer a call with an error at once, as a control message: it never waits behind
        data, and it never becomes a task."""
        self._put_control(
            protocol.encode(
                _RESPONSE,
                mux_id=mux_id,
                handler_id=handler_id,
                flags=_ERR,
                payload=text.encode()[: protocol.MAX_ERROR_TEXT],
            )
        )

    def _refuse_call(self, message: Message, exc: RemoteProtocolError) -> None:
        """Refuse one request: a cap was reached ("busy") or it broke the protocol."""
        if isinstance(exc, LimitExceeded):
            self._refused(f"request {message.mux_id} refused: {exc}")
            text = f"busy: {exc}; retry later"
        else:
            self._breach(message, exc)
            text = f"protocol error: {exc}"
        self._reply_error(message.mux_id, message.handler_id, text)

    def _breach(self, message: Message, exc: Exception) -> None:
        """One message or mux broke the protocol; it alone is refused. Logged a few times
        per session, then only counted."""
        self.counters.protocol_errors += 1
        self._breaches += 1
        if self._breaches <= _LOGGED_PER_SESSION:
            log.warning(
                "grid %s->%s: protocol error on mux %d (%s): %s%s",
                self.local,
                self.remote,
                message.mux_id,
                Op(message.op).name,
                exc,
                "; further ones this session are counted, not logged"
                if self._breaches == _LOGGED_PER_SESSION
                else "",
            )

    def _refused(self, what: str) -> None:
        """A request or stream was refused for a cap ("busy"). Logged once per session."""
        self.counters.refused += 1
        self._refusals += 1
        if self._refusals == 1:
            log.warning(
                "grid %s->%s: %s; further refusals this session are counted, not logged",
                self.local,
                self.remote,
                what,
            )

    def _on_disconnect_server_mux(self, message: Message) -> None:
        entry = self._server_calls.pop(message.mux_id, None)
        if self._partial:
            self._drop_partial(_REQUEST, message.mux_id)
        if entry is not None:
            self.budget.release(entry[1])
            entry[0].cancel()
        stream = self._server_streams.pop(message.mux_id, None)
        if stream is not None:
            self._cancel_server_stream(stream, "the client cancelled the stream")

    # ----------------------------------------------------------------- streams

    def stream(
        self,
        handler_id: int,
        payload: bytes = b"",
        *,
        subroute: str = "",
        timeout: float | None = None,
    ) -> ClientStream:
        """Open a stream to a streaming handler on the peer; use with ``async with``.

        ``timeout`` is the whole stream's deadline (none by default: long streams are kept
        honest by liveness checks instead). See :mod:`minigrid.streams`.
        """
        if self._state is not State.CONNECTED:
            raise self._disconnected()
        return ClientStream(
            self,
            next(self._mux_ids),
            int(handler_id),
            handler_name(handler_id),
            payload,
            subroute,
            timeout,
        )

    def _cancel_server_stream(self, stream: ServerStream, reason: str) -> None:
        """End a server stream already taken out of the table: its handler is cancelled."""
        stream._send_closed = True  # nobody is listening: send no terminal message
        stream._fail(Cancelled(f"{stream.handler_name}: {reason}"))
        stream.detach()
        if stream.task is not None:
            stream.task.cancel()

    def _on_connect_mux(self, message: Message) -> None:
        payload = message.payload
        subroute = ""
        try:
            if message.flags & _MORE:
                raise RemoteProtocolError("a stream's initial payload cannot be fragmented")
            if message.flags & _SUBROUTE:
                subroute, payload = protocol.split_subroute(payload)
            if message.mux_id in self._server_streams:
                raise RemoteProtocolError(f"stream mux {message.mux_id} is already open")
            handler = self.manager.registry.stream(message.handler_id, subroute)
        except UnknownHandler as exc:
            self._refuse_stream(message.mux_id, str(exc))
            return
        except RemoteProtocolError as exc:
            self._breach(message, exc)
            self._refuse_stream(message.mux_id, f"protocol error: {exc}")
            return
        cost = len(payload) + HELD_OVERHEAD
        try:
            if len(self._server_streams) >= self.config.max_inflight_streams:
                raise LimitExceeded(
                    f"{len(self._server_streams)} streams on this connection are already open "
                    f"(cap {self.config.max_inflight_streams})"
                )
            self.budget.charge(cost, "stream initial payload")
        except LimitExceeded as exc:
            self._refused(f"stream {message.mux_id} refused: {exc}")
            self._refuse_stream(message.mux_id, f"busy: {exc}; retry later")
            return
        stream = ServerStream(self, message.mux_id, handler, payload)
        stream.cost = cost
        self._server_streams[message.mux_id] = stream
        # The acknowledgement is control: it never waits behind a full data queue.
        ack = protocol.pack_obj({"in": handler.in_capacity, "out": handler.out_capacity})
        self._put_control(protocol.encode(Op.ACK_MUX, mux_id=message.mux_id, payload=ack))
        timeout = message.deadline_ms / 1000 if message.deadline_ms else None
        stream.task = self._loop.create_task(self._run_stream(stream, timeout))

    def _refuse_stream(self, mux_id: int, text: str) -> None:
        self._put_control(
            protocol.encode(
                Op.MUX_CONNECT_ERROR,
                mux_id=mux_id,
                payload=text.encode()[: protocol.MAX_ERROR_TEXT],
            )
        )

    async def _run_stream(self, stream: ServerStream, timeout: float | None) -> None:
        task = asyncio.current_task()
        assert task is not None
        started = self._loop.time()
        expiry = self._loop.call_later(timeout, _expire_task, task) if timeout else None
        failure: BaseException | None = None
        try:
            await stream.handler.fn(stream)
        except asyncio.CancelledError as exc:
            if not getattr(task, "_minigrid_expired", False):
                failure = exc
                raise
            task.uncancel()
            text = f"{stream.handler_name}: stream deadline of {timeout}s exceeded"
            failure = DeadlineExceeded(text)
            stream._send_end(text)
        except Exception as exc:
            failure = exc
            stream._send_end(str(exc) or exc.__class__.__name__)
        else:
            stream._send_end()
        finally:
            if expiry is not None:
                expiry.cancel()
            if self._server_streams.get(stream.mux_id) is stream:
                del self._server_streams[stream.mux_id]
            stream.detach()
            if self.manager.call_listeners:
                self.report_call(stream.handler.handler_id, stream.subroute, trace.SERVER,
                                 trace.STREAM, self._loop.time() - started, failure,
                                 len(stream.payload) + stream.bytes_received,
                                 stream.bytes_sent)  # fmt: skip

    def _mux_breach(self, message: Message, exc: RemoteProtocolError) -> None:
        """The peer broke the protocol on one mux, or went over a receive limit with it: fail
        that mux only, on both sides."""
        if isinstance(exc, LimitExceeded):
            self._refused(f"stream {message.mux_id} failed: {exc}")
            why = f"busy: {exc}"
        else:
            self._breach(message, exc)
            why = f"protocol error: {exc}"
        client = self._client_streams.get(message.mux_id)
        if client is not None and message.op not in _CLIENT_OPS:
            client._fail(RemoteError(f"{why} (on this stream)", handler=client.handler_name))
            client._tell_server()
            client._release()
            return
        server = self._server_streams.pop(message.mux_id, None)
        if server is not None:
            self._put_control(
                protocol.encode(
                    Op.DISCONNECT_CLIENT_MUX,
                    mux_id=message.mux_id,
                    payload=why.encode()[: protocol.MAX_ERROR_TEXT],
                )
            )
            self._cancel_server_stream(server, why)

    def _on_client_msg(self, message: Message) -> None:
        stream = self._server_streams.get(message.mux_id)
        if stream is None:
            return  # already ended here; the client will hear about it
        stream.last_seen = self._loop.time()
        try:
            stream.on_item(message.seq, message.flags, message.payload)
        except RemoteProtocolError as exc:
            self._mux_breach(message, exc)

    def _on_server_msg(self, message: Message) -> None:
        stream = self._client_streams.get(message.mux_id)
        if stream is None:
            return  # the caller already left; drop it
        stream.last_seen = self._loop.time()
        try:
            stream.on_item(message.seq, message.flags, message.payload)
        except RemoteProtocolError as exc:
            self._mux_breach(message, exc)

    def _on_ack_mux(self, message: Message) -> None:
        stream = self._client_streams.get(message.mux_id)
        if stream is not None:
            try:
                stream.on_ack(message.payload)
            except RemoteProtocolError as exc:
                self._mux_breach(message, exc)

    def _on_unblock_client(self, message: Message) -> None:
        stream = self._client_streams.get(message.mux_id)
        if stream is not None:
            try:
                stream._on_grant(message.payload)
            except RemoteProtocolError as exc:
                self._mux_breach(message, exc)

    def _on_unblock_server(self, message: Message) -> None:
        stream = self._server_streams.get(message.mux_id)
        if stream is not None:
            try:
                stream._on_grant(message.payload)
            except RemoteProtocolError as exc:
                self._mux_breach(message, exc)

    def _on_disconnect_client_mux(self, message: Message) -> None:
        stream = self._client_streams.get(message.mux_id)
        if stream is not None:
            stream.on_remote_cancel(protocol.error_text(message.payload))

    def _on_mux_connect_error(self, message: Message) -> None:
        stream = self._client_streams.get(message.mux_id)
        if stream is not None:
            stream.on_connect_error(protocol.error_text(message.payload))

    # ---------------------------------------------------------------- liveness

    def _on_ping(self, message: Message) -> None:
        if message.mux_id:
            stream = self._server_streams.get(message.mux_id)
            if stream is None:
                self._put_control(
                    protocol.encode(
                        Op.DISCONNECT_CLIENT_MUX,
                        mux_id=message.mux_id,
                        payload=b"stream unknown on the server",
                    )
                )
                return
            stream.last_seen = self._loop.time()
            self._put_control(protocol.encode(Op.PONG, mux_id=message.mux_id))
            return
        try:
            ping = protocol.unpack_map(message.payload, "PING")
            sent = wire_number(ping.get("t", 0), "ping time", MAX_WIRE_TIME)
        except RemoteProtocolError as exc:
            self._breach(message, exc)  # that ping gets no pong; the session lives on
            return
        reply = self.health().to_wire()
        reply["t"] = sent
        self._put_control(protocol.encode(Op.PONG, payload=protocol.pack_obj(reply)))

    def _on_pong(self, message: Message) -> None:
        now = self._loop.time()
        if message.mux_id:
            stream = self._client_streams.get(message.mux_id)
            if stream is not None:
                stream.last_seen = now
            return
        try:
            pong = protocol.unpack_map(message.payload, "PONG")
            sent = pong.get("t")
            if sent is not None:
                sent = wire_number(sent, "pong time", MAX_WIRE_TIME)
            health = Health.from_wire(pong)
        except RemoteProtocolError as exc:
            self._breach(message, exc)  # that pong is ignored; the session lives on
            return
        if sent is not None and 0 <= now - sent < 3600:
            self.counters.add_rtt(now - sent)
        self._peer_health = health
        self.counters.peer_loop_lag = health.loop_lag
        if self._revisable is not None and health.stall >= self.config.dead_after / 2:
            self._revise(f"{REMOTE_STALLED}: the peer reports its loop stalled {health.stall:.1f}s")

    # ---------------------------------------------------------------- shutdown

    def close(self) -> None:
        """Shut this connection down for good; in-flight calls fail with Disconnected."""
        if self._state is State.SHUTDOWN:
            return
        self._set_state(State.SHUTDOWN, "shutdown")
        self._teardown("shutdown")


def _check_result(handler: SingleHandler, result: object) -> tuple[int, bytes]:
    """A handler's result as ``(flags, payload)``: bytes, or the error a wrong result is."""
    if not isinstance(result, bytes | bytearray | memoryview):
        return _ERR, f"{handler.name} returned {type(result).__name__}, not bytes".encode()
    if len(result) > protocol.MAX_REASSEMBLED:
        return _ERR, (
            f"{handler.name} returned {len(result)} bytes, over the "
            f"{protocol.MAX_REASSEMBLED}-byte cap of a reply"
        ).encode()
    return 0, bytes(result)


def _expire(future: asyncio.Future[bytes], handler_id: int, timeout: float) -> None:
    if not future.done():
        future.set_exception(
            DeadlineExceeded(f"{handler_name(handler_id)}: no answer within {timeout:.3f}s")
        )


def _expire_task(task: asyncio.Task[None]) -> None:
    task._minigrid_expired = True  # type: ignore[attr-defined]
    task.cancel()
