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
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import TYPE_CHECKING

from . import protocol, trace
from .errors import (
    CallError,
    Cancelled,
    DeadlineExceeded,
    LocalProtocolError,
    RemoteError,
    RemoteProtocolError,
)
from .mux import HELD_OVERHEAD, MAX_CAPACITY, End, Inbox, Window
from .protocol import Flags, Op

if TYPE_CHECKING:
    from .connection import Connection
    from .handlers import StreamHandler

_END_FLAGS = int(Flags.EOF | Flags.PAYLOAD_IS_EMPTY)
_ERR_END_FLAGS = int(Flags.EOF | Flags.PAYLOAD_IS_ERR)
_MORE = int(Flags.MORE)
_EOF = int(Flags.EOF)
_ERR = int(Flags.PAYLOAD_IS_ERR)
#: A credit grant is at most this many bytes: grants never exceed MAX_CAPACITY.
_MAX_GRANT_BYTES = 4


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


class _End:
    """State shared by both ends: an inbox, a window, waiters and a terminal error."""

    _send_op: int
    _grant_op: int

    def __init__(self, conn: Connection, mux_id: int, handler_name: str) -> None:
        self._conn = conn
        self.mux_id = mux_id
        self.handler_name = handler_name
        self._inbox: Inbox | None = None
        self._window: Window | None = None
        self._send_seq = 0
        self._error: CallError | None = None
        self._recv_waiter: asyncio.Future[None] | None = None
        self._send_waiter: asyncio.Future[None] | None = None
        self._send_closed = False
        self._peer_done = False  # the far side finished sending (its End arrived)
        #: Monotonic time anything last arrived for this mux (stream liveness).
        self.last_seen = asyncio.get_running_loop().time()
        self.last_ping = self.last_seen
        #: When this end was created, and the item bytes sent and received (for call records).
        self.opened_at = self.last_seen
        self.bytes_sent = 0
        self.bytes_received = 0
        #: The error text the far side ended its direction with ("" for a normal end).
        self.end_error = ""

    def _wake_all(self) -> None:
        _wake(self._recv_waiter)
        _wake(self._send_waiter)

    def _fail(self, error: CallError) -> None:
        """End this side with ``error``: every waiter wakes and raises it."""
        if self._error is None:
            self._error = error
        self._wake_all()

    async def _wait(self, attr: str) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        setattr(self, attr, waiter)
        try:
            await waiter
        finally:
            setattr(self, attr, None)

    async def recv(self) -> bytes | None:
        """The next item, or None at a normal end. Raises on any abnormal end."""
        while True:
            if self._error is not None:
                raise self._error
            inbox = self._inbox
            if inbox is not None:
                item = inbox.take()
                if isinstance(item, End):
                    if item.error:
                        self._error = RemoteError(item.error, handler=self.handler_name)
                        raise self._error
                    return None
                if item is not None:
                    self._conn._put_control(
                        protocol.encode(self._grant_op, mux_id=self.mux_id, payload=b"\x01")
                    )
                    return item
            await self._wait("_recv_waiter")

    def __aiter__(self) -> _End:
        return self

    async def __anext__(self) -> bytes:
        item = await self.recv()
        if item is None:
            raise StopAsyncIteration
        return item

    async def send(self, payload: bytes) -> None:
        """Send one item, waiting for credit. Items over 1 MiB go as fragments."""
        if self._send_closed:
            raise LocalProtocolError(f"{self.handler_name}: send after the sending side closed")
        held = 0  # charged to the budget while the item waits (server side only)
        try:
            while True:
                if self._error is not None:
                    raise self._error
                if self._peer_done and isinstance(self, ClientStream):
                    return  # the server already finished; recv() tells the caller how
                window = self._window
                if window is not None and window.try_spend():
                    break
                if window is not None and window.capacity == 0:
                    raise LocalProtocolError(
                        f"{self.handler_name} takes no requests (in_capacity=0)"
                    )
                held = held or self._hold(len(payload))
                await self._wait("_send_waiter")
            conn = self._conn
            self.bytes_sent += len(payload)
            if len(payload) > protocol.CHUNK_SIZE:
                # Charged before the first fragment goes: a refusal must not cut an item.
                held = held or self._hold(len(payload))
            for chunk, more in protocol.iter_chunks(payload):
                seq = self._send_seq
                self._send_seq += 1
                message = protocol.encode(
                    self._send_op,
                    mux_id=self.mux_id,
                    seq=seq,
                    flags=_MORE if more else 0,
                    payload=chunk,
                )
                if not conn._put_data_nowait(message):
                    held = held or self._hold(len(payload))
                    await conn._put_data(message)
        finally:
            if held:
                self._unhold(held)

    def _hold(self, size: int) -> int:
        """An item about to wait (for credit or queue room); what it was charged, if any."""
        return 0

    def _unhold(self, cost: int) -> None:
        """Give back what :meth:`_hold` charged."""

    def _send_end(self, error: str = "") -> None:
        """Queue the terminal message of our direction; costs no credit and never waits."""
        if self._send_closed:
            return
        self._send_closed = True
        seq = self._send_seq
        self._send_seq += 1
        if error:
            message = protocol.encode(
                self._send_op,
                mux_id=self.mux_id,
                seq=seq,
                flags=_ERR_END_FLAGS,
                payload=error.encode()[: protocol.MAX_ERROR_TEXT],
            )
        else:
            message = protocol.encode(self._send_op, mux_id=self.mux_id, seq=seq, flags=_END_FLAGS)
        self._conn._put_terminal(message)

    # Called by the connection's reader, synchronously.

    def _on_item(self, seq: int, flags: int, payload: bytes) -> None:
        inbox = self._inbox
        if inbox is None:
            raise RemoteProtocolError(
                f"{self.handler_name}: stream data before the stream was acknowledged"
            )
        if flags & _EOF:
            error = protocol.error_text(payload) if flags & _ERR else ""
            inbox.push_end(seq, error)
            self.end_error = error
            self._peer_done = True
        elif not inbox.push(seq, payload, more=bool(flags & _MORE)):
            return
        else:
            self.bytes_received += len(payload)
        _wake(self._recv_waiter)

    def _on_grant(self, payload: bytes) -> None:
        if self._window is None:
            raise RemoteProtocolError(
                f"{self.handler_name}: credit before the stream was acknowledged"
            )
        if len(payload) > _MAX_GRANT_BYTES:
            # Checked before int.from_bytes: a long payload would be a huge number.
            raise RemoteProtocolError(
                f"{self.handler_name}: credit grant of {len(payload)} bytes "
                f"(at most {_MAX_GRANT_BYTES})"
            )
        self._window.grant(int.from_bytes(payload, "big") if payload else 1)
        _wake(self._send_waiter)


class ClientStream(_End):
    """The caller's end of a stream. Use it as an async context manager."""

    _send_op = int(Op.CLIENT_MSG)
    _grant_op = int(Op.UNBLOCK_SERVER)

    def __init__(
        self,
        conn: Connection,
        mux_id: int,
        handler_id: int,
        handler_name: str,
        payload: bytes,
        subroute: str,
        timeout: float | None,
    ) -> None:
        super().__init__(conn, mux_id, handler_name)
        self.handler_id = handler_id
        self._payload = payload
        self._subroute = subroute
        self._timeout = timeout
        self._expiry: asyncio.TimerHandle | None = None
        self._released = False

    async def open(self) -> ClientStream:
        """Send the stream's opening message; does not wait for the acknowledgement."""
        conn = self._conn
        flags = 0
        payload = self._payload
        if self._subroute:
            payload = protocol.with_subroute(self._subroute, payload)
            flags = int(Flags.SUBROUTE)
        if len(payload) > protocol.CHUNK_SIZE:
            raise LocalProtocolError(
                f"{self.handler_name}: an initial payload is limited to {protocol.CHUNK_SIZE} "
                "bytes; send the rest as stream items"
            )
        deadline_ms = 0
        if self._timeout is not None:
            deadline_ms = max(1, int(self._timeout * 1000))
            self._expiry = asyncio.get_running_loop().call_later(self._timeout, self._expire)
        conn._client_streams[self.mux_id] = self
        try:
            await conn._put_data(
                protocol.encode(
                    Op.CONNECT_MUX,
                    mux_id=self.mux_id,
                    deadline_ms=deadline_ms,
                    handler_id=self.handler_id,
                    flags=flags,
                    payload=payload,
                )
            )
        except BaseException as exc:
            # Whatever stopped the open (a dropped connection, a cancel) must also end recv().
            self._fail(
                exc
                if isinstance(exc, CallError)
                else Cancelled(f"{self.handler_name}: stream open abandoned")
            )
            self._release()
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
        if self._error is not None:
            raise self._error
        self._send_end()

    def cancel(self) -> None:
        """Abandon the stream: the server handler is cancelled, all state is released.

        Does nothing after the stream has ended."""
        if self._released:
            return
        if self._error is None and not self._peer_done:
            self._fail(Cancelled(f"{self.handler_name}: stream cancelled by the caller"))
        self._tell_server()
        self._release()

    @property
    def done(self) -> bool:
        """True once the stream has ended, normally or not, on this side."""
        return self._released

    def _tell_server(self) -> None:
        if not self._peer_done:
            self._conn._put_control(protocol.encode(Op.DISCONNECT_SERVER_MUX, mux_id=self.mux_id))

    def _release(self) -> None:
        if self._released:
            return
        self._released = True
        if self._expiry is not None:
            self._expiry.cancel()
        conn = self._conn
        if conn._client_streams.get(self.mux_id) is self:
            del conn._client_streams[self.mux_id]
        if self._inbox is not None:
            self._inbox.detach()  # the peer can add nothing more; what is unread stays readable
        self._wake_all()
        if conn.manager.call_listeners:
            failure: BaseException | None = self._error
            if failure is None and self.end_error:
                failure = RemoteError(self.end_error, handler=self.handler_name)
            conn.report_call(self.handler_id, self._subroute, trace.CLIENT, trace.STREAM,
                             asyncio.get_running_loop().time() - self.opened_at, failure,
                             len(self._payload) + self.bytes_sent,
                             self.bytes_received)  # fmt: skip

    def _expire(self) -> None:
        self._fail(
            DeadlineExceeded(
                f"{self.handler_name}: stream deadline of {self._timeout:.3f}s exceeded"
            )
        )
        self._tell_server()
        self._release()

    # Connection callbacks.

    def on_ack(self, payload: bytes) -> None:
        info = protocol.unpack_map(payload, "ACK_MUX")
        in_capacity, out_capacity = info.get("in"), info.get("out")
        if type(in_capacity) is not int or type(out_capacity) is not int:
            raise RemoteProtocolError(f"{self.handler_name}: ACK_MUX without capacities")
        if not (0 <= in_capacity <= MAX_CAPACITY and 0 <= out_capacity <= MAX_CAPACITY):
            # The server's out capacity is how many items we would hold unread for it.
            raise RemoteProtocolError(
                f"{self.handler_name}: ACK_MUX capacities in={in_capacity} "
                f"out={out_capacity} outside 0-{MAX_CAPACITY}"
            )
        if self._inbox is not None:
            raise RemoteProtocolError(f"{self.handler_name}: second ACK_MUX")
        self._window = Window(in_capacity)
        self._inbox = Inbox(out_capacity, f"{self.handler_name} responses", self._conn.budget)
        _wake(self._send_waiter)

    def on_item(self, seq: int, flags: int, payload: bytes) -> None:
        self._on_item(seq, flags, payload)
        if self._peer_done:
            self._release()  # the server is finished; the inbox still holds what is unread

    def on_remote_cancel(self, reason: str) -> None:
        self._fail(Cancelled(reason or f"{self.handler_name}: the server cancelled the stream"))
        self._release()

    def on_connect_error(self, reason: str) -> None:
        self._fail(RemoteError(reason, handler=self.handler_name))
        self._release()

    def on_disconnect(self, error: CallError) -> None:
        self._fail(error)
        self._release()


class ServerStream(_End):
    """The handler's end of a stream."""

    _send_op = int(Op.SERVER_MSG)
    _grant_op = int(Op.UNBLOCK_CLIENT)

    def __init__(
        self, conn: Connection, mux_id: int, handler: StreamHandler, payload: bytes
    ) -> None:
        super().__init__(conn, mux_id, handler.name)
        self.handler = handler
        #: The initial payload sent with the stream.
        self.payload = payload
        #: The subroute the stream was opened on ("" for none).
        self.subroute = handler.subroute
        self._budget = conn.budget  # this session's; released to it even after a reconnect
        self._inbox = Inbox(handler.in_capacity, f"{handler.name} requests", self._budget)
        self._window = Window(handler.out_capacity)
        self.task: asyncio.Task[None] | None = None
        self.expired = False
        #: What the initial payload costs the connection's budget while the stream is open.
        self.cost = 0

    def _hold(self, size: int) -> int:
        # What our handler sends the peer, held while the peer grants no credit or does not
        # read, is held for the peer: it counts against the connection's budget (the item and
        # the encoded copy of one chunk of it). Over it, the send fails (and with it the
        # stream), instead of handlers pinning unbounded memory.
        cost = size + min(size, protocol.CHUNK_SIZE) + HELD_OVERHEAD
        self._budget.charge(cost, f"{self.handler_name} item waiting to be sent")
        return cost

    def _unhold(self, cost: int) -> None:
        self._budget.release(cost)

    def detach(self) -> None:
        """The stream left its connection's table: give back what it had charged."""
        if self.cost:
            self._budget.release(self.cost)
            self.cost = 0
        inbox = self._inbox
        if inbox is not None:
            inbox.detach()

    def on_item(self, seq: int, flags: int, payload: bytes) -> None:
        self._on_item(seq, flags, payload)
