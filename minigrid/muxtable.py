"""Streams on one session, both ends (sans-IO).

Every stream is a :class:`~minigrid.records.Mux` moved through
:class:`~minigrid.state.MuxState` by the table in :mod:`minigrid.state`, and nothing else.
A message the table does not allow for that mux's state breaks the protocol on that mux only:
it fails on both sides, and the session lives on.

Credit: each direction has a capacity. The receiver grants it all when the stream opens, and
one more credit each time its consumer *takes* an item (:meth:`StreamTable.take_item`), never
when an item merely arrives. Terminal messages (EOF, error) cost no credit. So an inbox never
holds more than its capacity, and a sender with no credit waits instead of buffering.

Long streams are pinged by the client; a client whose server stops answering fails the stream,
a server whose client goes quiet cancels the handler and says which, and why.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Final

from . import protocol
from .errors import (
    CallError,
    Cancelled,
    DeadlineExceeded,
    Disconnected,
    LimitExceeded,
    LocalProtocolError,
    RemoteError,
    RemoteProtocolError,
)
from .events import StopHandler, StreamChanged, StreamReceived
from .handlers import Registry, UnknownHandler, handler_name
from .link import Link
from .liveness import Cause, CauseKind, Health, log_fields
from .mux import HELD_OVERHEAD, MAX_CAPACITY, End, Inbox, Window
from .protocol import Flags, Message, Op
from .records import Mux, Outgoing
from .state import MUX_TRANSITIONS, MuxEvent, MuxState, Role, next_mux_state

log = logging.getLogger("minigrid.grid")

_ERR: Final = int(Flags.PAYLOAD_IS_ERR)
_EOF: Final = int(Flags.EOF)
_MORE: Final = int(Flags.MORE)
_SUBROUTE: Final = int(Flags.SUBROUTE)
_END_FLAGS: Final = int(Flags.EOF | Flags.PAYLOAD_IS_EMPTY)
_ERR_END_FLAGS: Final = int(Flags.EOF | Flags.PAYLOAD_IS_ERR)
#: A credit grant is at most this many bytes: grants never exceed MAX_CAPACITY.
MAX_GRANT_BYTES: Final = 4
_GRANT_ONE: Final = b"\x01"
#: What each end sends items with, and grants credit with.
_SEND_OP: Final = {Role.CLIENT: int(Op.CLIENT_MSG), Role.SERVER: int(Op.SERVER_MSG)}
_GRANT_OP: Final = {Role.CLIENT: int(Op.UNBLOCK_SERVER), Role.SERVER: int(Op.UNBLOCK_CLIENT)}
#: Client states in which our end has been sent.
_SEND_ENDED: Final = frozenset({MuxState.OPENING_SEND_CLOSED, MuxState.SEND_CLOSED})


class StreamTable:
    """The streams we opened (our mux ids) and the ones the peer opened (its ids)."""

    def __init__(self, link: Link, registry: Registry) -> None:
        self._link = link
        self._registry = registry
        self._clients: dict[int, Mux] = {}
        self._servers: dict[int, Mux] = {}
        #: When a stream next needs a ping or may have gone quiet.
        self.due = math.inf

    def __len__(self) -> int:
        return len(self._clients) + len(self._servers)

    def muxes(self) -> list[Mux]:
        """Every open stream, ours first."""
        return [*self._clients.values(), *self._servers.values()]

    @property
    def clients(self) -> int:
        return len(self._clients)

    def handler_names(self) -> list[str]:
        """The stream handlers the peer has running here, with their subroutes."""
        return [f"{mux.handler_name} {mux.subroute}".strip() for mux in self._servers.values()]

    # ------------------------------------------------------------------ ours

    def open(
        self,
        mux_id: int,
        handler_id: int,
        payload: bytes = b"",
        *,
        subroute: str = "",
        timeout: float | None = None,
        now: float,
    ) -> tuple[Mux, Outgoing | None]:
        """Open a stream to a handler on the peer (``mux_id`` from
        :meth:`Link.new_mux_id`): the new mux, OPENING until the ACK, and what still has to
        be pushed."""
        link = self._link
        if link.cause is not None:
            raise link.disconnected()
        link.now = now
        name = handler_name(handler_id)
        flags = 0
        request_bytes = len(payload)
        if subroute:
            payload = protocol.with_subroute(subroute, payload)
            flags = _SUBROUTE
        if len(payload) > protocol.CHUNK_SIZE:
            raise LocalProtocolError(
                f"{name}: an initial payload is limited to {protocol.CHUNK_SIZE} bytes; "
                "send the rest as stream items"
            )
        message = protocol.encode(
            Op.CONNECT_MUX,
            mux_id=mux_id,
            deadline_ms=max(1, int(timeout * 1000)) if timeout is not None else 0,
            handler_id=handler_id,
            flags=flags,
            payload=payload,
        )
        mux = Mux(mux_id, Role.CLIENT, handler_id, name, MuxState.OPENING, now)
        mux.timeout, mux.request_bytes, mux.subroute = timeout, request_bytes, subroute
        self._clients[mux_id] = mux
        if timeout is not None:
            link.deadlines.add(now + timeout, mux, timeout)
        self._watch(now + link.config.stream_ping_interval)
        return mux, link.queue(message)

    def cancel(self, mux: Mux, error: CallError | None = None) -> None:
        """Abandon a stream we opened: the peer's handler is cancelled and every waiter here
        raises ``error`` (Cancelled by default). Nothing happens once the mux has ended."""
        if mux.role is not Role.CLIENT:
            raise LocalProtocolError(f"{mux.handler_name}: only the client cancels a stream")
        if mux.state.terminal:
            return
        self._link.control(protocol.encode(Op.DISCONNECT_SERVER_MUX, mux_id=mux.mux_id))
        error = error or Cancelled(f"{mux.handler_name}: stream cancelled by the caller")
        self._abort(mux, error, MuxEvent.CANCEL)

    def on_ack(self, message: Message) -> None:
        mux = self._clients.get(message.mux_id)
        if mux is None:
            return
        try:
            in_capacity, out_capacity = _capacities(message.payload, mux.handler_name)
            new = next_mux_state(mux.role, mux.state, MuxEvent.ACK, mux.handler_name)
        except RemoteProtocolError as exc:
            self._breach(mux, message, exc)
            return
        mux.window = Window(in_capacity)
        mux.inbox = Inbox(out_capacity, f"{mux.handler_name} responses", self._link.budget)
        mux.state = new
        mux.last_seen = self._link.now
        self._link.emit(StreamChanged(mux))

    def on_server_msg(self, message: Message) -> None:
        mux = self._clients.get(message.mux_id)
        if mux is not None:  # else the caller already left; drop it
            self._receive_item(mux, message)

    def on_unblock_client(self, message: Message) -> None:
        mux = self._clients.get(message.mux_id)
        if mux is not None:
            self._receive_grant(mux, message)

    def on_disconnect_client(self, message: Message) -> None:
        """The server cancelled the stream (or never knew it)."""
        mux = self._clients.get(message.mux_id)
        if mux is not None:
            reason = protocol.error_text(message.payload)
            error = Cancelled(reason or f"{mux.handler_name}: the server cancelled the stream")
            self._abort(mux, error)

    def on_connect_error(self, message: Message) -> None:
        """The server refused to open the stream."""
        mux = self._clients.get(message.mux_id)
        if mux is not None:
            reason = protocol.error_text(message.payload)
            self._abort(mux, RemoteError(reason, handler=mux.handler_name))

    def on_stream_pong(self, mux_id: int) -> None:
        mux = self._clients.get(mux_id)
        if mux is not None:
            mux.last_seen = self._link.now

    # ------------------------------------------------------------------ theirs

    def on_connect(self, message: Message) -> None:
        payload = message.payload
        subroute = ""
        try:
            if message.flags & _MORE:
                raise RemoteProtocolError("a stream's initial payload cannot be fragmented")
            if message.flags & _SUBROUTE:
                subroute, payload = protocol.split_subroute(payload)
            if message.mux_id in self._servers:
                raise RemoteProtocolError(f"stream mux {message.mux_id} is already open")
            handler = self._registry.stream(message.handler_id, subroute)
        except UnknownHandler as exc:
            self._refuse(message.mux_id, str(exc))
            return
        except RemoteProtocolError as exc:
            self._link.breach(message, exc)
            self._refuse(message.mux_id, f"protocol error: {exc}")
            return
        link = self._link
        cost = len(payload) + HELD_OVERHEAD
        try:
            cap = link.config.max_inflight_streams
            if len(self._servers) >= cap:
                raise LimitExceeded(
                    f"{len(self._servers)} streams on this connection are already open (cap {cap})"
                )
            link.budget.charge(cost, "stream initial payload")
        except LimitExceeded as exc:
            link.refused(f"stream {message.mux_id} refused: {exc}")
            self._refuse(message.mux_id, f"busy: {exc}; retry later")
            return
        now = link.now
        mux = Mux(message.mux_id, Role.SERVER, handler.handler_id, handler.name, MuxState.OPEN, now)
        mux.handler, mux.payload, mux.subroute, mux.cost = handler, payload, subroute, cost
        mux.request_bytes = len(payload)
        mux.inbox = Inbox(handler.in_capacity, f"{handler.name} requests", link.budget)
        mux.window = Window(handler.out_capacity)
        self._servers[message.mux_id] = mux
        # The acknowledgement is control: it never waits behind a full data queue.
        ack = protocol.pack_obj({"in": handler.in_capacity, "out": handler.out_capacity})
        link.control(protocol.encode(Op.ACK_MUX, mux_id=message.mux_id, payload=ack))
        if message.deadline_ms:
            mux.timeout = message.deadline_ms / 1000
            link.deadlines.add(now + mux.timeout, mux, mux.timeout)
        self._watch(now + link.config.stream_timeout)
        link.emit(StreamReceived(mux))

    def _refuse(self, mux_id: int, text: str) -> None:
        payload = text.encode()[: protocol.MAX_ERROR_TEXT]
        self._link.control(protocol.encode(Op.MUX_CONNECT_ERROR, mux_id=mux_id, payload=payload))

    def on_client_msg(self, message: Message) -> None:
        mux = self._servers.get(message.mux_id)
        if mux is not None:  # else already ended here; the client will hear about it
            self._receive_item(mux, message)

    def on_unblock_server(self, message: Message) -> None:
        mux = self._servers.get(message.mux_id)
        if mux is not None:
            self._receive_grant(mux, message)

    def on_disconnect_server(self, mux_id: int) -> None:
        """The client cancelled a stream we serve: its handler is cancelled."""
        mux = self._servers.get(mux_id)
        if mux is not None:
            self._abort(mux, Cancelled(f"{mux.handler_name}: the client cancelled the stream"))

    def on_stream_ping(self, mux_id: int) -> None:
        mux = self._servers.get(mux_id)
        if mux is None:
            # Usually the stream has just ended and its last replies and EOF still wait in the
            # data queue: the answer goes behind them (as data), or the client would fail a
            # stream that finished. Only when the data queue is full does it jump the queue.
            message = protocol.encode(
                Op.DISCONNECT_CLIENT_MUX, mux_id=mux_id, payload=b"stream unknown on the server"
            )
            if self._link.queue(message) is not None:
                self._link.control(message)
            return
        mux.last_seen = self._link.now
        self._link.control(protocol.encode(Op.PONG, mux_id=mux_id))

    def finish(self, mux: Mux) -> None:
        """The handler of a stream the peer opened has returned or raised (after :meth:`end`);
        if it somehow has not ended the mux, end it with an error."""
        if not mux.state.terminal:
            self.end(mux, f"{mux.handler_name}: the handler stopped")

    # ------------------------------------------------------------------ both ends

    def send_item(self, mux: Mux, payload: bytes) -> Outgoing | None:
        """Spend a credit on one item: its messages (to push), or None when there is no
        credit yet (wait for a :class:`StreamChanged`). Raises the mux's error once it failed,
        and :class:`LocalProtocolError` for a send the protocol forbids. A client's item after
        the server finished goes nowhere (``done`` at once): receiving tells how it ended."""
        if mux.error is not None:
            raise mux.error
        state = mux.state
        if state is MuxState.OPENING:
            return None  # credit comes with the acknowledgement
        if state is MuxState.CLOSED and mux.role is Role.CLIENT:
            return Outgoing(None)
        new = next_mux_state(mux.role, state, MuxEvent.ITEM_SENT, mux.handler_name)
        window = mux.window
        assert window is not None  # every state that sends has its window
        if window.capacity == 0:
            raise LocalProtocolError(f"{mux.handler_name} takes no requests (in_capacity=0)")
        if not window.try_spend():
            return None
        mux.state = new
        mux.bytes_sent += len(payload)
        op, seq = _SEND_OP[mux.role], mux.send_seq
        if len(payload) <= protocol.CHUNK_SIZE:
            mux.send_seq = seq + 1
            return Outgoing(protocol.encode(op, mux_id=mux.mux_id, seq=seq, payload=payload))
        mux.send_seq = seq - (-len(payload) // protocol.CHUNK_SIZE)
        return Outgoing(None, _item_fragments(op, mux.mux_id, seq, payload))

    def take_item(self, mux: Mux) -> bytes | End | None:
        """The next item the peer sent, :class:`End` at its normal end, or None when nothing
        has arrived yet. Taking an item grants the peer a credit. Raises the mux's error if it
        ended abnormally (an error end becomes RemoteError after the items before it)."""
        if mux.error is not None:
            raise mux.error
        inbox = mux.inbox
        if inbox is None:
            return None
        item = inbox.take()
        if item is None:
            return None
        if isinstance(item, End):
            if item.error:
                mux.error = RemoteError(item.error, handler=mux.handler_name)
                raise mux.error
            return item
        if not mux.state.terminal:
            grant = protocol.encode(_GRANT_OP[mux.role], mux_id=mux.mux_id, payload=_GRANT_ONE)
            self._link.control(grant)
        return item

    def end(self, mux: Mux, error: str = "") -> None:
        """Send our direction's end: EOF, or an error end when ``error``. It costs no credit
        and never waits. Nothing happens if our end is already sent or the mux has ended."""
        state = mux.state
        if state.terminal or state in _SEND_ENDED:
            return
        new = next_mux_state(mux.role, state, MuxEvent.END_SENT, mux.handler_name)
        seq = mux.send_seq
        mux.send_seq = seq + 1
        op = _SEND_OP[mux.role]
        if error:
            payload = error.encode()[: protocol.MAX_ERROR_TEXT]
            message = protocol.encode(
                op, mux_id=mux.mux_id, seq=seq, flags=_ERR_END_FLAGS, payload=payload
            )
        else:
            message = protocol.encode(op, mux_id=mux.mux_id, seq=seq, flags=_END_FLAGS)
        self._link.terminal(message)
        self._enter(mux, new)

    def hold(self, mux: Mux, size: int) -> int:
        """An item of ``size`` bytes is about to wait (for credit or room): charge it to the
        budget and return what to give back with :meth:`unhold`. What a server holds for its
        peer counts (the item and one encoded chunk of it); a client's own items do not (0).
        Raises :class:`LimitExceeded` if the budget would go over."""
        if mux.role is Role.CLIENT:
            return 0
        cost = size + min(size, protocol.CHUNK_SIZE) + HELD_OVERHEAD
        self._link.budget.charge(cost, f"{mux.handler_name} item waiting to be sent")
        return cost

    def unhold(self, cost: int) -> None:
        """Give back what :meth:`hold` charged."""
        self._link.budget.release(cost)

    def _receive_item(self, mux: Mux, message: Message) -> None:
        mux.last_seen = self._link.now
        inbox = mux.inbox
        try:
            if message.flags & _EOF:
                new = next_mux_state(mux.role, mux.state, MuxEvent.END_RECEIVED, mux.handler_name)
                assert inbox is not None  # every state that receives has its inbox
                error = protocol.error_text(message.payload) if message.flags & _ERR else ""
                inbox.push_end(message.seq, error)
                mux.end_error = error
                self._enter(mux, new)
            else:
                next_mux_state(mux.role, mux.state, MuxEvent.ITEM_RECEIVED, mux.handler_name)
                assert inbox is not None
                payload = message.payload
                if not inbox.push(message.seq, payload, more=bool(message.flags & _MORE)):
                    mux.bytes_received += len(payload)
                    return
                mux.bytes_received += len(payload)
        except RemoteProtocolError as exc:
            self._breach(mux, message, exc)
            return
        self._link.emit(StreamChanged(mux))

    def _receive_grant(self, mux: Mux, message: Message) -> None:
        payload = message.payload
        try:
            next_mux_state(mux.role, mux.state, MuxEvent.CREDIT_RECEIVED, mux.handler_name)
            if len(payload) > MAX_GRANT_BYTES:
                # Checked before int.from_bytes: a long payload would be a huge number.
                raise RemoteProtocolError(
                    f"{mux.handler_name}: credit grant of {len(payload)} bytes "
                    f"(at most {MAX_GRANT_BYTES})"
                )
            assert mux.window is not None
            mux.window.grant(int.from_bytes(payload, "big") if payload else 1)
        except RemoteProtocolError as exc:
            self._breach(mux, message, exc)
            return
        self._link.emit(StreamChanged(mux))

    def _breach(self, mux: Mux, message: Message, exc: RemoteProtocolError) -> None:
        """The peer broke the protocol on one mux, or went over a receive limit with it: fail
        that mux only, on both sides."""
        link = self._link
        if isinstance(exc, LimitExceeded):
            link.refused(f"stream {mux.mux_id} failed: {exc}")
            why = f"busy: {exc}"
        else:
            link.breach(message, exc)
            why = f"protocol error: {exc}"
        if mux.role is Role.CLIENT:
            link.control(protocol.encode(Op.DISCONNECT_SERVER_MUX, mux_id=mux.mux_id))
            self._abort(mux, RemoteError(f"{why} (on this stream)", handler=mux.handler_name))
        else:
            payload = why.encode()[: protocol.MAX_ERROR_TEXT]
            link.control(
                protocol.encode(Op.DISCONNECT_CLIENT_MUX, mux_id=mux.mux_id, payload=payload)
            )
            self._abort(mux, Cancelled(f"{mux.handler_name}: {why}"))

    def _abort(self, mux: Mux, error: CallError, event: MuxEvent = MuxEvent.ABORT) -> None:
        """End a mux abnormally: its waiters raise ``error``; a server's handler is stopped."""
        if mux.state.terminal:
            return
        if mux.error is None:
            mux.error = error
        self._enter(mux, next_mux_state(mux.role, mux.state, event, mux.handler_name))
        self._link.emit(StreamChanged(mux))
        if mux.role is Role.SERVER:
            self._link.emit(StopHandler(mux))

    def _enter(self, mux: Mux, new: MuxState) -> None:
        """Move a mux; one that ends leaves its table and gives back what it held (unread
        items stay readable)."""
        old, mux.state = mux.state, new
        if not new.terminal or old.terminal:
            return
        table = self._clients if mux.role is Role.CLIENT else self._servers
        if table.get(mux.mux_id) is mux:
            del table[mux.mux_id]
        if mux.inbox is not None:
            mux.inbox.detach()
        if mux.cost:
            self._link.budget.release(mux.cost)
            mux.cost = 0

    # ------------------------------------------------------------------ time

    def may_expire(self, mux: Mux) -> bool:
        """``mux`` is open in a state its deadline can still end."""
        moves = MUX_TRANSITIONS[mux.role].get(mux.state)
        return moves is not None and MuxEvent.EXPIRE in moves

    def expire(self, mux: Mux, seconds: float) -> None:
        """A stream's deadline passed. Ours fails with DeadlineExceeded and the server is
        told; for the peer's, the handler is cancelled and answers with a deadline error."""
        if mux.role is Role.CLIENT:
            self._link.control(protocol.encode(Op.DISCONNECT_SERVER_MUX, mux_id=mux.mux_id))
            error = DeadlineExceeded(
                f"{mux.handler_name}: stream deadline of {seconds:.3f}s exceeded"
            )
            self._abort(mux, error, MuxEvent.EXPIRE)
        else:
            mux.state = next_mux_state(mux.role, mux.state, MuxEvent.EXPIRE, mux.handler_name)
            self._link.emit(StopHandler(mux))

    def _watch(self, due: float) -> None:
        if due < self.due:
            self.due = due
            self._link.due = min(self._link.due, due)

    def check(self, now: float, peer_health: Health | None) -> None:
        """Ping our long streams; fail the ones whose server stopped answering; cancel the
        ones whose client went quiet, and say which and why."""
        config = self._link.config
        control = self._link.control
        due = math.inf
        for mux in list(self._clients.values()):
            silent_until = mux.last_seen + config.stream_client_timeout
            if now >= silent_until:
                control(protocol.encode(Op.DISCONNECT_SERVER_MUX, mux_id=mux.mux_id))
                self._abort(mux, Disconnected(
                    f"{mux.handler_name}: the server stopped answering this stream for "
                    f"{now - mux.last_seen:.1f}s",
                    cause=CauseKind.NETWORK_SILENT.value,
                ))  # fmt: skip
                continue
            if now >= mux.last_ping + config.stream_ping_interval:
                mux.last_ping = now
                control(protocol.encode(Op.PING, mux_id=mux.mux_id))
            due = min(due, mux.last_ping + config.stream_ping_interval, silent_until)
        for mux in list(self._servers.values()):
            quiet_until = mux.last_seen + config.stream_timeout
            if now >= quiet_until:
                self._cancel_quiet(mux, now - mux.last_seen, peer_health)
            else:
                due = min(due, quiet_until)
        self.due = due

    def _cancel_quiet(self, mux: Mux, age: float, health: Health | None) -> None:
        link = self._link
        why = (
            f"remote loop stalled {health.loop_lag:.1f}s at last contact"
            if health is not None and health.loop_lag >= link.config.ping_interval / 2
            else "no traffic on this stream; remote loop healthy at last contact"
        )
        extra = log_fields(
            link.local,
            link.remote,
            Cause(CauseKind.STREAM_SILENT, why),
            last_seen_s=age,
            health=health,
            handler=mux.handler_name,
            subroute=mux.subroute,
        )
        log.warning(
            "canceling remote connection %s->%s not seen for %.1fs (handler=%s subroute=%s): %s",
            link.local,
            link.remote,
            age,
            mux.handler_name,
            mux.subroute or "-",
            why,
            extra=extra,
        )
        payload = f"server canceled the stream: not seen for {age:.1f}s".encode()
        link.control(protocol.encode(Op.DISCONNECT_CLIENT_MUX, mux_id=mux.mux_id, payload=payload))
        error = Cancelled(f"{mux.handler_name}: client not seen for {age:.1f}s")
        self._abort(mux, error, MuxEvent.CANCEL)

    def close(self) -> None:
        """The session ended: every stream fails with Disconnected."""
        error = self._link.disconnected()
        for mux in self.muxes():
            self._abort(mux, error)


def _capacities(payload: bytes, name: str) -> tuple[int, int]:
    """The in and out capacities an ACK_MUX announces, checked."""
    info = protocol.unpack_map(payload, "ACK_MUX")
    in_capacity, out_capacity = info.get("in"), info.get("out")
    if type(in_capacity) is not int or type(out_capacity) is not int:
        raise RemoteProtocolError(f"{name}: ACK_MUX without capacities")
    if not (0 <= in_capacity <= MAX_CAPACITY and 0 <= out_capacity <= MAX_CAPACITY):
        # The server's out capacity is how many items we would hold unread for it.
        raise RemoteProtocolError(
            f"{name}: ACK_MUX capacities in={in_capacity} out={out_capacity} "
            f"outside 0-{MAX_CAPACITY}"
        )
    return in_capacity, out_capacity


def _item_fragments(op: int, mux_id: int, seq: int, payload: bytes) -> Iterator[bytes]:
    """One stream item over a chunk, as ``MORE``-flagged messages with consecutive seqs."""
    for index, (chunk, more) in enumerate(protocol.iter_chunks(payload)):
        yield protocol.encode(
            op, mux_id=mux_id, seq=seq + index, flags=_MORE if more else 0, payload=chunk
        )
