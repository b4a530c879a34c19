"""One long-lived connection to one peer, across the websockets (sessions) it runs on.

Each websocket is one :class:`~minigrid.session.GridSession` (the protocol, sans-IO) run by one
:class:`~minigrid.driver.SessionDriver` (its reader, writer, timer and handler tasks). A
:class:`Connection` is what outlives them: the peer's state (:class:`~minigrid.state.State`,
moved by :class:`~minigrid.peerstate.PeerState`), why the last session ended, the statistics,
and the calls and streams that its users start, which go to whatever session is current. When
a session ends, everything in flight on it fails at once with
:class:`~minigrid.errors.Disconnected`; nothing waits on the old socket, so a full queue can
never keep a new session from coming up (the MinIO deadlock).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import aiohttp

from . import trace
from .driver import SessionDriver, WebSocket
from .errors import Disconnected
from .handlers import handler_name
from .liveness import Cause, CauseKind, Health, log_fields
from .peerstate import PeerState
from .session import GridSession
from .state import State
from .stats import ConnStats, Counters
from .streams import ClientStream

if TYPE_CHECKING:
    from .manager import Manager


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
        self._peer = PeerState(self, manager.state_listeners, self.local, remote, self._log_fields)
        self._loop = asyncio.get_running_loop()
        self._driver: SessionDriver | None = None
        self._next_mux_id = 1

    # ------------------------------------------------------------------ state

    @property
    def state(self) -> State:
        """The current :class:`~minigrid.state.State`."""
        return self._peer.state

    @property
    def is_connected(self) -> bool:
        return self._peer.state is State.CONNECTED

    @property
    def cause(self) -> Cause | None:
        """Why the last session ended (or the last dial failed); None before any."""
        return self._peer.cause

    @property
    def last_cause(self) -> str:
        """:attr:`cause` as text ("" before any)."""
        return str(self._peer.cause) if self._peer.cause is not None else ""

    @property
    def pending_cause(self) -> Cause | None:
        """Why the manager is about to cancel the running session (it sets this first)."""
        return self._driver.cancel_cause if self._driver is not None else None

    @pending_cause.setter
    def pending_cause(self, cause: Cause | None) -> None:
        if self._driver is not None:
            self._driver.cancel_cause = cause

    def mark_connecting(self) -> None:
        """The manager is dialing or handshaking for this peer."""
        self._peer.move(State.CONNECTING)

    def mark_failed(self, cause: Cause) -> None:
        """A dial or handshake failed, or a session ended: the dialer will retry."""
        self._peer.move(State.ERROR, cause)

    async def wait_state(self, wanted: State, timeout: float | None = None) -> None:
        """Wait until the connection is in ``wanted`` (raises TimeoutError on timeout)."""
        await self._peer.wait(wanted, timeout)

    async def wait_change(self) -> None:
        """Wait for the next state change."""
        await self._peer.wait_change()

    def stats(self) -> ConnStats:
        """A snapshot of this connection's statistics."""
        s = self._driver.session if self._driver is not None else None
        return self.counters.snapshot(
            now=self._loop.time(),
            state=self.state.value,
            remote=self.remote,
            remote_instance=self.remote_instance,
            last_seen=s.last_seen if s else 0.0,
            queue_messages=s.queue_messages if s else 0,
            queue_bytes=s.queue_bytes if s else 0,
            inflight_calls=s.inflight_calls if s else 0,
            inflight_handlers=s.inflight_handlers if s else 0,
            inflight_streams=s.inflight_streams if s else 0,
            last_cause=self.last_cause,
            held_bytes=s.budget.held if s else 0,
            queue_waiters=self._driver.queue_waiters if self._driver is not None else 0,
        )

    def _log_fields(self, cause: Cause | None, state: State) -> dict[str, object]:
        """The structured fields of a state-change log line: who, why, how the peer looked."""
        session = self._driver.session if self._driver is not None else None
        return log_fields(
            self.local,
            self.remote,
            cause,
            last_seen_s=self._loop.time() - session.last_seen if session is not None else None,
            health=session.peer_health if session is not None else None,
            state=state.value,
        )

    def health(self) -> Health:
        """This node's health as the current session reports it in pongs."""
        return self._current().session.health()

    def _current(self) -> SessionDriver:
        """The driver of the running session, or Disconnected."""
        driver = self._driver
        if driver is None or not self.is_connected or driver.session.closed:
            cause = self.last_cause or self.state.value
            where = f"{self.local}->{self.remote}"
            raise Disconnected(f"grid connection {where} is down ({cause})", cause=cause)
        return driver

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
        driver = self._current()
        session = driver.session
        timeout = self.config.call_timeout if timeout is None else timeout
        started = self._loop.time()
        mux_id, outgoing = session.calls.start(
            int(handler_id), payload, subroute=subroute, timeout=timeout, now=started
        )
        future: asyncio.Future[bytes] = self._loop.create_future()
        calls = driver.calls
        calls[mux_id] = future
        failure: BaseException | None = None
        reply = b""
        try:
            if outgoing is not None:
                await driver.push(outgoing)
            driver.flush()
            reply = await future
            return reply
        except asyncio.CancelledError as exc:
            failure = exc
            session.calls.cancel(mux_id)  # tell the peer, so it drops the work
            driver.flush()
            raise
        except BaseException as exc:
            failure = exc
            raise
        finally:
            del calls[mux_id]
            if future.done() and not future.cancelled():
                future.exception()  # failed while the request waited for room: seen
            if driver.listeners:
                driver.report(handler_id, subroute, trace.CLIENT, trace.CALL, started, failure,
                              len(payload), len(reply))  # fmt: skip

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
        driver = self._current()
        name = handler_name(handler_id)
        return ClientStream(driver, int(handler_id), name, payload, subroute, timeout)

    # ------------------------------------------------------------------ sessions

    async def serve(self, ws: WebSocket, remote_instance: str) -> Cause:
        """Run one session on an open, handshaken websocket until it ends; return its cause."""
        loop = self._loop
        if self.remote_instance and remote_instance != self.remote_instance:
            change = f"instance {self.remote_instance[:8]} -> {remote_instance[:8]}"
            self._peer.revise(Cause(CauseKind.PEER_RESTARTED, change), loop.time())
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
        self._driver = SessionDriver(
            session,
            ws,
            listeners=self.manager.call_listeners,
            links=self.manager.links,
            on_stall=self._peer_stalled,
            on_end=self._session_ended,
        )
        self.counters.session_started(loop.time())
        self._peer.move(State.CONNECTED)
        return await self._driver.run()

    def _peer_stalled(self, seconds: float) -> None:
        detail = f"the peer reports its loop stalled {seconds:.1f}s"
        self._peer.revise(Cause(CauseKind.REMOTE_STALLED, detail), self._loop.time())

    def _session_ended(self, cause: Cause) -> None:
        if self._driver is not None:
            self._next_mux_id = self._driver.session.new_mux_id()
        self._peer.lost(cause, self._loop.time())

    def close(self) -> None:
        """Shut this connection down for good; in-flight calls fail with Disconnected."""
        if self.state is State.SHUTDOWN:
            return
        shutdown = Cause(CauseKind.SHUTDOWN)
        self._peer.move(State.SHUTDOWN, shutdown)
        driver = self._driver
        if driver is not None:
            driver.handle(driver.session.close(shutdown, self._loop.time()))

    # ------------------------------------------------------------------ faults and test hooks

    def drop(self, cause: Cause | None = None) -> bool:
        """End the current session as if the socket had been reset (fault injection, tests).

        The dialing side redials as usual. Returns False if no session was running."""
        driver = self._driver
        if driver is None:
            return False
        return driver.end(cause or Cause(CauseKind.RESET, "dropped on request"))

    def pause_reading(self, paused: bool = True) -> None:
        """Stop (or resume) reading this session's socket, as a frozen peer would.

        Fault injection for tests and labs: the peer's writes back up into its out-queue."""
        ws = self._driver.ws if self._driver is not None else None
        # aiohttp offers no public handle on a websocket's transport.
        transport = getattr(getattr(ws, "_writer", None), "transport", None)
        if transport is None or transport.is_closing():
            return
        if paused:
            transport.pause_reading()
        else:
            transport.resume_reading()

    async def send_raw_frame(self, frame: bytes) -> None:
        """Send ``frame`` as one websocket frame, exactly as given: no encoding, no queue.

        A test hook, for hostile-peer tests that need bytes no well-behaved node would send;
        nothing in minigrid or the node calls it."""
        ws = self._current().ws
        if ws is None:
            raise self._current_error()
        try:
            await ws.send_bytes(frame)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            raise self._current_error() from None  # the session ended under the send
        except (ConnectionError, aiohttp.ClientError) as exc:
            raise self._current_error() from exc

    def _current_error(self) -> Disconnected:
        try:
            self._current()
        except Disconnected as exc:
            return exc
        return Disconnected(f"grid connection {self.local}->{self.remote}: the send failed")

    def expect_raw_reply(self, mux_id: int) -> asyncio.Future[bytes]:
        """A future for the reply the peer sends to a raw request on ``mux_id``, as if a call
        of ours were waiting on it: the payload, RemoteError, or Disconnected when the session
        ends. The test hook that goes with :meth:`send_raw_frame`; pick mux ids far above the
        connection's own (say from 2**48)."""
        driver = self._current()
        driver.session.calls.expect(mux_id)
        future: asyncio.Future[bytes] = self._loop.create_future()
        driver.calls[mux_id] = future

        def forget(_: asyncio.Future[bytes]) -> None:
            if driver.calls.get(mux_id) is future:
                del driver.calls[mux_id]
                driver.session.calls.forget(mux_id)

        future.add_done_callback(forget)
        return future
