"""One grid session as a sans-IO state machine: bytes and ``now`` in, events and bytes out.

A :class:`GridSession` is everything one authenticated websocket between two nodes means, with
no sockets, no tasks and no clock of its own (h11 and wsproto are the model). It owns

* the mux tables: our calls waiting for answers, the peer's calls running here, and both
  sides' streams, each stream a :class:`~minigrid.state.MuxState` moved only through the
  transition table;
* credit (:class:`~minigrid.mux.Window`, :class:`~minigrid.mux.Inbox`), sequence checks and
  fragment reassembly (:class:`~minigrid.mux.Fragments`: linear, capped, charged to one
  :class:`~minigrid.mux.Budget`);
* the out-queue, control before data (:class:`~minigrid.outbox.Outbox`);
* call and stream deadlines, pings and pongs with round-trip time and the peer's health,
  silence detection with the local-pause guard, and a typed
  :class:`~minigrid.liveness.Cause` when the session ends.

A driver feeds it (:meth:`receive_frame`), asks it for frames to write (:meth:`next_frame`),
calls :meth:`tick` when :meth:`next_timer` comes, and acts on the :mod:`~minigrid.events` it
returns. Local work goes through public methods (:meth:`start_call`, :meth:`open_stream`,
:meth:`send_item`, :meth:`take_item`, :meth:`reply`, ...); a data message that finds the queue
full comes back as an :class:`~minigrid.records.Outgoing` to :meth:`push` again when the writer
has made room. Once a session has ended it stays ended: everything in it has failed, and every
later call raises :class:`~minigrid.errors.Disconnected` or does nothing.

:class:`minigrid.connection.Connection` drives one over a websocket; :mod:`minigrid.sim` drives
many over an in-memory network on a virtual clock.
"""

from __future__ import annotations

import collections
import heapq
import logging
import math
from collections.abc import Callable, Iterator
from typing import Final

from . import protocol
from .config import GridConfig
from .errors import (
    CallError,
    Cancelled,
    DeadlineExceeded,
    Disconnected,
    LimitExceeded,
    LocalProtocolError,
    PayloadTooLarge,
    RemoteError,
    RemoteProtocolError,
)
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
from .handlers import Registry, UnknownHandler, handler_name
from .liveness import (
    MAX_WIRE_TIME,
    Cause,
    CauseKind,
    Health,
    LocalLoop,
    diagnose_silence,
    wire_number,
)
from .mux import HELD_OVERHEAD, MAX_CAPACITY, Budget, End, Fragments, Inbox, Window
from .outbox import Outbox
from .protocol import Flags, Message, Op
from .records import Mux, Outgoing, ServerCall
from .state import (
    MUX_TRANSITIONS,
    CallEvent,
    CallState,
    MuxEvent,
    MuxState,
    Role,
    next_call_state,
    next_mux_state,
)
from .stats import Counters

log = logging.getLogger("minigrid.grid")

_ERR: Final = int(Flags.PAYLOAD_IS_ERR)
_EOF: Final = int(Flags.EOF)
_MORE: Final = int(Flags.MORE)
_SUBROUTE: Final = int(Flags.SUBROUTE)
_END_FLAGS: Final = int(Flags.EOF | Flags.PAYLOAD_IS_EMPTY)
_ERR_END_FLAGS: Final = int(Flags.EOF | Flags.PAYLOAD_IS_ERR)
_REQUEST: Final = int(Op.REQUEST)
_RESPONSE: Final = int(Op.RESPONSE)
#: A credit grant is at most this many bytes: grants never exceed MAX_CAPACITY.
MAX_GRANT_BYTES: Final = 4
#: Per session, the first few protocol errors of single messages or muxes, and the first
#: refusal for a cap, are logged; the rest are only counted, so a hostile peer cannot flood
#: the log.
LOGGED_PER_SESSION: Final = 3
_GRANT_ONE: Final = b"\x01"
#: Send ops and grant ops per role: a client sends CLIENT_MSG and grants UNBLOCK_SERVER.
_SEND_OP: Final = {Role.CLIENT: int(Op.CLIENT_MSG), Role.SERVER: int(Op.SERVER_MSG)}
_GRANT_OP: Final = {Role.CLIENT: int(Op.UNBLOCK_SERVER), Role.SERVER: int(Op.UNBLOCK_CLIENT)}
_CANCEL_OP: Final = {
    Role.CLIENT: int(Op.DISCONNECT_SERVER_MUX),
    Role.SERVER: int(Op.DISCONNECT_CLIENT_MUX),
}
#: Client mux states in which our end has been sent.
_SEND_ENDED: Final = frozenset({MuxState.OPENING_SEND_CLOSED, MuxState.SEND_CLOSED})
_INF: Final = math.inf

#: A deadline: (when, tie-breaker, what: our call's mux id, a ServerCall or a Mux, seconds).
_Deadline = tuple[float, int, int | ServerCall | Mux, float]


class GridSession:
    """One session's protocol state. See the module docstring."""

    def __init__(
        self,
        config: GridConfig,
        registry: Registry,
        *,
        now: float,
        loop: LocalLoop,
        local: str = "",
        remote: str = "",
        counters: Counters | None = None,
        first_mux_id: int = 1,
    ) -> None:
        self.config = config
        self.registry = registry
        self.local = local
        self.remote = remote
        #: Counters of the connection this session belongs to (they outlive it).
        self.counters = counters if counters is not None else Counters()
        #: Bytes received from the peer and held here, across every mux.
        self.budget = Budget(config.max_held_bytes)
        #: Why the session ended; None while it runs.
        self.cause: Cause | None = None
        #: When anything last arrived from the peer.
        self.last_seen = now
        #: The health the peer reported in its last pong.
        self.peer_health: Health | None = None
        self._now = now
        self._loop = loop
        self._next_mux_id = first_mux_id
        self._outbox = Outbox(config)
        self._calls: dict[int, int] = {}  # our calls waiting for an answer: mux id -> handler
        self._handling: dict[int, ServerCall] = {}  # the peer's calls running here
        self._clients: dict[int, Mux] = {}  # streams we opened
        self._servers: dict[int, Mux] = {}  # streams the peer opened
        self._partial: dict[tuple[int, int], Fragments] = {}  # call payloads: (op, mux id)
        self._deadlines: list[_Deadline] = []
        self._deadline_count = 0
        self._events: list[Event] = []
        self._breaches = 0  # protocol errors of single messages or muxes
        self._refusals = 0  # requests or streams refused for a cap
        self._stall_reported = False
        self._next_ping = now + config.ping_interval
        self._streams_due = _INF
        self._dispatch: dict[int, Callable[[Message], None]] = {
            _REQUEST: self._on_request,
            _RESPONSE: self._on_response,
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
        # A first ping at once: RTT and the peer's health are known from the start.
        self._ping(now)
        self._due = self._liveness_due()

    # ------------------------------------------------------------------ reading state

    @property
    def closed(self) -> bool:
        """True once the session has ended (see :attr:`cause`)."""
        return self.cause is not None

    @property
    def has_output(self) -> bool:
        """Messages are queued for the writer."""
        return bool(self._outbox)

    @property
    def queue_messages(self) -> int:
        return len(self._outbox)

    @property
    def queue_bytes(self) -> int:
        return self._outbox.data_bytes

    @property
    def inflight_calls(self) -> int:
        """Our calls waiting for an answer."""
        return len(self._calls)

    @property
    def inflight_handlers(self) -> int:
        """The peer's calls running here."""
        return len(self._handling)

    @property
    def inflight_streams(self) -> int:
        """Streams open on this session, both directions."""
        return len(self._clients) + len(self._servers)

    def pending_calls(self) -> list[int]:
        """The mux ids of our calls waiting for an answer."""
        return list(self._calls)

    def muxes(self) -> list[Mux]:
        """Every stream open on this session, ours first."""
        return [*self._clients.values(), *self._servers.values()]

    def health(self) -> Health:
        """This node's health as reported in pongs."""
        loop = self._loop
        return Health(
            loop_lag=loop.worst_lag(),
            queue=len(self._outbox),
            calls=len(self._calls) + len(self._handling),
            streams=len(self._clients) + len(self._servers),
            stall=loop.longest_stall(),
        )

    def disconnected(self) -> Disconnected:
        """The error for work that this session can no longer do."""
        cause = str(self.cause) if self.cause is not None else "session not running"
        return Disconnected(
            f"grid connection {self.local}->{self.remote} is down ({cause})", cause=cause
        )

    # ------------------------------------------------------------------ bytes in

    def receive_frame(self, data: bytes, now: float) -> list[Event]:
        """One websocket frame from the peer. A frame that breaks the protocol ends the
        session (its last event is :class:`~minigrid.events.SessionEnded`)."""
        if self.cause is not None:
            return []
        self._now = self.last_seen = now
        counters = self.counters
        counters.frames_in += 1
        counters.bytes_in += len(data)
        try:
            messages = protocol.decode_frame(data)
            counters.messages_in += len(messages)
            dispatch = self._dispatch
            for message in messages:
                handle = dispatch.get(message.op)
                if handle is None:
                    raise RemoteProtocolError(f"unexpected {Op(message.op).name} in a session")
                handle(message)
                if self.closed:
                    break
        except RemoteProtocolError as exc:
            log.warning("grid %s->%s: protocol error from peer: %s", self.local, self.remote, exc)
            self._end(Cause(CauseKind.PROTOCOL_ERROR, str(exc)))
        return self.take_events()

    def take_events(self) -> list[Event]:
        """Events produced by local calls since the last receive, tick or take (a credit
        grant that overflowed the control queue ends the session, for example)."""
        events = self._events
        if not events:
            return []
        self._events = []
        return events

    # ------------------------------------------------------------------ bytes out

    def next_frame(self) -> tuple[bytes, int] | None:
        """The next frame to write, control first, and how many data messages it took off
        the queue (that much room is free again); None when nothing is queued."""
        taken = self._outbox.take_frame()
        if taken is None:
            return None
        frame, messages, data = taken
        counters = self.counters
        counters.frames_out += 1
        counters.messages_out += messages
        counters.bytes_out += len(frame)
        return frame, data

    def frame_written(self) -> None:
        """The last frame left: the peer is reading."""
        self._outbox.full_since = None

    def push(self, outgoing: Outgoing) -> bool:
        """Queue what fits of ``outgoing``; True when all of it is queued. Raises
        :class:`Disconnected` once the session has ended."""
        if self.cause is not None:
            raise self.disconnected()
        rest = outgoing.rest
        message = outgoing.next
        if message is None and rest is not None:
            message = next(rest, None)
        outbox = self._outbox
        while message is not None:
            if not outbox.try_put_data(message, self._now):
                outgoing.next = message
                self._no_room()
                return False
            message = next(rest, None) if rest is not None else None
        outgoing.next = outgoing.rest = None
        return True

    def _queue(self, message: bytes) -> Outgoing | None:
        """Queue one data message now, or hand it back to push later."""
        if self._outbox.try_put_data(message, self._now):
            return None
        self._no_room()
        return Outgoing(message)

    def _no_room(self) -> None:
        full_since = self._outbox.full_since
        if full_since is not None:
            self._due = min(self._due, full_since + self.config.dead_after)

    def _put_control(self, message: bytes) -> None:
        """Queue a control message. It never waits: its queue fills only when the peer
        stops reading, and that ends the session instead."""
        if self.cause is not None:
            return
        outbox = self._outbox
        if outbox.control_full:
            cause = Cause(
                CauseKind.PEER_NOT_READING,
                f"{outbox.control_messages} control messages queued and unsent "
                f"(cap {self.config.max_control_messages}); the peer sends but does not read",
            )
            log.warning("grid %s->%s: disconnecting: %s", self.local, self.remote, cause)
            self._end(cause)
            return
        outbox.put_control(message)

    # ------------------------------------------------------------------ our single calls

    def start_call(
        self,
        handler_id: int,
        payload: bytes,
        *,
        subroute: str = "",
        timeout: float,
        now: float,
    ) -> tuple[int, Outgoing | None]:
        """Start a call: its mux id, and what still has to be pushed (None: all queued).
        Its answer comes as :class:`CallResult` or :class:`CallFailed` (also at the
        deadline, ``timeout`` seconds from ``now``)."""
        if self.cause is not None:
            raise self.disconnected()
        self._now = now
        flags = 0
        if subroute:
            payload = protocol.with_subroute(subroute, payload)
            flags = _SUBROUTE
        deadline_ms = max(1, int(timeout * 1000))
        mux_id = self._next_mux_id
        if len(payload) <= protocol.CHUNK_SIZE:
            message = protocol.encode(
                _REQUEST,
                mux_id=mux_id,
                deadline_ms=deadline_ms,
                handler_id=handler_id,
                flags=flags,
                payload=payload,
                checksum=self.config.checksum_payloads,
            )
            outgoing = self._queue(message)
        else:
            if len(payload) > protocol.MAX_REASSEMBLED:
                raise PayloadTooLarge(
                    f"payload of {len(payload)} bytes is over {protocol.MAX_REASSEMBLED}"
                )
            outgoing = Outgoing(None, self._fragments(
                _REQUEST, mux_id, handler_id, deadline_ms, flags, payload
            ))  # fmt: skip
            self.push(outgoing)
        self._next_mux_id = mux_id + 1
        self._calls[mux_id] = handler_id
        self._add_deadline(now + timeout, mux_id, timeout)
        return mux_id, (None if outgoing is None or outgoing.done else outgoing)

    def cancel_call(self, mux_id: int) -> None:
        """Our caller gave up: tell the peer, so it cancels the handler and drops the result."""
        if self._calls.pop(mux_id, None) is not None:
            self._drop_partial(_RESPONSE, mux_id)
            self._put_control(protocol.encode(Op.DISCONNECT_SERVER_MUX, mux_id=mux_id))

    def expect_reply(self, mux_id: int) -> None:
        """Route the peer's RESPONSE on ``mux_id`` as if a call of ours waited for it (a test
        hook for raw requests; no deadline)."""
        if self.cause is not None:
            raise self.disconnected()
        self._calls[mux_id] = 0

    def forget_call(self, mux_id: int) -> None:
        """Stop waiting for ``mux_id`` without telling the peer."""
        self._calls.pop(mux_id, None)

    def _fragments(
        self, op: int, mux_id: int, handler_id: int, deadline_ms: int, flags: int, payload: bytes
    ) -> Iterator[bytes]:
        """A payload over one chunk as ``MORE``-flagged fragments, encoded as they go."""
        checksum = self.config.checksum_payloads
        for seq, (chunk, more) in enumerate(protocol.iter_chunks(payload)):
            yield protocol.encode(
                op,
                mux_id=mux_id,
                seq=seq,
                deadline_ms=deadline_ms,
                handler_id=handler_id,
                flags=flags | (_MORE if more else 0),
                payload=chunk,
                checksum=checksum,
            )

    def _on_response(self, message: Message) -> None:
        mux_id = message.mux_id
        calls = self._calls
        if mux_id not in calls:
            if self._partial:
                self._drop_partial(_RESPONSE, mux_id)
            return  # the caller gave up; drop the late answer
        if self._partial or message.flags & _MORE or message.seq:
            try:
                payload = self._reassemble(_RESPONSE, message, "response")
            except RemoteProtocolError as exc:
                self._breach(message, exc)
                del calls[mux_id]
                self._events.append(
                    CallFailed(
                        mux_id,
                        RemoteError(
                            f"protocol error in the response: {exc}",
                            handler=handler_name(message.handler_id),
                        ),
                    )
                )
                return
            if payload is None:
                return
        else:
            payload = message.payload
        del calls[mux_id]
        if message.flags & _ERR:
            text = protocol.error_text(payload)
            error = RemoteError(text, handler=handler_name(message.handler_id))
            self._events.append(CallFailed(mux_id, error))
        else:
            self._events.append(CallResult(mux_id, payload))

    # ------------------------------------------------------------- the peer's single calls

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
        try:
            if message.flags & _SUBROUTE:
                subroute, payload = protocol.split_subroute(payload)
            handler = self.registry.single(message.handler_id, subroute)
            self._admit_call(message, len(payload) + HELD_OVERHEAD)
        except UnknownHandler as exc:
            self._reply_error(message.mux_id, message.handler_id, str(exc))
            return
        except RemoteProtocolError as exc:
            self._refuse_call(message, exc)
            return
        cost = len(payload) + HELD_OVERHEAD
        timeout = message.deadline_ms / 1000 if message.deadline_ms else self.config.call_timeout
        call = ServerCall(message.mux_id, handler, payload, timeout, cost)
        self._handling[message.mux_id] = call
        self._add_deadline(self._now + timeout, call, timeout)
        self._events.append(CallReceived(call))

    def _admit_call(self, message: Message, cost: int) -> None:
        """Refuse a request over a cap (``busy``) or on a mux already running; else charge
        its payload to the budget."""
        handling = self._handling
        if len(handling) >= self.config.max_inflight_handlers:
            raise LimitExceeded(
                f"{len(handling)} calls on this connection are already running "
                f"(cap {self.config.max_inflight_handlers})"
            )
        if message.mux_id in handling:
            raise RemoteProtocolError(f"mux {message.mux_id} is already a running call")
        self.budget.charge(cost, "request")

    def reply(self, call: ServerCall, body: bytes, *, error: bool = False) -> Outgoing | None:
        """Queue the answer to ``call`` (``body`` is an error text when ``error``): None once
        queued (or dropped: nobody waits for it any more), else what to :meth:`push` when
        there is room. A reply that waits is held for the peer and charged to the budget; if
        that would go over, the caller gets "busy" instead."""
        if self._handling.get(call.mux_id) is not call:
            return None
        handler_id = call.handler.handler_id
        flags = _ERR if error else 0
        if len(body) > protocol.CHUNK_SIZE:
            if not self._hold_reply(call, len(body)):
                return None
            outgoing = Outgoing(None, self._fragments(
                _RESPONSE, call.mux_id, handler_id, 0, flags, body
            ))  # fmt: skip
            return None if self.push(outgoing) else outgoing
        message = protocol.encode(
            _RESPONSE,
            mux_id=call.mux_id,
            handler_id=handler_id,
            flags=flags,
            payload=body,
            checksum=self.config.checksum_payloads,
        )
        if self._outbox.try_put_data(message, self._now):
            return None  # the common case: queued at once
        self._no_room()
        if self._hold_reply(call, len(message)):
            return Outgoing(message)
        return None

    def _hold_reply(self, call: ServerCall, size: int) -> bool:
        """A reply about to wait for room: the call is charged for the reply from now on
        instead of the request. False if the budget refused it (the caller gets "busy")."""
        cost = size + HELD_OVERHEAD
        try:
            if cost > call.cost:
                self.budget.charge(cost - call.cost, "reply waiting to be sent")
            else:
                self.budget.release(call.cost - cost)
        except LimitExceeded as exc:
            self._refused(f"reply to request {call.mux_id} dropped: {exc}")
            self._reply_error(call.mux_id, call.handler.handler_id, f"busy: {exc}; retry later")
            return False
        call.cost = cost
        call.state = next_call_state(call.state, CallEvent.HOLD_REPLY)
        return True

    def finish_call(self, call: ServerCall) -> None:
        """The handler of ``call`` is done (its reply queued, refused or not wanted)."""
        if self._handling.get(call.mux_id) is call:
            del self._handling[call.mux_id]
            self.budget.release(call.cost)
            call.state = next_call_state(call.state, CallEvent.FINISH)

    def _stop_call(self, call: ServerCall) -> None:
        """The caller left or the session ended: the handler is cancelled."""
        del self._handling[call.mux_id]
        self.budget.release(call.cost)
        call.state = next_call_state(call.state, CallEvent.CANCEL)
        self._events.append(StopHandler(call))

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

    def _on_disconnect_server_mux(self, message: Message) -> None:
        """The caller of a call or stream running here gave up."""
        mux_id = message.mux_id
        if self._partial:
            self._drop_partial(_REQUEST, mux_id)
        call = self._handling.get(mux_id)
        if call is not None:
            self._stop_call(call)
        mux = self._servers.get(mux_id)
        if mux is not None:
            self._abort(mux, Cancelled(f"{mux.handler_name}: the client cancelled the stream"))

    # ------------------------------------------------------------------ reassembly

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

    # ------------------------------------------------------------------ streams: ours

    def new_mux_id(self) -> int:
        """Reserve a mux id for a stream to open later with :meth:`open_stream`."""
        mux_id = self._next_mux_id
        self._next_mux_id = mux_id + 1
        return mux_id

    def open_stream(
        self,
        mux_id: int,
        handler_id: int,
        payload: bytes = b"",
        *,
        subroute: str = "",
        timeout: float | None = None,
        now: float,
    ) -> tuple[Mux, Outgoing | None]:
        """Open a stream to a handler on the peer: the new mux (OPENING until the ACK), and
        what still has to be pushed."""
        if self.cause is not None:
            raise self.disconnected()
        self._now = now
        name = handler_name(handler_id)
        flags = 0
        if subroute:
            payload = protocol.with_subroute(subroute, payload)
            flags = _SUBROUTE
        if len(payload) > protocol.CHUNK_SIZE:
            raise LocalProtocolError(
                f"{name}: an initial payload is limited to {protocol.CHUNK_SIZE} bytes; "
                "send the rest as stream items"
            )
        deadline_ms = max(1, int(timeout * 1000)) if timeout is not None else 0
        message = protocol.encode(
            Op.CONNECT_MUX,
            mux_id=mux_id,
            deadline_ms=deadline_ms,
            handler_id=handler_id,
            flags=flags,
            payload=payload,
        )
        mux = Mux(mux_id, Role.CLIENT, handler_id, name, MuxState.OPENING, now)
        mux.timeout = timeout
        self._clients[mux_id] = mux
        if timeout is not None:
            self._add_deadline(now + timeout, mux, timeout)
        self._watch_stream(now + self.config.stream_ping_interval)
        return mux, self._queue(message)

    def cancel_stream(self, mux: Mux, error: CallError | None = None) -> None:
        """Abandon a stream we opened: the peer's handler is cancelled and every waiter here
        raises ``error`` (Cancelled by default). Nothing happens once the mux has ended."""
        if mux.role is not Role.CLIENT:
            raise LocalProtocolError(f"{mux.handler_name}: only the client cancels a stream")
        if mux.state.terminal:
            return
        self._put_control(protocol.encode(Op.DISCONNECT_SERVER_MUX, mux_id=mux.mux_id))
        self._abort(
            mux,
            error or Cancelled(f"{mux.handler_name}: stream cancelled by the caller"),
            MuxEvent.CANCEL,
        )

    def _on_ack_mux(self, message: Message) -> None:
        mux = self._clients.get(message.mux_id)
        if mux is None:
            return
        try:
            in_capacity, out_capacity = _capacities(message.payload, mux.handler_name)
            new = next_mux_state(mux.role, mux.state, MuxEvent.ACK, mux.handler_name)
        except RemoteProtocolError as exc:
            self._mux_breach(mux, message, exc)
            return
        mux.window = Window(in_capacity)
        mux.inbox = Inbox(out_capacity, f"{mux.handler_name} responses", self.budget)
        mux.state = new
        mux.last_seen = self._now
        self._events.append(StreamChanged(mux))

    def _on_server_msg(self, message: Message) -> None:
        mux = self._clients.get(message.mux_id)
        if mux is not None:
            self._receive_item(mux, message)

    def _on_unblock_client(self, message: Message) -> None:
        mux = self._clients.get(message.mux_id)
        if mux is not None:
            self._receive_grant(mux, message)

    def _on_disconnect_client_mux(self, message: Message) -> None:
        mux = self._clients.get(message.mux_id)
        if mux is not None:
            reason = protocol.error_text(message.payload)
            self._abort(
                mux, Cancelled(reason or f"{mux.handler_name}: the server cancelled the stream")
            )

    def _on_mux_connect_error(self, message: Message) -> None:
        mux = self._clients.get(message.mux_id)
        if mux is not None:
            reason = protocol.error_text(message.payload)
            self._abort(mux, RemoteError(reason, handler=mux.handler_name))

    # ------------------------------------------------------------------ streams: theirs

    def _on_connect_mux(self, message: Message) -> None:
        payload = message.payload
        subroute = ""
        try:
            if message.flags & _MORE:
                raise RemoteProtocolError("a stream's initial payload cannot be fragmented")
            if message.flags & _SUBROUTE:
                subroute, payload = protocol.split_subroute(payload)
            if message.mux_id in self._servers:
                raise RemoteProtocolError(f"stream mux {message.mux_id} is already open")
            handler = self.registry.stream(message.handler_id, subroute)
        except UnknownHandler as exc:
            self._refuse_stream(message.mux_id, str(exc))
            return
        except RemoteProtocolError as exc:
            self._breach(message, exc)
            self._refuse_stream(message.mux_id, f"protocol error: {exc}")
            return
        cost = len(payload) + HELD_OVERHEAD
        try:
            if len(self._servers) >= self.config.max_inflight_streams:
                raise LimitExceeded(
                    f"{len(self._servers)} streams on this connection are already open "
                    f"(cap {self.config.max_inflight_streams})"
                )
            self.budget.charge(cost, "stream initial payload")
        except LimitExceeded as exc:
            self._refused(f"stream {message.mux_id} refused: {exc}")
            self._refuse_stream(message.mux_id, f"busy: {exc}; retry later")
            return
        now = self._now
        mux = Mux(message.mux_id, Role.SERVER, handler.handler_id, handler.name, MuxState.OPEN, now)
        mux.handler, mux.payload, mux.subroute, mux.cost = handler, payload, subroute, cost
        mux.inbox = Inbox(handler.in_capacity, f"{handler.name} requests", self.budget)
        mux.window = Window(handler.out_capacity)
        self._servers[message.mux_id] = mux
        # The acknowledgement is control: it never waits behind a full data queue.
        ack = protocol.pack_obj({"in": handler.in_capacity, "out": handler.out_capacity})
        self._put_control(protocol.encode(Op.ACK_MUX, mux_id=message.mux_id, payload=ack))
        if message.deadline_ms:
            mux.timeout = message.deadline_ms / 1000
            self._add_deadline(now + mux.timeout, mux, mux.timeout)
        self._watch_stream(now + self.config.stream_timeout)
        self._events.append(StreamReceived(mux))

    def _refuse_stream(self, mux_id: int, text: str) -> None:
        self._put_control(
            protocol.encode(
                Op.MUX_CONNECT_ERROR,
                mux_id=mux_id,
                payload=text.encode()[: protocol.MAX_ERROR_TEXT],
            )
        )

    def _on_client_msg(self, message: Message) -> None:
        mux = self._servers.get(message.mux_id)
        if mux is not None:  # else already ended here; the client will hear about it
            self._receive_item(mux, message)

    def _on_unblock_server(self, message: Message) -> None:
        mux = self._servers.get(message.mux_id)
        if mux is not None:
            self._receive_grant(mux, message)

    def finish_stream(self, mux: Mux) -> None:
        """The handler of a stream the peer opened has returned or raised (after
        :meth:`end_stream`); if it somehow has not ended the mux, end it with an error."""
        if not mux.state.terminal:
            self.end_stream(mux, f"{mux.handler_name}: the handler stopped")

    # ------------------------------------------------------------------ streams: both ends

    def send_item(self, mux: Mux, payload: bytes) -> Outgoing | None:
        """Spend a credit on one item: its messages (to :meth:`push`), or None when there is
        no credit yet (wait for a :class:`StreamChanged`). Raises the mux's error once it
        failed, and :class:`LocalProtocolError` for a send the protocol forbids. A client's
        item after the server finished goes nowhere: receiving tells the caller how it
        ended."""
        if mux.error is not None:
            raise mux.error
        state = mux.state
        if state is MuxState.OPENING:
            return None  # credit comes with the acknowledgement
        if state is MuxState.CLOSED and mux.role is Role.CLIENT:
            return Outgoing(None)
        window = mux.window
        if window is not None and window.capacity == 0:
            raise LocalProtocolError(f"{mux.handler_name} takes no requests (in_capacity=0)")
        new = next_mux_state(mux.role, state, MuxEvent.ITEM_SENT, mux.handler_name)
        assert window is not None  # every state that sends has the window
        if not window.try_spend():
            return None
        mux.state = new
        op = _SEND_OP[mux.role]
        seq = mux.send_seq
        if len(payload) <= protocol.CHUNK_SIZE:
            mux.send_seq = seq + 1
            message = protocol.encode(op, mux_id=mux.mux_id, seq=seq, payload=payload)
            return Outgoing(message)
        mux.send_seq = seq + -(-len(payload) // protocol.CHUNK_SIZE)
        return Outgoing(None, _item_fragments(op, mux.mux_id, seq, payload))

    def take_item(self, mux: Mux) -> bytes | End | None:
        """The next item the peer sent, :class:`End` at its normal end, or None when nothing
        has arrived yet. Taking an item grants the peer a credit. Raises the mux's error if
        it ended abnormally (an error end becomes :class:`RemoteError` after the items before
        it)."""
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
            self._put_control(
                protocol.encode(_GRANT_OP[mux.role], mux_id=mux.mux_id, payload=_GRANT_ONE)
            )
        return item

    def end_stream(self, mux: Mux, error: str = "") -> None:
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
            message = protocol.encode(
                op,
                mux_id=mux.mux_id,
                seq=seq,
                flags=_ERR_END_FLAGS,
                payload=error.encode()[: protocol.MAX_ERROR_TEXT],
            )
        else:
            message = protocol.encode(op, mux_id=mux.mux_id, seq=seq, flags=_END_FLAGS)
        if self.cause is None:
            self._outbox.put_terminal(message)
        self._enter(mux, new)

    def hold(self, mux: Mux, size: int) -> int:
        """An item of ``size`` bytes from our handler is about to wait (for credit or room):
        charge it to the budget, and return what to give back with :meth:`unhold`. What a
        server holds for its peer counts; the client's own items do not (return 0). Raises
        :class:`LimitExceeded` if the budget would go over."""
        if mux.role is Role.CLIENT:
            return 0
        cost = size + min(size, protocol.CHUNK_SIZE) + HELD_OVERHEAD
        self.budget.charge(cost, f"{mux.handler_name} item waiting to be sent")
        return cost

    def unhold(self, cost: int) -> None:
        """Give back what :meth:`hold` charged."""
        self.budget.release(cost)

    def _receive_item(self, mux: Mux, message: Message) -> None:
        mux.last_seen = self._now
        inbox = mux.inbox
        try:
            if message.flags & _EOF:
                new = next_mux_state(mux.role, mux.state, MuxEvent.END_RECEIVED, mux.handler_name)
                assert inbox is not None  # every state that receives has the inbox
                error = protocol.error_text(message.payload) if message.flags & _ERR else ""
                inbox.push_end(message.seq, error)
                self._enter(mux, new)
            else:
                next_mux_state(mux.role, mux.state, MuxEvent.ITEM_RECEIVED, mux.handler_name)
                assert inbox is not None
                if not inbox.push(message.seq, message.payload, more=bool(message.flags & _MORE)):
                    return
        except RemoteProtocolError as exc:
            self._mux_breach(mux, message, exc)
            return
        self._events.append(StreamChanged(mux))

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
            self._mux_breach(mux, message, exc)
            return
        self._events.append(StreamChanged(mux))

    def _mux_breach(self, mux: Mux, message: Message, exc: RemoteProtocolError) -> None:
        """The peer broke the protocol on one mux, or went over a receive limit with it: fail
        that mux only, on both sides."""
        if isinstance(exc, LimitExceeded):
            self._refused(f"stream {mux.mux_id} failed: {exc}")
            why = f"busy: {exc}"
        else:
            self._breach(message, exc)
            why = f"protocol error: {exc}"
        if mux.role is Role.CLIENT:
            self._put_control(protocol.encode(Op.DISCONNECT_SERVER_MUX, mux_id=mux.mux_id))
            self._abort(mux, RemoteError(f"{why} (on this stream)", handler=mux.handler_name))
        else:
            self._put_control(
                protocol.encode(
                    Op.DISCONNECT_CLIENT_MUX,
                    mux_id=mux.mux_id,
                    payload=why.encode()[: protocol.MAX_ERROR_TEXT],
                )
            )
            self._abort(mux, Cancelled(f"{mux.handler_name}: {why}"))

    def _abort(self, mux: Mux, error: CallError, event: MuxEvent = MuxEvent.ABORT) -> None:
        """End a mux abnormally: its waiters raise ``error``; a server's handler is stopped."""
        if mux.state.terminal:
            return
        if mux.error is None:
            mux.error = error
        self._enter(mux, next_mux_state(mux.role, mux.state, event, mux.handler_name))
        self._events.append(StreamChanged(mux))
        if mux.role is Role.SERVER:
            self._events.append(StopHandler(mux))

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
            self.budget.release(mux.cost)
            mux.cost = 0

    # ------------------------------------------------------------------ liveness

    def _ping(self, now: float) -> None:
        self._put_control(protocol.encode(Op.PING, payload=protocol.pack_obj({"t": now})))
        self._next_ping = now + self.config.ping_interval

    def _on_ping(self, message: Message) -> None:
        if message.mux_id:
            mux = self._servers.get(message.mux_id)
            if mux is None:
                self._put_control(
                    protocol.encode(
                        Op.DISCONNECT_CLIENT_MUX,
                        mux_id=message.mux_id,
                        payload=b"stream unknown on the server",
                    )
                )
                return
            mux.last_seen = self._now
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
        now = self._now
        if message.mux_id:
            mux = self._clients.get(message.mux_id)
            if mux is not None:
                mux.last_seen = now
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
        self.peer_health = health
        self.counters.peer_loop_lag = health.loop_lag
        if not self._stall_reported and health.stall >= self.config.dead_after / 2:
            self._stall_reported = True
            self._events.append(PeerStalled(health.stall))

    def next_timer(self) -> float:
        """When :meth:`tick` should next run (the driver's only timer)."""
        deadlines = self._deadlines
        if deadlines and deadlines[0][0] < self._due:
            return deadlines[0][0]
        return self._due

    def tick(self, now: float) -> list[Event]:
        """Run what is due at ``now``: expired deadlines, pings, stream pings and timeouts,
        the silence and not-reading checks. A timer that fires late by half the disconnect
        window means our own loop stalled: the peer is not accused for that window."""
        if self.cause is not None:
            return self.take_events()
        self._now = now
        deadlines = self._deadlines
        if deadlines and deadlines[0][0] <= now:
            self._expire(now)
        if now >= self._due:
            self._check_liveness(now)
        return self.take_events()

    def _liveness_due(self) -> float:
        due = min(self._next_ping, self.last_seen + self.config.dead_after, self._streams_due)
        full_since = self._outbox.full_since
        if full_since is not None:
            due = min(due, full_since + self.config.dead_after)
        return due

    def _check_liveness(self, now: float) -> None:
        config = self.config
        half = config.dead_after / 2
        late = now - self._due
        silent = now >= self.last_seen + config.dead_after
        if late >= half or (silent and self._loop.stalled_during(self.last_seen, now) >= half):
            # Our own loop was stalled: the silence is ours. Give the peer a fresh window.
            log.warning(
                "grid %s->%s: local loop stalled %.1fs; not accusing the peer for that window",
                self.local,
                self.remote,
                max(late, now - self.last_seen),
            )
            self.last_seen = now
            if self._outbox.full_since is not None:
                self._outbox.full_since = now
        elif silent:
            silence = now - self.last_seen
            self._end(diagnose_silence(silence, self.peer_health, config.ping_interval))
            return
        elif self._peer_not_reading(now):
            return
        if now >= self._next_ping:
            self._ping(now)
        if now >= self._streams_due:
            self._check_streams(now)
        self._due = self._liveness_due()

    def _peer_not_reading(self, now: float) -> bool:
        outbox = self._outbox
        full_since = outbox.full_since
        if full_since is None or now < full_since + self.config.dead_after:
            return False
        cause = Cause(
            CauseKind.PEER_NOT_READING,
            f"out-queue full for {now - full_since:.1f}s with nothing written "
            f"({len(outbox)} messages, {outbox.data_bytes} bytes queued); "
            "the peer sends but does not read",
        )
        log.warning("grid %s->%s: disconnecting: %s", self.local, self.remote, cause)
        self._end(cause)
        return True

    def _watch_stream(self, due: float) -> None:
        if due < self._streams_due:
            self._streams_due = due
            self._due = min(self._due, due)

    def _check_streams(self, now: float) -> None:
        """Ping our long streams; fail the ones whose server stopped answering; cancel the
        ones whose client went quiet, and say which and why."""
        config = self.config
        due = _INF
        for mux in list(self._clients.values()):
            silent_until = mux.last_seen + config.stream_client_timeout
            if now >= silent_until:
                self._put_control(protocol.encode(Op.DISCONNECT_SERVER_MUX, mux_id=mux.mux_id))
                self._abort(mux, Disconnected(
                    f"{mux.handler_name}: the server stopped answering this stream for "
                    f"{now - mux.last_seen:.1f}s",
                    cause=CauseKind.NETWORK_SILENT.value,
                ))  # fmt: skip
                continue
            if now >= mux.last_ping + config.stream_ping_interval:
                mux.last_ping = now
                self._put_control(protocol.encode(Op.PING, mux_id=mux.mux_id))
            due = min(due, mux.last_ping + config.stream_ping_interval, silent_until)
        for mux in list(self._servers.values()):
            quiet_until = mux.last_seen + config.stream_timeout
            if now >= quiet_until:
                self._cancel_quiet_stream(mux, now - mux.last_seen)
            else:
                due = min(due, quiet_until)
        self._streams_due = due

    def _cancel_quiet_stream(self, mux: Mux, age: float) -> None:
        health = self.peer_health
        why = (
            f"remote loop stalled {health.loop_lag:.1f}s at last contact"
            if health is not None and health.loop_lag >= self.config.ping_interval / 2
            else "no traffic on this stream; remote loop healthy at last contact"
        )
        log.warning(
            "canceling remote connection %s->%s not seen for %.1fs (handler=%s subroute=%s): %s",
            self.local,
            self.remote,
            age,
            mux.handler_name,
            mux.subroute or "-",
            why,
        )
        self._put_control(
            protocol.encode(
                Op.DISCONNECT_CLIENT_MUX,
                mux_id=mux.mux_id,
                payload=f"server canceled the stream: not seen for {age:.1f}s".encode(),
            )
        )
        self._abort(
            mux, Cancelled(f"{mux.handler_name}: client not seen for {age:.1f}s"), MuxEvent.CANCEL
        )

    # ------------------------------------------------------------------ deadlines

    def _add_deadline(self, when: float, target: int | ServerCall | Mux, seconds: float) -> None:
        deadlines = self._deadlines
        self._deadline_count += 1
        heapq.heappush(deadlines, (when, self._deadline_count, target, seconds))
        # Entries of finished work are dropped lazily; rebuild when they are most of it.
        if len(deadlines) > 64 and len(deadlines) > 4 * (
            len(self._calls) + len(self._handling) + len(self._clients) + len(self._servers)
        ):
            self._deadlines = [entry for entry in deadlines if self._still_due(entry[2])]
            heapq.heapify(self._deadlines)

    def _still_due(self, target: int | ServerCall | Mux) -> bool:
        if isinstance(target, int):
            return target in self._calls
        if isinstance(target, ServerCall):
            return self._handling.get(target.mux_id) is target and target.state is CallState.RUNNING
        return not target.state.terminal and MuxEvent.EXPIRE in MUX_TRANSITIONS[target.role].get(
            target.state, {}
        )

    def _expire(self, now: float) -> None:
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            _, _, target, seconds = heapq.heappop(deadlines)
            if not self._still_due(target):
                continue
            if isinstance(target, int):
                handler_id = self._calls.pop(target)
                self._drop_partial(_RESPONSE, target)
                self._put_control(protocol.encode(Op.DISCONNECT_SERVER_MUX, mux_id=target))
                error = DeadlineExceeded(
                    f"{handler_name(handler_id)}: no answer within {seconds:.3f}s"
                )
                self._events.append(CallFailed(target, error))
            elif isinstance(target, ServerCall):
                target.state = next_call_state(target.state, CallEvent.EXPIRE)
                self._events.append(StopHandler(target))
            elif target.role is Role.CLIENT:
                self._put_control(protocol.encode(Op.DISCONNECT_SERVER_MUX, mux_id=target.mux_id))
                error = DeadlineExceeded(
                    f"{target.handler_name}: stream deadline of {seconds:.3f}s exceeded"
                )
                self._abort(target, error, MuxEvent.EXPIRE)
            else:
                target.state = next_mux_state(target.role, target.state, MuxEvent.EXPIRE)
                self._events.append(StopHandler(target))

    # ------------------------------------------------------------------ the end

    def close(self, cause: Cause, now: float) -> list[Event]:
        """End the session (the socket closed or was reset, we were told to drop it, or the
        node shuts down): everything in flight fails at once. A reset right after our own
        loop stalled for half the window is diagnosed as ``local-stalled``."""
        self._now = now
        if self.cause is None:
            self._end(self._diagnose_reset(cause, now))
        return self.take_events()

    def _diagnose_reset(self, cause: Cause, now: float) -> Cause:
        if cause.kind is not CauseKind.RESET:
            return cause
        window = self.config.dead_after
        stall = self._loop.stalled_during(now - window, now)
        if stall < window / 2:
            return cause
        return Cause(
            CauseKind.LOCAL_STALLED,
            f"our loop stalled {stall:.1f}s and the peer gave up on us ({cause})",
        )

    def _end(self, cause: Cause) -> None:
        """Fail everything in flight, drop the queue, and say so (one log line)."""
        if self.cause is not None:
            return
        self.cause = cause
        self._log_casualties(cause)
        error = self.disconnected()
        events = self._events
        calls, self._calls = self._calls, {}
        events.extend(CallFailed(mux_id, error) for mux_id in calls)
        for call in list(self._handling.values()):
            self._stop_call(call)
        for mux in self.muxes():
            self._abort(mux, error)
        for partial in self._partial.values():
            partial.release()
        self._partial.clear()
        self._outbox.clear()
        self._deadlines.clear()
        events.append(SessionEnded(cause))

    def _log_casualties(self, cause: Cause) -> None:
        """One line for everything a lost session takes with it, never one per call."""
        handlers = [call.handler.name for call in self._handling.values()]
        handlers += [f"{mux.handler_name} {mux.subroute}".strip() for mux in self._servers.values()]
        calls, streams = len(self._calls), len(self._clients)
        if not (handlers or calls or streams) or cause.kind is CauseKind.SHUTDOWN:
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

    # ------------------------------------------------------------------ misbehaviour

    def _breach(self, message: Message, exc: Exception) -> None:
        """One message or mux broke the protocol; it alone is refused. Logged a few times per
        session, then only counted."""
        self.counters.protocol_errors += 1
        self._breaches += 1
        if self._breaches <= LOGGED_PER_SESSION:
            log.warning(
                "grid %s->%s: protocol error on mux %d (%s): %s%s",
                self.local,
                self.remote,
                message.mux_id,
                Op(message.op).name,
                exc,
                "; further ones this session are counted, not logged"
                if self._breaches == LOGGED_PER_SESSION
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
