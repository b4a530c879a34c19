"""Single calls on one session, both directions (sans-IO).

Ours: :meth:`CallTable.start` queues a request and records its deadline; the answer comes back
as :class:`~minigrid.events.CallResult` or :class:`~minigrid.events.CallFailed` (RemoteError,
DeadlineExceeded, or Disconnected when the session ends). A caller that gives up tells the peer
(:meth:`CallTable.cancel`), so it drops the work.

The peer's: a request is reassembled (fragments are linear and capped), checked against the
registry and the caps (handlers running, bytes held) and refused at once with an error reply
if it must be, never run as a task. Otherwise the driver gets
:class:`~minigrid.events.CallReceived` and answers with :meth:`CallTable.reply`. Each call is a
:class:`~minigrid.records.ServerCall` moved through :class:`~minigrid.state.CallState`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from . import protocol
from .errors import (
    DeadlineExceeded,
    LimitExceeded,
    PayloadTooLarge,
    RemoteError,
    RemoteProtocolError,
)
from .events import CallFailed, CallReceived, CallResult, StopHandler
from .handlers import Registry, UnknownHandler, handler_name
from .link import Link
from .mux import HELD_OVERHEAD, Fragments
from .protocol import Flags, Message, Op
from .records import Outgoing, ServerCall
from .state import CallEvent, CallState, next_call_state

_ERR: Final = int(Flags.PAYLOAD_IS_ERR)
_MORE: Final = int(Flags.MORE)
_SUBROUTE: Final = int(Flags.SUBROUTE)
_REQUEST: Final = int(Op.REQUEST)
_RESPONSE: Final = int(Op.RESPONSE)


class CallTable:
    """Our calls waiting for answers, and the peer's calls running here."""

    def __init__(self, link: Link, registry: Registry) -> None:
        self._link = link
        self._registry = registry
        self._waiting: dict[int, int] = {}  # our calls: mux id -> handler id
        self._running: dict[int, ServerCall] = {}  # the peer's calls, by its mux id
        self._partial: dict[tuple[int, int], Fragments] = {}  # payloads: (op, mux id)

    @property
    def waiting(self) -> int:
        """Our calls waiting for an answer."""
        return len(self._waiting)

    @property
    def running(self) -> int:
        """The peer's calls running here."""
        return len(self._running)

    def waiting_ids(self) -> list[int]:
        return list(self._waiting)

    def handler_names(self) -> list[str]:
        """The handlers the peer has running here (for the log line of a lost session)."""
        return [call.handler.name for call in self._running.values()]

    # ------------------------------------------------------------------ ours

    def start(
        self, handler_id: int, payload: bytes, *, subroute: str = "", timeout: float, now: float
    ) -> tuple[int, Outgoing | None]:
        """Start a call: its mux id, and what still has to be pushed (None: all queued)."""
        link = self._link
        if link.cause is not None:
            raise link.disconnected()
        link.now = now
        flags = 0
        if subroute:
            payload = protocol.with_subroute(subroute, payload)
            flags = _SUBROUTE
        deadline_ms = max(1, int(timeout * 1000))
        mux_id = link.peek_mux_id()
        if len(payload) <= protocol.CHUNK_SIZE:
            message = protocol.encode(
                _REQUEST,
                mux_id=mux_id,
                deadline_ms=deadline_ms,
                handler_id=handler_id,
                flags=flags,
                payload=payload,
                checksum=link.config.checksum_payloads,
            )
            outgoing = link.queue(message)
        else:
            if len(payload) > protocol.MAX_REASSEMBLED:
                raise PayloadTooLarge(
                    f"payload of {len(payload)} bytes is over {protocol.MAX_REASSEMBLED}"
                )
            outgoing = Outgoing(None, self._fragments(
                _REQUEST, mux_id, handler_id, deadline_ms, flags, payload
            ))  # fmt: skip
            link.push(outgoing)
        link.new_mux_id()
        self._waiting[mux_id] = handler_id
        link.deadlines.add(now + timeout, mux_id, timeout)
        return mux_id, (None if outgoing is None or outgoing.done else outgoing)

    def cancel(self, mux_id: int) -> None:
        """Our caller gave up: tell the peer, so it cancels the handler and drops the result."""
        if self._waiting.pop(mux_id, None) is not None:
            self._drop_partial(_RESPONSE, mux_id)
            self._link.control(protocol.encode(Op.DISCONNECT_SERVER_MUX, mux_id=mux_id))

    def expect(self, mux_id: int) -> None:
        """Route the peer's RESPONSE on ``mux_id`` as if a call of ours waited for it (a test
        hook for raw requests; no deadline)."""
        if self._link.cause is not None:
            raise self._link.disconnected()
        self._waiting[mux_id] = 0

    def forget(self, mux_id: int) -> None:
        """Stop waiting for ``mux_id`` without telling the peer."""
        self._waiting.pop(mux_id, None)

    def is_waiting(self, mux_id: int) -> bool:
        return mux_id in self._waiting

    def expire(self, mux_id: int, seconds: float) -> None:
        """Our call's deadline passed: it fails, and the peer is told to drop the work."""
        handler_id = self._waiting.pop(mux_id)
        self._drop_partial(_RESPONSE, mux_id)
        self._link.control(protocol.encode(Op.DISCONNECT_SERVER_MUX, mux_id=mux_id))
        error = DeadlineExceeded(f"{handler_name(handler_id)}: no answer within {seconds:.3f}s")
        self._link.emit(CallFailed(mux_id, error))

    def on_response(self, message: Message) -> None:
        mux_id = message.mux_id
        waiting = self._waiting
        if mux_id not in waiting:
            if self._partial:
                self._drop_partial(_RESPONSE, mux_id)
            return  # the caller gave up; drop the late answer
        if self._partial or message.flags & _MORE or message.seq:
            try:
                payload = self._reassemble(_RESPONSE, message, "response")
            except RemoteProtocolError as exc:
                self._link.breach(message, exc)
                del waiting[mux_id]
                error = RemoteError(
                    f"protocol error in the response: {exc}",
                    handler=handler_name(message.handler_id),
                )
                self._link.emit(CallFailed(mux_id, error))
                return
            if payload is None:
                return
        else:
            payload = message.payload
        del waiting[mux_id]
        if message.flags & _ERR:
            text = protocol.error_text(payload)
            error = RemoteError(text, handler=handler_name(message.handler_id))
            self._link.emit(CallFailed(mux_id, error))
        else:
            self._link.emit(CallResult(mux_id, payload))

    # ------------------------------------------------------------------ the peer's

    def on_request(self, message: Message) -> None:
        if self._partial or message.flags & _MORE or message.seq:
            try:
                payload = self._reassemble(_REQUEST, message, "request")
            except RemoteProtocolError as exc:
                self._refuse(message, exc)
                return
            if payload is None:
                return
        else:
            payload = message.payload
        subroute = ""
        try:
            if message.flags & _SUBROUTE:
                subroute, payload = protocol.split_subroute(payload)
            handler = self._registry.single(message.handler_id, subroute)
            self._admit(message, len(payload) + HELD_OVERHEAD)
        except UnknownHandler as exc:
            self._reply_error(message.mux_id, message.handler_id, str(exc))
            return
        except RemoteProtocolError as exc:
            self._refuse(message, exc)
            return
        link = self._link
        timeout = message.deadline_ms / 1000 if message.deadline_ms else link.config.call_timeout
        call = ServerCall(message.mux_id, handler, payload, timeout, len(payload) + HELD_OVERHEAD)
        self._running[message.mux_id] = call
        link.deadlines.add(link.now + timeout, call, timeout)
        link.emit(CallReceived(call))

    def _admit(self, message: Message, cost: int) -> None:
        """Refuse a request over a cap (``busy``) or on a mux already running; else charge
        its payload to the budget."""
        running = self._running
        cap = self._link.config.max_inflight_handlers
        if len(running) >= cap:
            raise LimitExceeded(
                f"{len(running)} calls on this connection are already running (cap {cap})"
            )
        if message.mux_id in running:
            raise RemoteProtocolError(f"mux {message.mux_id} is already a running call")
        self._link.budget.charge(cost, "request")

    def reply(self, call: ServerCall, body: bytes, *, error: bool = False) -> Outgoing | None:
        """Queue the answer to ``call`` (``body`` is an error text when ``error``): None once
        queued (or dropped: nobody waits for it any more), else what to push when there is
        room. A reply that waits is held for the peer and charged to the budget; if that
        would go over, the caller gets "busy" instead."""
        if self._running.get(call.mux_id) is not call:
            return None
        link = self._link
        handler_id = call.handler.handler_id
        flags = _ERR if error else 0
        if len(body) > protocol.CHUNK_SIZE:
            if not self._hold_reply(call, len(body)):
                return None
            outgoing = Outgoing(None, self._fragments(
                _RESPONSE, call.mux_id, handler_id, 0, flags, body
            ))  # fmt: skip
            return None if link.push(outgoing) else outgoing
        message = protocol.encode(
            _RESPONSE,
            mux_id=call.mux_id,
            handler_id=handler_id,
            flags=flags,
            payload=body,
            checksum=link.config.checksum_payloads,
        )
        if link.outbox.try_put_data(message, link.now):
            return None  # the common case: queued at once
        link.no_room()
        if self._hold_reply(call, len(message)):
            return Outgoing(message)
        return None

    def _hold_reply(self, call: ServerCall, size: int) -> bool:
        """A reply about to wait for room: the call is charged for the reply from now on
        instead of the request. False if the budget refused it (the caller gets "busy")."""
        cost = size + HELD_OVERHEAD
        budget = self._link.budget
        try:
            if cost > call.cost:
                budget.charge(cost - call.cost, "reply waiting to be sent")
            else:
                budget.release(call.cost - cost)
        except LimitExceeded as exc:
            self._link.refused(f"reply to request {call.mux_id} dropped: {exc}")
            self._reply_error(call.mux_id, call.handler.handler_id, f"busy: {exc}; retry later")
            return False
        call.cost = cost
        call.state = next_call_state(call.state, CallEvent.HOLD_REPLY)
        return True

    def finish(self, call: ServerCall) -> None:
        """The handler of ``call`` is done (its reply queued, refused or not wanted)."""
        if self._running.get(call.mux_id) is call:
            del self._running[call.mux_id]
            self._link.budget.release(call.cost)
            call.state = next_call_state(call.state, CallEvent.FINISH)

    def is_running(self, call: ServerCall) -> bool:
        """``call`` still runs and may still expire."""
        return self._running.get(call.mux_id) is call and call.state is CallState.RUNNING

    def expire_handler(self, call: ServerCall) -> None:
        """The peer's deadline for ``call`` passed: its handler is cancelled, and it answers
        with a deadline error (see :attr:`ServerCall.expired`)."""
        call.state = next_call_state(call.state, CallEvent.EXPIRE)
        self._link.emit(StopHandler(call))

    def on_disconnect(self, mux_id: int) -> None:
        """The peer's caller gave up (DISCONNECT_SERVER_MUX): its handler is cancelled."""
        if self._partial:
            self._drop_partial(_REQUEST, mux_id)
        call = self._running.get(mux_id)
        if call is not None:
            self._stop(call)

    def _stop(self, call: ServerCall) -> None:
        del self._running[call.mux_id]
        self._link.budget.release(call.cost)
        stopped = call.state is CallState.EXPIRED  # its handler was told to stop already
        call.state = next_call_state(call.state, CallEvent.CANCEL)
        if not stopped:
            self._link.emit(StopHandler(call))

    def _reply_error(self, mux_id: int, handler_id: int, text: str) -> None:
        """Answer a call with an error at once, as a control message: it never waits behind
        data, and it never becomes a task."""
        self._link.control(
            protocol.encode(
                _RESPONSE,
                mux_id=mux_id,
                handler_id=handler_id,
                flags=_ERR,
                payload=text.encode()[: protocol.MAX_ERROR_TEXT],
            )
        )

    def _refuse(self, message: Message, exc: RemoteProtocolError) -> None:
        """Refuse one request: a cap was reached ("busy") or it broke the protocol."""
        if isinstance(exc, LimitExceeded):
            self._link.refused(f"request {message.mux_id} refused: {exc}")
            text = f"busy: {exc}; retry later"
        else:
            self._link.breach(message, exc)
            text = f"protocol error: {exc}"
        self._reply_error(message.mux_id, message.handler_id, text)

    # ------------------------------------------------------------------ both

    def close(self) -> None:
        """The session ended: every call of ours fails, every handler here is stopped."""
        error = self._link.disconnected()
        waiting, self._waiting = self._waiting, {}
        for mux_id in waiting:
            self._link.emit(CallFailed(mux_id, error))
        for call in list(self._running.values()):
            self._stop(call)
        for partial in self._partial.values():
            partial.release()
        self._partial.clear()

    def _fragments(
        self, op: int, mux_id: int, handler_id: int, deadline_ms: int, flags: int, payload: bytes
    ) -> Iterator[bytes]:
        """A payload over one chunk as ``MORE``-flagged fragments, encoded as they go."""
        checksum = self._link.config.checksum_payloads
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
            partial = self._partial[key] = Fragments(self._link.budget)
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
