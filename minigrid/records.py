"""What a session keeps per call and per stream, and the messages of a payload that wait for
room (sans-IO). The records belong to their :class:`~minigrid.session.GridSession`: drivers
read their fields and change them only through the session's methods."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from .state import CallState, MuxState, Role

if TYPE_CHECKING:
    from .errors import CallError
    from .handlers import SingleHandler, StreamHandler
    from .mux import Inbox, Window


class ServerCall:
    """A single call the peer has running here (see :class:`~minigrid.state.CallState`)."""

    __slots__ = ("cost", "handler", "mux_id", "payload", "state", "timeout")

    def __init__(
        self, mux_id: int, handler: SingleHandler, payload: bytes, timeout: float, cost: int
    ) -> None:
        self.mux_id = mux_id
        self.handler = handler
        #: The request payload, until the driver takes it (:meth:`take_payload`).
        self.payload = payload
        #: Seconds the caller gave it (its deadline on our clock is when it arrived + this).
        self.timeout = timeout
        self.state = CallState.RUNNING
        #: What the call holds of the session's budget: its request, later its waiting reply.
        self.cost = cost

    @property
    def expired(self) -> bool:
        """The deadline passed while the handler ran: answer with a deadline error."""
        return self.state is CallState.EXPIRED

    def take_payload(self) -> bytes:
        """The request payload, handed over once (the record does not keep it)."""
        payload, self.payload = self.payload, b""
        return payload

    def __repr__(self) -> str:
        return f"ServerCall({self.handler.name} mux={self.mux_id} {self.state.value})"


class Mux:
    """One stream on a session, as this side sees it (see :class:`~minigrid.state.MuxState`)."""

    __slots__ = (
        "bytes_received",
        "bytes_sent",
        "cost",
        "end_error",
        "error",
        "handler",
        "handler_id",
        "handler_name",
        "inbox",
        "last_ping",
        "last_seen",
        "mux_id",
        "opened_at",
        "payload",
        "request_bytes",
        "role",
        "send_seq",
        "state",
        "subroute",
        "timeout",
        "window",
    )

    def __init__(
        self,
        mux_id: int,
        role: Role,
        handler_id: int,
        handler_name: str,
        state: MuxState,
        now: float,
    ) -> None:
        self.mux_id = mux_id
        self.role = role
        self.handler_id = handler_id
        self.handler_name = handler_name
        self.state = state
        #: Why the mux ended abnormally; every later receive or send raises it.
        self.error: CallError | None = None
        #: Credits we may spend sending (None until the client has the ACK).
        self.window: Window | None = None
        #: What the peer sent that is not taken yet (None until the client has the ACK).
        self.inbox: Inbox | None = None
        self.send_seq = 0
        #: When anything last arrived for this mux, and when we last pinged it (client).
        self.last_seen = now
        self.last_ping = now
        #: What the mux holds of the session's budget beside its inbox (the initial payload).
        self.cost = 0
        #: The subroute it was opened on; server side, the handler and the initial payload.
        self.subroute = ""
        self.handler: StreamHandler | None = None
        self.payload = b""
        #: The deadline it was opened with, in seconds (None: none).
        self.timeout: float | None = None
        #: For call records: when it opened, the initial payload's size, the item bytes each
        #: way, and the error text the far side ended its direction with ("" for a normal end).
        self.opened_at = now
        self.request_bytes = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.end_error = ""

    def __repr__(self) -> str:
        return f"Mux({self.handler_name} {self.role.value} mux={self.mux_id} {self.state.value})"


class Outgoing:
    """The messages of one payload, some of which did not fit in the out-queue yet. Hand it
    back to :meth:`GridSession.push` whenever there is room."""

    __slots__ = ("next", "rest")

    def __init__(self, first: bytes | None, rest: Iterator[bytes] | None = None) -> None:
        #: The next message to queue (None: all queued).
        self.next = first
        self.rest = rest

    @property
    def done(self) -> bool:
        """Every message is queued."""
        return self.next is None and self.rest is None
