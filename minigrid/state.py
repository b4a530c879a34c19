"""Connection, mux and call states and their legal transitions, written as data (sans-IO).

Three small machines, each an enum and a table:

* :class:`State`: one peer connection, across its sessions (websockets).
* :class:`MuxState`: one stream (mux) on a session, as this side sees it. The table is per
  :class:`Role`: the client opened the mux, the server runs its handler.
* :class:`CallState`: a single call the peer has running here.

One function per machine looks the move up and raises for anything not in the table: a
:class:`~minigrid.errors.RemoteProtocolError` when the peer's message caused it (that mux is
refused), a :class:`~minigrid.errors.LocalProtocolError` when our own code asked for it. Terminal
states have no moves out: once a mux has ended, it stays ended.
"""

from __future__ import annotations

import enum
from typing import Final

from .errors import LocalProtocolError, RemoteProtocolError


class State(enum.Enum):
    """The state of one peer connection."""

    __hash__ = object.__hash__  # members are singletons: hash by identity, in C

    UNCONNECTED = "unconnected"  # no websocket; the accepting side waits here for a dial
    CONNECTING = "connecting"  # dialing or handshaking
    CONNECTED = "connected"  # handshake done, calls flow
    ERROR = "error"  # the last websocket failed; the dialer will redial
    SHUTDOWN = "shutdown"  # closed for good


TRANSITIONS: Final[dict[State, frozenset[State]]] = {
    State.UNCONNECTED: frozenset({State.CONNECTING, State.SHUTDOWN}),
    State.CONNECTING: frozenset({State.CONNECTED, State.ERROR, State.SHUTDOWN}),
    State.CONNECTED: frozenset({State.ERROR, State.SHUTDOWN}),
    State.ERROR: frozenset({State.CONNECTING, State.UNCONNECTED, State.SHUTDOWN}),
    State.SHUTDOWN: frozenset(),
}


def check_transition(current: State, new: State) -> None:
    """Raise :class:`LocalProtocolError` unless ``current → new`` is in the table."""
    if new not in TRANSITIONS[current]:
        raise LocalProtocolError(f"illegal connection state change {current.value} → {new.value}")


# ------------------------------------------------------------------------------------ muxes


class Role(enum.Enum):
    """Which end of a mux this side is."""

    __hash__ = object.__hash__  # members are singletons: hash by identity, in C

    CLIENT = "client"  # we opened it (CONNECT_MUX); our mux id space
    SERVER = "server"  # the peer opened it; we run the handler


class MuxState(enum.Enum):
    """One mux, as this side sees it."""

    __hash__ = object.__hash__  # members are singletons: hash by identity, in C

    OPENING = "opening"  # client: CONNECT_MUX sent, no ACK_MUX yet
    OPENING_SEND_CLOSED = "opening-send-closed"  # client: our end sent before the ACK
    OPEN = "open"  # both directions carry items
    SEND_CLOSED = "send-closed"  # client: our end sent; the server's may still come
    RECV_CLOSED = "recv-closed"  # server: the client's end arrived; ours may still go
    EXPIRED = "expired"  # server: the deadline passed; only our error end may go
    CLOSED = "closed"  # ended normally (terminal)
    CANCELLED = "cancelled"  # ended by this side: cancel, deadline, client not seen (terminal)
    FAILED = "failed"  # ended by the peer or the session: cancel, refusal, breach (terminal)

    @property
    def terminal(self) -> bool:
        """True once the mux has ended: it has left its session's table."""
        return self in _TERMINAL


_TERMINAL: Final = frozenset({MuxState.CLOSED, MuxState.CANCELLED, MuxState.FAILED})


class MuxEvent(enum.Enum):
    """What happens to a mux. The first four arrive from the peer."""

    __hash__ = object.__hash__  # members are singletons: hash by identity, in C

    ACK = "ack"  # ACK_MUX
    ITEM_RECEIVED = "item-received"  # CLIENT_MSG / SERVER_MSG without EOF
    END_RECEIVED = "end-received"  # CLIENT_MSG / SERVER_MSG with EOF (normal or error)
    CREDIT_RECEIVED = "credit-received"  # UNBLOCK_CLIENT / UNBLOCK_SERVER
    ITEM_SENT = "item-sent"  # we spent a credit on an item
    END_SENT = "end-sent"  # we sent our EOF (normal or error)
    EXPIRE = "expire"  # the mux's deadline passed
    CANCEL = "cancel"  # this side abandons the mux (and tells the peer)
    ABORT = "abort"  # the peer cancelled or refused it, broke the protocol, or the session ended


#: Events caused by a message from the peer: a move not in the table is the peer's fault.
REMOTE_EVENTS: Final = frozenset(
    {MuxEvent.ACK, MuxEvent.ITEM_RECEIVED, MuxEvent.END_RECEIVED, MuxEvent.CREDIT_RECEIVED}
)

_S, _E = MuxState, MuxEvent
_ENDINGS: Final = {_E.CANCEL: _S.CANCELLED, _E.ABORT: _S.FAILED}

MUX_TRANSITIONS: Final[dict[Role, dict[MuxState, dict[MuxEvent, MuxState]]]] = {
    Role.CLIENT: {
        _S.OPENING: {
            _E.ACK: _S.OPEN,
            _E.END_SENT: _S.OPENING_SEND_CLOSED,
            _E.EXPIRE: _S.CANCELLED,
            **_ENDINGS,
        },
        _S.OPENING_SEND_CLOSED: {_E.ACK: _S.SEND_CLOSED, _E.EXPIRE: _S.CANCELLED, **_ENDINGS},
        _S.OPEN: {
            _E.ITEM_RECEIVED: _S.OPEN,
            _E.CREDIT_RECEIVED: _S.OPEN,
            _E.ITEM_SENT: _S.OPEN,
            _E.END_SENT: _S.SEND_CLOSED,
            _E.END_RECEIVED: _S.CLOSED,  # the server finished: the client's mux is done
            _E.EXPIRE: _S.CANCELLED,
            **_ENDINGS,
        },
        _S.SEND_CLOSED: {
            _E.ITEM_RECEIVED: _S.SEND_CLOSED,
            # Grants for items the server took before our end reached it.
            _E.CREDIT_RECEIVED: _S.SEND_CLOSED,
            _E.END_RECEIVED: _S.CLOSED,
            _E.EXPIRE: _S.CANCELLED,
            **_ENDINGS,
        },
    },
    Role.SERVER: {
        _S.OPEN: {
            _E.ITEM_RECEIVED: _S.OPEN,
            _E.CREDIT_RECEIVED: _S.OPEN,
            _E.ITEM_SENT: _S.OPEN,
            _E.END_RECEIVED: _S.RECV_CLOSED,
            _E.END_SENT: _S.CLOSED,  # the handler finished: the server's mux is done
            _E.EXPIRE: _S.EXPIRED,
            **_ENDINGS,
        },
        _S.RECV_CLOSED: {
            _E.CREDIT_RECEIVED: _S.RECV_CLOSED,
            _E.ITEM_SENT: _S.RECV_CLOSED,
            _E.END_SENT: _S.CLOSED,
            _E.EXPIRE: _S.EXPIRED,
            **_ENDINGS,
        },
        # The handler is being cancelled; what the client sends meanwhile is accepted and
        # dropped with the mux.
        _S.EXPIRED: {
            _E.ITEM_RECEIVED: _S.EXPIRED,
            _E.END_RECEIVED: _S.EXPIRED,
            _E.CREDIT_RECEIVED: _S.EXPIRED,
            _E.END_SENT: _S.CLOSED,
            **_ENDINGS,
        },
    },
}

#: Why a move is refused, for the messages people read.
_WHY: Final[dict[tuple[MuxState, MuxEvent], str]] = {
    (_S.OPENING, _E.ITEM_RECEIVED): "stream data before the stream was acknowledged",
    (_S.OPENING, _E.END_RECEIVED): "stream data before the stream was acknowledged",
    (_S.OPENING, _E.CREDIT_RECEIVED): "credit before the stream was acknowledged",
    (_S.OPENING_SEND_CLOSED, _E.ITEM_RECEIVED): "stream data before the stream was acknowledged",
    (_S.OPENING_SEND_CLOSED, _E.END_RECEIVED): "stream data before the stream was acknowledged",
    (_S.OPENING_SEND_CLOSED, _E.CREDIT_RECEIVED): "credit before the stream was acknowledged",
    (_S.OPEN, _E.ACK): "second ACK_MUX",
    (_S.SEND_CLOSED, _E.ACK): "second ACK_MUX",
    (_S.RECV_CLOSED, _E.ITEM_RECEIVED): "message after end of stream",
    (_S.RECV_CLOSED, _E.END_RECEIVED): "message after end of stream",
    (_S.SEND_CLOSED, _E.ITEM_SENT): "send after the sending side closed",
    (_S.OPENING_SEND_CLOSED, _E.ITEM_SENT): "send after the sending side closed",
}


def next_mux_state(role: Role, state: MuxState, event: MuxEvent, what: str = "mux") -> MuxState:
    """The state after ``event``, or raise: :class:`RemoteProtocolError` for a peer's message
    the table does not allow, :class:`LocalProtocolError` for a local one."""
    moves = MUX_TRANSITIONS[role].get(state)
    if moves is not None:
        new = moves.get(event)
        if new is not None:
            return new
    why = _WHY.get((state, event)) or (f"{event.value} in state {state.value} ({role.value} side)")
    if event in REMOTE_EVENTS:
        raise RemoteProtocolError(f"{what}: {why}")
    raise LocalProtocolError(f"{what}: {why}")


# ------------------------------------------------------------------------------------ calls


class CallState(enum.Enum):
    """A single call the peer has running here."""

    __hash__ = object.__hash__  # members are singletons: hash by identity, in C

    RUNNING = "running"  # the handler runs
    EXPIRED = "expired"  # the deadline passed; the handler is cancelled, its error reply goes
    REPLYING = "replying"  # the reply waits for queue room, charged to the budget
    DONE = "done"  # answered (terminal)
    CANCELLED = "cancelled"  # the caller left or the session ended; nobody wants it (terminal)


class CallEvent(enum.Enum):
    """What happens to a call the peer has running here."""

    __hash__ = object.__hash__  # members are singletons: hash by identity, in C

    EXPIRE = "expire"
    HOLD_REPLY = "hold-reply"  # the reply could not be queued at once
    FINISH = "finish"  # the reply is queued (or was refused); the call leaves the table
    CANCEL = "cancel"


CALL_TRANSITIONS: Final[dict[CallState, dict[CallEvent, CallState]]] = {
    CallState.RUNNING: {
        CallEvent.EXPIRE: CallState.EXPIRED,
        CallEvent.HOLD_REPLY: CallState.REPLYING,
        CallEvent.FINISH: CallState.DONE,
        CallEvent.CANCEL: CallState.CANCELLED,
    },
    CallState.EXPIRED: {
        CallEvent.HOLD_REPLY: CallState.REPLYING,
        CallEvent.FINISH: CallState.DONE,
        CallEvent.CANCEL: CallState.CANCELLED,
    },
    CallState.REPLYING: {CallEvent.FINISH: CallState.DONE, CallEvent.CANCEL: CallState.CANCELLED},
    CallState.DONE: {},
    CallState.CANCELLED: {},
}


def next_call_state(state: CallState, event: CallEvent) -> CallState:
    """The call's state after ``event``; :class:`LocalProtocolError` if the table forbids it."""
    new = CALL_TRANSITIONS[state].get(event)
    if new is None:
        raise LocalProtocolError(f"call: {event.value} in state {state.value}")
    return new
