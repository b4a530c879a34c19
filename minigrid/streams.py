"""Two-way streams over a connection: the client and server ends of one mux.

Client side::

    async with conn.stream(HandlerID.X, b"initial", subroute="/d1") as stream:
        await stream.send(b"request")      # waits for credit; never buffers without bound
        await stream.close_send()          # no more requests
        async for response in stream:      # ends only at the server's EOF
            ...

Leaving the ``async with`` before the end cancels the stream on both sides. Iteration ends
normally *only* at the server's EOF; anything else raises :class:`RemoteError` (the handler
failed), :class:`Cancelled` (the far side cancelled), :class:`DeadlineExceeded` or
:class:`Disconnected`. A listing cut short by a dropped connection fails; it never looks done.

Server side, a handler is ``async def handler(stream: ServerStream) -> None``: it reads
``stream.payload`` and ``async for request in stream``, and calls ``await stream.send(...)``.
Returning sends EOF; raising sends the error; being cancelled (the client left, the deadline
passed, the connection dropped) raises CancelledError inside it.

One task sends on a stream end at a time; one task receives.

These are thin asyncio handles: the mux itself (its state, credit, sequence numbers and
inbox) lives in the :class:`~minigrid.session.GridSession`, and the connection wakes a handle
whenever the session says its mux changed.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import TYPE_CHECKING

from . import protocol
from .errors import CallError, Cancelled, GridError, LocalProtocolError
from .mux import End

if TYPE_CHECKING:
    from .driver import SessionDriver
    from .records import Mux


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


class StreamEnd:
    """What both ends share: receiving, sending, and waiting for the session to say more."""

    def __init__(self, driver: SessionDriver, mux_id: int, name: str) -> None:
        self._driver = driver
        self._session = driver.session
        self._mux: Mux | None = None
        self._error: GridError | None = None  # why the stream never opened
        self.mux_id = mux_id
        self.handler_name = name
        self._recv_waiter: asyncio.Future[None] | None = None
        self._send_waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        """The session says this mux changed: every waiter looks again."""
        _wake(self._recv_waiter)
        _wake(self._send_waiter)

    @property
    def last_seen(self) -> float:
        """Monotonic time anything last arrived for this stream (stream liveness)."""
        return self._mux.last_seen if self._mux is not None else 0.0

    def _opened(self) -> Mux:
        if self._mux is None:
            raise self._error or LocalProtocolError(f"{self.handler_name}: stream not opened")
        return self._mux

    async def recv(self) -> bytes | None:
        """The next item, or None at a normal end. Raises on any abnormal end."""
        mux, session = self._opened(), self._session
        while True:
            item = session.streams.take_item(mux)
            if item is not None:
                if isinstance(item, End):
                    return None
                self._driver.flush()  # the credit it earned goes out
                return item
            waiter = self._recv_waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._recv_waiter = None

    def __aiter__(self) -> StreamEnd:
        return self

    async def __anext__(self) -> bytes:
        item = await self.recv()
        if item is None:
            raise StopAsyncIteration
        return item

    async def send(self, payload: bytes) -> None:
        """Send one item, waiting for credit. Items over 1 MiB go as fragments."""
        mux, session, driver = self._opened(), self._session, self._driver
        # Charged before any fragment goes: a refusal must not cut an item.
        held = session.streams.hold(mux, len(payload)) if len(payload) > protocol.CHUNK_SIZE else 0
        try:
            while True:
                outgoing = session.streams.send_item(mux, payload)
                if outgoing is not None:
                    break
                held = held or session.streams.hold(mux, len(payload))
                waiter = self._send_waiter = asyncio.get_running_loop().create_future()
                try:
                    await waiter
                finally:
                    self._send_waiter = None
            if outgoing.done:
                return  # the server already finished; recv() tells the caller how
            if not session.push(outgoing):
                held = held or session.streams.hold(mux, len(payload))
                await driver.push(outgoing)
            driver.flush()
        finally:
            if held:
                session.streams.unhold(held)


class ClientStream(StreamEnd):
    """The caller's end of a stream. Use it as an async context manager."""

    def __init__(
        self,
        driver: SessionDriver,
        handler_id: int,
        handler_name: str,
        payload: bytes,
        subroute: str,
        timeout: float | None,
    ) -> None:
        super().__init__(driver, driver.session.new_mux_id(), handler_name)
        self.handler_id = handler_id
        self._payload = payload
        self._subroute = subroute
        self._timeout = timeout

    async def open(self) -> ClientStream:
        """Send the stream's opening message; does not wait for the acknowledgement."""
        driver, session = self._driver, self._session
        if self._error is not None:
            raise self._error  # cancelled before it opened
        if self._mux is not None:
            raise LocalProtocolError(f"{self.handler_name}: a stream opens once")
        try:
            mux, outgoing = session.streams.open(
                self.mux_id,
                self.handler_id,
                self._payload,
                subroute=self._subroute,
                timeout=self._timeout,
                now=driver.now(),
            )
        except GridError as exc:
            self._error = exc
            raise
        self._mux = mux
        driver.watch(mux, self)
        try:
            if outgoing is not None:
                # Cancelled while the open waited for room: the server must never hear of it
                # (the cancel, a control message, would have overtaken the open).
                await driver.push(outgoing, abandoned=lambda: mux.state.terminal)
            driver.flush()
        except BaseException as exc:
            # Whatever stopped the open (a dropped connection, a cancel) must also end recv().
            error = exc if isinstance(exc, CallError) else None
            session.streams.cancel(
                mux, error or Cancelled(f"{self.handler_name}: stream open abandoned")
            )
            driver.flush()
            raise
        return self

    async def __aenter__(self) -> ClientStream:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cancel()

    async def close_send(self) -> None:
        """No more requests: the server's iteration over requests ends normally."""
        mux = self._opened()
        if mux.error is not None:
            raise mux.error
        self._session.streams.end(mux)
        self._driver.flush()

    def cancel(self) -> None:
        """Abandon the stream: the server handler is cancelled, all state is released.

        Does nothing after the stream has ended."""
        mux = self._mux
        if mux is None:
            if self._error is None:
                self._error = Cancelled(f"{self.handler_name}: stream cancelled by the caller")
            return
        self._session.streams.cancel(mux)
        self._driver.flush()

    @property
    def done(self) -> bool:
        """True once the stream has ended, normally or not, on this side."""
        return self._mux.state.terminal if self._mux is not None else self._error is not None


class ServerStream(StreamEnd):
    """The handler's end of a stream."""

    def __init__(self, driver: SessionDriver, mux: Mux) -> None:
        super().__init__(driver, mux.mux_id, mux.handler_name)
        assert mux.handler is not None
        self._mux = mux
        self.handler = mux.handler
        #: The initial payload sent with the stream.
        self.payload = mux.payload
        mux.payload = b""  # the handle keeps it, not the session
        #: The subroute the stream was opened on ("" for none).
        self.subroute = mux.subroute
