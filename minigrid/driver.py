"""The asyncio driver of one session: one websocket, one :class:`~minigrid.session.GridSession`.

The session decides everything the protocol means; the driver only moves bytes and time in and
acts on the events that come out:

* a reader task feeds each frame to :meth:`GridSession.receive_frame`;
* a writer task sends what :meth:`GridSession.next_frame` merges (control first), and wakes
  senders waiting for room as messages leave the queue;
* one timer, always at :meth:`GridSession.next_timer`, calls :meth:`GridSession.tick`;
* events resolve call futures, wake stream handles, and start or stop handler tasks
  (:class:`~minigrid.handling.HandlerTasks`, owned by the driver and cancelled with it).

A driver lives exactly as long as its session: nothing of it crosses to the next websocket.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
from collections.abc import Callable
from typing import Any

import aiohttp

from . import trace
from .errors import RemoteError
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
from .handlers import handler_name
from .handling import HandlerTasks
from .links import Links
from .liveness import Cause, CauseKind
from .records import Mux, Outgoing
from .session import GridSession
from .state import Role
from .streams import StreamEnd
from .trace import CallListeners

log = logging.getLogger("minigrid.grid")

_CLOSE_TYPES = frozenset(
    {aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED}
)
WebSocket = aiohttp.ClientWebSocketResponse | aiohttp.web.WebSocketResponse
#: The reader lets the rest of the loop run at least this often, however fast frames arrive.
READ_YIELD_EVERY = 0.005


class SessionDriver:
    """Runs one session over one websocket (see the module docstring)."""

    def __init__(
        self,
        session: GridSession,
        ws: WebSocket,
        *,
        listeners: CallListeners,
        links: Links | None = None,
        on_stall: Callable[[float], None],
        on_end: Callable[[Cause], None],
    ) -> None:
        self.session = session
        self.ws: WebSocket | None = ws
        #: Told of every call and stream that ends (:mod:`minigrid.trace`).
        self.listeners = listeners
        #: Simulated partitions (fault injection): a silent one holds our reads and writes.
        self._links = links if links is not None else Links()
        self._on_stall = on_stall
        self._on_end = on_end
        self._loop = asyncio.get_running_loop()
        self._where = f"{session.local}->{session.remote}"
        self._ended: asyncio.Future[Cause] = self._loop.create_future()
        #: Why the task running :meth:`run` is about to be cancelled (the manager says).
        self.cancel_cause: Cause | None = None
        #: Our calls on this session waiting for an answer, by mux id.
        self.calls: dict[int, asyncio.Future[bytes]] = {}
        self._handlers = HandlerTasks(self)
        self._streams: dict[Mux, StreamEnd] = {}
        self._room: collections.deque[asyncio.Future[None]] = collections.deque()
        self._writer_wake: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    @property
    def queue_waiters(self) -> int:
        """Senders waiting for room in the session's full out-queue."""
        return len(self._room)

    @property
    def running(self) -> bool:
        return not self._ended.done()

    def now(self) -> float:
        return self._loop.time()

    async def run(self) -> Cause:
        """Run until the session ends; everything in it has failed by the time this returns."""
        ws, session, loop = self.ws, self.session, self._loop
        assert ws is not None
        tasks: list[asyncio.Future[Any]] = [
            asyncio.create_task(self._read(ws), name=f"grid-read {session.remote}"),
            asyncio.create_task(self._write(ws), name=f"grid-write {session.remote}"),
            self._ended,
        ]
        self.flush()  # the first ping, and the timer
        cause = Cause(CauseKind.SHUTDOWN)
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            cause = self._outcome(done.pop())
        except asyncio.CancelledError:
            cause = self.cancel_cause or cause
            raise
        finally:
            for task in tasks:
                task.cancel()
            # Fail everything before closing the socket: callers must not wait on a slow close.
            self.handle(session.close(cause, loop.time()))
            self.ws = None
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await ws.close()
        return session.cause or cause

    def end(self, cause: Cause) -> bool:
        """End the session soon (as if the socket had been reset); False if it already has."""
        if self._ended.done():
            return False
        self._ended.set_result(cause)
        return True

    # ------------------------------------------------------------------ what streams and calls use

    def watch(self, mux: Mux, stream: StreamEnd) -> None:
        """Wake ``stream`` whenever the session says ``mux`` changed."""
        self._streams[mux] = stream

    def forget(self, mux: Mux) -> None:
        self._streams.pop(mux, None)

    async def push(
        self, outgoing: Outgoing, *, abandoned: Callable[[], bool] | None = None
    ) -> bool:
        """Queue all of ``outgoing``, waiting (cancellably) while the queue is full; raises
        Disconnected if the session ends meanwhile. If ``abandoned()`` turns true while it
        waits, the rest is never queued and this returns False."""
        session = self.session
        while not session.push(outgoing):
            waiter = self._loop.create_future()
            self._room.append(waiter)
            try:
                await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self._room.remove(waiter)
            if abandoned is not None and abandoned():
                return False
        self.flush()
        return True

    def flush(self) -> None:
        """After work on the session: act on its events, wake the writer, re-arm the timer."""
        session = self.session
        events = session.take_events()
        if events:
            self.handle(events)
        if session.closed:
            return
        waiter = self._writer_wake
        if waiter is not None and session.has_output:
            self._writer_wake = None
            if not waiter.done():
                waiter.set_result(None)
        when = session.next_timer()
        if when < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = when
            self._timer = self._loop.call_at(when, self._on_timer)

    def handle(self, events: list[Event]) -> None:
        """Act on what the session said, in order."""
        for event in events:
            if type(event) is CallResult:
                future = self.calls.get(event.mux_id)
                if future is not None and not future.done():
                    future.set_result(event.payload)
            elif type(event) is CallReceived:
                self._handlers.start_call(self.session, event.call)
            elif type(event) is CallFailed:
                future = self.calls.get(event.mux_id)
                if future is not None and not future.done():
                    future.set_exception(event.error)
            elif type(event) is StreamChanged:
                stream = self._streams.get(event.mux)
                if stream is not None:
                    stream.wake()
                    if event.mux.state.terminal:
                        del self._streams[event.mux]
                        if self.listeners and event.mux.role is Role.CLIENT:
                            self._report_stream(event.mux)
            elif type(event) is StreamReceived:
                self._handlers.start_stream(self.session, event.mux)
            elif type(event) is StopHandler:
                self._handlers.stop(event.work)
            elif type(event) is PeerStalled:
                self._on_stall(event.seconds)
            elif type(event) is SessionEnded:
                self._session_ended(event.cause)

    # ------------------------------------------------------------------ call records

    def report(
        self,
        handler: int | str,
        subroute: str,
        direction: str,
        kind: str,
        started: float,
        failure: BaseException | None,
        request_bytes: int,
        response_bytes: int,
    ) -> None:
        """Tell the call listeners that a call or stream ended (only call when there are any)."""
        name = handler if isinstance(handler, str) else handler_name(handler)
        self.listeners.emit(
            trace.CallRecord(
                handler=name,
                subroute=subroute,
                peer=self.session.remote,
                direction=direction,
                kind=kind,
                duration=self._loop.time() - started,
                status=trace.status_of(failure),
                request_bytes=request_bytes,
                response_bytes=response_bytes,
                error="" if failure is None else (str(failure) or type(failure).__name__),
            )
        )

    def _report_stream(self, mux: Mux) -> None:
        """Our stream ended, normally or not: its record."""
        failure: BaseException | None = mux.error
        if failure is None and mux.end_error:
            failure = RemoteError(mux.end_error, handler=mux.handler_name)
        self.report(mux.handler_id, mux.subroute, trace.CLIENT, trace.STREAM, mux.opened_at,
                    failure, mux.request_bytes + mux.bytes_sent, mux.bytes_received)  # fmt: skip

    # ------------------------------------------------------------------ I/O

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, math.inf
        self.handle(self.session.tick(self._loop.time()))
        self.flush()

    async def _read(self, ws: WebSocket) -> Cause:
        session, loop, links, remote = self.session, self._loop, self._links, self.session.remote
        yielded = loop.time()
        while True:
            msg = await ws.receive()
            if links.get(remote) is not None:
                await links.wait_clear(remote)  # silent partition: nothing "arrives"
            if msg.type is aiohttp.WSMsgType.BINARY:
                now = loop.time()
                events = session.receive_frame(msg.data, now)
                if events:
                    self.handle(events)
                self.flush()
                if now - yielded > READ_YIELD_EVERY:
                    # Frames already buffered come back from receive() without a pause: a
                    # peer sending faster than we process would hold the loop (the writer,
                    # the timers, every other peer) for as long as it keeps sending.
                    await asyncio.sleep(0)
                    yielded = loop.time()
            elif msg.type in _CLOSE_TYPES:
                return Cause(CauseKind.RESET, f"closed by peer (code {ws.close_code})")
            elif msg.type is aiohttp.WSMsgType.ERROR:
                raise ConnectionResetError(f"websocket error: {ws.exception()!r}")
            else:
                cause = Cause(CauseKind.PROTOCOL_ERROR, f"unexpected websocket {msg.type!r}")
                log.warning("grid %s: %s", self._where, cause)
                return cause

    async def _write(self, ws: WebSocket) -> None:
        session, room, links, remote = self.session, self._room, self._links, self.session.remote
        while True:
            if links.get(remote) is not None:
                await links.wait_clear(remote)  # silent partition: what is queued stays queued
            taken = session.next_frame()
            if taken is None:
                self._writer_wake = self._loop.create_future()
                await self._writer_wake
                continue
            frame, freed = taken
            while freed > 0 and room:  # wake as many senders as messages left the queue
                waiter = room.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    freed -= 1
            await ws.send_bytes(frame)
            session.frame_written()

    def _outcome(self, task: asyncio.Future[Any]) -> Cause:
        """Why the session's first finished task finished."""
        if task.cancelled():
            return Cause(CauseKind.RESET, "cancelled")
        exc = task.exception()
        if exc is None:
            result: Cause = task.result()
            return result
        if isinstance(exc, ConnectionError | aiohttp.ClientError | OSError):
            return Cause(CauseKind.RESET, f"{exc.__class__.__name__}: {exc}")
        log.error("grid %s: session failed", self._where, exc_info=exc)
        return Cause(CauseKind.ERROR, repr(exc))

    def _session_ended(self, cause: Cause) -> None:
        """The session failed everything in it: wake whoever waits for room (they find it
        closed and raise), stop the timer, and let the connection follow."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = None, math.inf
        for waiter in self._room:
            if not waiter.done():
                waiter.set_result(None)
        self._on_end(cause)
        if not self._ended.done():
            self._ended.set_result(cause)
