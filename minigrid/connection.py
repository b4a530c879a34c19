"""One long-lived connection to one peer: the asyncio driver of its sessions.

A :class:`Connection` outlives the websockets it runs on. Each websocket is one
:class:`~minigrid.session.GridSession`, which decides everything the protocol means; this module
only moves bytes and time in and acts on the events that come out. Per session it runs a reader
(frames in), a writer (frames out, control first, as the session merges them) and one timer at
the session's :meth:`~GridSession.next_timer`. Handlers run as tasks held by the connection and
cancelled when the session says so. When a session ends, for any reason, the session fails
everything in flight at once and empties its queue, and only then is the socket closed. No
code path awaits a send while holding anything a reconnect needs, so a full queue can never
keep a new session from coming up (the MinIO deadlock).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
from typing import TYPE_CHECKING, Any

import aiohttp

from .errors import Disconnected, GridError
from .events import (
    CallFailed,
    CallReceived,
    CallResult,
    Event,
    PeerStalled,
    SessionEnded,
    StopHandler,
    StreamChanged,
    StreamReceived,
)
from .handlers import handler_name, reply_for
from .liveness import Cause, CauseKind
from .records import Mux, Outgoing, ServerCall
from .session import GridSession
from .state import MuxState, State, check_transition
from .stats import ConnStats, Counters
from .streams import ClientStream, ServerStream, StreamEnd

if TYPE_CHECKING:
    from .manager import Manager

log = logging.getLogger("minigrid.grid")

_CLOSE_TYPES = frozenset(
    {aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED}
)
WebSocket = aiohttp.ClientWebSocketResponse | aiohttp.web.WebSocketResponse


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
        self.counters = Counters()
        #: Why the last session ended (or the last dial failed); None before any.
        self.cause: Cause | None = None
        #: Set by the manager before it cancels a session, so the session reports why.
        self.pending_cause: Cause | None = None
        self._state = State.UNCONNECTED
        self._state_changed = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._session: GridSession | None = None
        self._next_mux_id = 1
        self._ended: asyncio.Future[Cause] | None = None
        self._ws: WebSocket | None = None
        self._transport: Any = None
        self._calls: dict[int, asyncio.Future[bytes]] = {}
        self._handlers: dict[ServerCall | Mux, asyncio.Task[None]] = {}
        self._streams: dict[Mux, StreamEnd] = {}
        self._room: collections.deque[asyncio.Future[None]] = collections.deque()
        self._writer_wake: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        # The last disconnect, while a later report (a pong with a long stall, a new instance)
        # may still revise its diagnosis: (when it happened, its cause).
        self._revisable: tuple[float, Cause] | None = None

    # ------------------------------------------------------------------ state

    @property
    def state(self) -> State:
        """The current :class:`~minigrid.state.State`."""
        return self._state

    @property
    def is_connected(self) -> bool:
        return self._state is State.CONNECTED

    @property
    def last_cause(self) -> str:
        """:attr:`cause` as text ("" before any)."""
        return str(self.cause) if self.cause is not None else ""

    def mark_connecting(self) -> None:
        """The manager is dialing or handshaking for this peer."""
        self._set_state(State.CONNECTING)

    def mark_failed(self, cause: Cause) -> None:
        """A dial or handshake failed, or a session ended: the dialer will retry."""
        self._set_state(State.ERROR, cause)

    def _set_state(self, new: State, cause: Cause | None = None) -> None:
        if new is self._state:
            return
        check_transition(self._state, new)
        old, self._state = self._state, new
        if cause is not None and new is not State.CONNECTED:
            self.cause = cause
        if State.CONNECTED in (new, old) or new is State.SHUTDOWN:
            why = f" ({cause})" if cause is not None else ""
            log.info("grid %s->%s: %s -> %s%s", self.local, self.remote, old.value, new.value, why)
        self._state_changed.set()
        self._state_changed = asyncio.Event()
        for listener in self.manager.state_listeners:
            try:
                listener(self, old, new, self.last_cause)
            except Exception:
                log.exception("grid: state listener failed")

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
        session = self._session
        return self.counters.snapshot(
            now=self._loop.time(),
            state=self._state.value,
            remote=self.remote,
            remote_instance=self.remote_instance,
            last_seen=session.last_seen if session is not None else 0.0,
            queue_messages=session.queue_messages if session is not None else 0,
            queue_bytes=session.queue_bytes if session is not None else 0,
            inflight_calls=session.inflight_calls if session is not None else 0,
            inflight_handlers=session.inflight_handlers if session is not None else 0,
            inflight_streams=session.inflight_streams if session is not None else 0,
            last_cause=self.last_cause,
            held_bytes=session.budget.held if session is not None else 0,
        )

    def _disconnected(self) -> Disconnected:
        cause = self.last_cause or self._state.value
        return Disconnected(
            f"grid connection {self.local}->{self.remote} is down ({cause})", cause=cause
        )

    def _current(self) -> GridSession:
        """The running session, or Disconnected."""
        session = self._session
        if session is None or self._state is not State.CONNECTED or session.closed:
            raise self._disconnected()
        return session

    # ------------------------------------------------------------------ calls and streams

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
        session = self._current()
        mux_id, outgoing = session.start_call(
            int(handler_id),
            payload,
            subroute=subroute,
            timeout=self.config.call_timeout if timeout is None else timeout,
            now=self._loop.time(),
        )
        future: asyncio.Future[bytes] = self._loop.create_future()
        calls = self._calls
        calls[mux_id] = future
        try:
            if outgoing is not None:
                await self.push(session, outgoing)
            self.flush(session)
            return await future
        except asyncio.CancelledError:
            session.cancel_call(mux_id)  # tell the peer, so it drops the work
            self.flush(session)
            raise
        finally:
            del calls[mux_id]
            if future.done() and not future.cancelled():
                future.exception()  # answered while the request waited for room: seen

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
        session = self._current()
        name = handler_name(handler_id)
        return ClientStream(self, session, int(handler_id), name, payload, subroute, timeout)

    # Used by the stream handles (minigrid.streams) and the handler tasks.

    def now(self) -> float:
        return self._loop.time()

    def watch(self, mux: Mux, stream: StreamEnd) -> None:
        """Wake ``stream`` whenever the session says ``mux`` changed."""
        self._streams[mux] = stream

    async def push(self, session: GridSession, outgoing: Outgoing) -> None:
        """Queue all of ``outgoing``, waiting (cancellably) while the queue is full."""
        while not session.push(outgoing):
            waiter = self._loop.create_future()
            self._room.append(waiter)
            try:
                await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self._room.remove(waiter)
        self.flush(session)

    def flush(self, session: GridSession) -> None:
        """After local work on ``session``: act on its events, wake the writer, re-arm the
        timer."""
        events = session.take_events()
        if events:
            self._handle(session, events)
        if session is not self._session or session.closed:
            return
        if session.has_output:
            waiter = self._writer_wake
            if waiter is not None:
                self._writer_wake = None
                if not waiter.done():
                    waiter.set_result(None)
        when = session.next_timer()
        if when < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = when
            self._timer = self._loop.call_at(when, self._on_timer, session)

    # ------------------------------------------------------------------ events

    def _handle(self, session: GridSession, events: list[Event]) -> None:
        for event in events:
            if type(event) is CallResult:
                future = self._calls.get(event.mux_id)
                if future is not None and not future.done():
                    future.set_result(event.payload)
            elif type(event) is CallReceived:
                call = event.call
                self._handlers[call] = self._loop.create_task(
                    self._run_call(session, call), name=call.handler.name
                )
            elif type(event) is CallFailed:
                future = self._calls.get(event.mux_id)
                if future is not None and not future.done():
                    future.set_exception(event.error)
            elif type(event) is StreamChanged:
                stream = self._streams.get(event.mux)
                if stream is not None:
                    stream.wake()
                    if event.mux.state.terminal:
                        del self._streams[event.mux]
            elif type(event) is StreamReceived:
                self._start_stream(session, event.mux)
            elif type(event) is StopHandler:
                task = self._handlers.pop(event.work, None)
                if task is not None:
                    task.cancel()
            elif type(event) is PeerStalled:
                detail = f"the peer reports its loop stalled {event.seconds:.1f}s"
                self._revise(Cause(CauseKind.REMOTE_STALLED, detail))
            elif type(event) is SessionEnded:
                self._session_ended(session, event.cause)

    def _on_timer(self, session: GridSession) -> None:
        if session is not self._session:
            return
        self._timer, self._timer_at = None, math.inf
        events = session.tick(self._loop.time())
        if events:
            self._handle(session, events)
        self.flush(session)

    def _wake_room(self, count: int) -> None:
        room = self._room
        while count > 0 and room:
            waiter = room.popleft()
            if not waiter.done():
                waiter.set_result(None)
                count -= 1

    # ------------------------------------------------------------------ handlers

    async def _run_call(self, session: GridSession, call: ServerCall) -> None:
        """Run one of the peer's calls and queue its reply. The call keeps its slot (and its
        payload its share of the budget) until the reply is queued: with a peer that does not
        read, the slots fill and further requests are refused at once."""
        handler = call.handler
        try:
            result: object = None
            try:
                result = await handler.fn(call.take_payload())
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not call.expired or task is None:
                    raise  # the caller left or the connection dropped: nobody wants an answer
                task.uncancel()
                error, body = True, f"{handler.name}: deadline of {call.timeout:.3f}s exceeded"
                body_bytes = body.encode()
            except Exception as exc:
                error, body_bytes = True, (str(exc) or exc.__class__.__name__).encode()
            else:
                error, body_bytes = reply_for(handler, result)
            del result
            outgoing = session.reply(call, body_bytes, error=error)
            del body_bytes  # while the reply waits, only what it needs is kept
            if outgoing is not None:
                await self.push(session, outgoing)
            self.flush(session)
        except GridError:
            pass  # the connection dropped while the reply waited for room: nobody to tell
        finally:
            session.finish_call(call)
            self._handlers.pop(call, None)

    def _start_stream(self, session: GridSession, mux: Mux) -> None:
        stream = ServerStream(self, session, mux)
        self._streams[mux] = stream
        self._handlers[mux] = self._loop.create_task(
            self._run_stream(session, mux, stream), name=mux.handler_name
        )

    async def _run_stream(self, session: GridSession, mux: Mux, stream: ServerStream) -> None:
        assert mux.handler is not None
        try:
            await mux.handler.fn(stream)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if mux.state is not MuxState.EXPIRED or task is None:
                raise
            task.uncancel()
            why = f"{mux.handler_name}: stream deadline of {mux.timeout}s exceeded"
            session.end_stream(mux, why)
        except Exception as exc:
            session.end_stream(mux, str(exc) or exc.__class__.__name__)
        else:
            session.end_stream(mux)
        finally:
            session.finish_stream(mux)
            self._handlers.pop(mux, None)
            self._streams.pop(mux, None)
            self.flush(session)

    # ------------------------------------------------------------------ sessions

    async def serve(self, ws: WebSocket, remote_instance: str) -> Cause:
        """Run one session on an open, handshaken websocket until it ends; return its cause."""
        loop = self._loop
        if self.remote_instance and remote_instance != self.remote_instance:
            was, now = self.remote_instance[:8], remote_instance[:8]
            self._revise(Cause(CauseKind.PEER_RESTARTED, f"instance {was} -> {now}"))
        self.remote_instance = remote_instance
        session = GridSession(
            self.config,
            self.manager.registry,
            now=loop.time(),
            loop=self.manager.monitor,
            local=self.local,
            remote=self.remote,
            counters=self.counters,
            first_mux_id=self._next_mux_id,
        )
        self._session, self._ws, self._ended = session, ws, loop.create_future()
        self._transport = getattr(getattr(ws, "_writer", None), "transport", None)
        self.counters.session_started(loop.time())
        self._set_state(State.CONNECTED)
        tasks: list[asyncio.Future[Any]] = [
            asyncio.create_task(self._read(ws, session), name=f"grid-read {self.remote}"),
            asyncio.create_task(self._write(ws, session), name=f"grid-write {self.remote}"),
            self._ended,
        ]
        self.flush(session)  # the first ping, and the timer
        cause = Cause(CauseKind.SHUTDOWN)
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            cause = self._outcome(done.pop())
        except asyncio.CancelledError:
            cause, self.pending_cause = self.pending_cause or cause, None
            raise
        finally:
            for task in tasks:
                task.cancel()
            # Fail everything before closing the socket: callers must not wait on a slow close.
            self._handle(session, session.close(cause, loop.time()))
            self._ws = None
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await ws.close()
        return session.cause or cause

    async def _read(self, ws: WebSocket, session: GridSession) -> Cause:
        loop = self._loop
        while True:
            msg = await ws.receive()
            if msg.type is aiohttp.WSMsgType.BINARY:
                events = session.receive_frame(msg.data, loop.time())
                if events:
                    self._handle(session, events)
                self.flush(session)
            elif msg.type in _CLOSE_TYPES:
                return Cause(CauseKind.RESET, f"closed by peer (code {ws.close_code})")
            elif msg.type is aiohttp.WSMsgType.ERROR:
                raise ConnectionResetError(f"websocket error: {ws.exception()!r}")
            else:
                cause = Cause(CauseKind.PROTOCOL_ERROR, f"unexpected websocket {msg.type!r}")
                log.warning("grid %s->%s: %s", self.local, self.remote, cause)
                return cause

    async def _write(self, ws: WebSocket, session: GridSession) -> Cause:
        while True:
            taken = session.next_frame()
            if taken is None:
                self._writer_wake = self._loop.create_future()
                await self._writer_wake
                continue
            frame, freed = taken
            if freed:
                self._wake_room(freed)
            await ws.send_bytes(frame)
            session.frame_written()

    def _outcome(self, task: asyncio.Future[Any]) -> Cause:
        """Why the session's first finished task finished."""
        if task.cancelled():
            return Cause(CauseKind.RESET, "session task cancelled")
        exc = task.exception()
        if exc is None:
            result: Cause = task.result()
            return result
        if isinstance(exc, ConnectionError | aiohttp.ClientError | OSError):
            return Cause(CauseKind.RESET, f"{exc.__class__.__name__}: {exc}")
        log.error("grid %s->%s: session failed", self.local, self.remote, exc_info=exc)
        return Cause(CauseKind.ERROR, repr(exc))

    def _session_ended(self, session: GridSession, cause: Cause) -> None:
        """The session failed everything in it: now the connection follows."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = None, math.inf
        self._next_mux_id = session.new_mux_id()
        if self._state is State.CONNECTED:
            self._revisable = (self._loop.time(), cause)
            self._set_state(State.ERROR, cause)
        else:
            self.cause = cause
        self._wake_room(len(self._room))  # they find the session closed and raise
        if self._writer_wake is not None and not self._writer_wake.done():
            self._writer_wake.set_result(None)
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(cause)

    def _revise(self, cause: Cause) -> None:
        """A later report explains the last disconnect better: say so once, and keep it."""
        if self._revisable is None:
            return
        when, earlier = self._revisable
        self._revisable = None
        if earlier.kind is cause.kind:
            return
        self.cause = Cause(cause.kind, f"{cause.detail} (revised from {earlier.kind.value})")
        log.warning(
            "grid %s->%s: the disconnect %.1fs ago was most likely %s, not %s",
            self.local,
            self.remote,
            self._loop.time() - when,
            cause,
            earlier.kind.value,
        )

    def close(self) -> None:
        """Shut this connection down for good; in-flight calls fail with Disconnected."""
        if self._state is State.SHUTDOWN:
            return
        shutdown = Cause(CauseKind.SHUTDOWN)
        self._set_state(State.SHUTDOWN, shutdown)
        if self._session is not None:
            self._handle(self._session, self._session.close(shutdown, self._loop.time()))

    # ------------------------------------------------------------------ test hooks

    def health(self) -> Any:
        """This node's health as the current session reports it in pongs."""
        return self._current().health()

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
        session = self._current()
        session.expect_reply(mux_id)
        future: asyncio.Future[bytes] = self._loop.create_future()
        calls = self._calls
        calls[mux_id] = future

        def forget(_: asyncio.Future[bytes]) -> None:
            if calls.get(mux_id) is future:
                del calls[mux_id]
                session.forget_call(mux_id)

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

    def drop(self, cause: Cause | None = None) -> bool:
        """End the current session as if the socket had been reset (fault injection, tests).

        The dialing side redials as usual. Returns False if no session was running."""
        ended = self._ended
        if ended is not None and not ended.done():
            ended.set_result(cause or Cause(CauseKind.RESET, "dropped on request"))
            return True
        return False
