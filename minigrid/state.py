"""Connection states and their legal transitions, written as data (sans-IO)."""

from __future__ import annotations

import enum
from typing import Final

from .errors import LocalProtocolError


class State(enum.Enum):
    """The state of one peer connection."""

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
