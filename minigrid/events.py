"""What a :class:`~minigrid.session.GridSession` tells its driver (sans-IO).

:meth:`GridSession.receive_frame`, :meth:`GridSession.tick` and :meth:`GridSession.close`
return a list of these, in order. A driver acts on each one: resolve a waiting call, start or
stop a handler, wake whoever waits on a stream, end the session. The session has already done
all of the protocol's own work (replies, acknowledgements, credit, cancels) by then.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import CallError
from .liveness import Cause

if TYPE_CHECKING:
    from .records import Mux, ServerCall


@dataclass(slots=True)
class CallResult:
    """Our call ``mux_id`` was answered with ``payload``."""

    mux_id: int
    payload: bytes


@dataclass(slots=True)
class CallFailed:
    """Our call ``mux_id`` ended without a result: RemoteError, DeadlineExceeded or
    Disconnected."""

    mux_id: int
    error: CallError


@dataclass(slots=True)
class CallReceived:
    """The peer called a handler here: run ``call.handler`` on ``call.payload`` and answer
    with :meth:`GridSession.reply`, then :meth:`GridSession.finish_call`."""

    call: ServerCall


@dataclass(slots=True)
class StreamReceived:
    """The peer opened a stream here (already acknowledged): run ``mux.handler``."""

    mux: Mux


@dataclass(slots=True)
class StopHandler:
    """Cancel the handler running ``work``: the caller left, its deadline passed (see the
    work's state), the stream broke, or the session ended."""

    work: ServerCall | Mux


@dataclass(slots=True)
class StreamChanged:
    """Something a stream end may wait on changed: an item, credit, the acknowledgement, or
    its end. Wake its waiters; they ask the session again."""

    mux: Mux


@dataclass(slots=True)
class PeerStalled:
    """A pong said the peer's loop stalled ``seconds`` (at least half the disconnect window)
    not long ago: an earlier disconnect may have been that, not the network."""

    seconds: float


@dataclass(slots=True)
class SessionEnded:
    """The session is over and everything in it has been failed (the events before this one
    say what). Close the socket."""

    cause: Cause


Event = (
    CallResult
    | CallFailed
    | CallReceived
    | StreamReceived
    | StopHandler
    | StreamChanged
    | PeerStalled
    | SessionEnded
)
