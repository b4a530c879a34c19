"""The grid's exception hierarchy, grouped by what the caller can do about it.

``GridError``
├── ``ProtocolError``            the bytes on the wire broke the protocol
│   ├── ``RemoteProtocolError``  the peer sent something invalid (close that connection / mux)
│   │   └── ``LimitExceeded``    the peer sent more than a receive limit allows (refuse that mux)
│   └── ``LocalProtocolError``   we were asked to do something the protocol forbids (misuse)
├── ``CallError``                a call did not produce a result
│   ├── ``RemoteError``          the handler ran and said no (its message is kept)
│   ├── ``Disconnected``         the connection is down or went down mid-call
│   ├── ``DeadlineExceeded``     the call's deadline passed
│   └── ``Cancelled``            the far side cancelled the stream
└── ``HandshakeError``           a handshake failed (``code`` says why, ``reason`` in words)
    └── ``HandshakeRejected``    the peer refused our Connect (wrong secret, unknown host, version)

Only ``ProtocolError`` subclasses ever leave the decoder, whatever a peer sends.
"""

from __future__ import annotations


class GridError(Exception):
    """Base class of every error the grid raises."""


class ProtocolError(GridError):
    """The protocol was broken."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that break the protocol."""


class LimitExceeded(RemoteProtocolError):
    """The peer sent more than a receive limit allows; only the message or mux that went over
    is refused (see ``docs/security.md``, "Grid receive limits")."""


class LocalProtocolError(ProtocolError):
    """This side tried to do something the protocol does not allow."""


class PayloadTooLarge(LocalProtocolError):
    """A payload is over the hard cap."""


class CallError(GridError):
    """A call (single or stream) ended without a normal result."""


class RemoteError(CallError):
    """The remote handler returned an error. ``str(err)`` is the remote message."""

    def __init__(self, message: str, *, handler: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.handler = handler


class Disconnected(CallError):
    """The connection to the peer is not up, or went down before the call finished."""

    def __init__(self, message: str = "disconnected", *, cause: str = "") -> None:
        super().__init__(message)
        self.cause = cause


class DeadlineExceeded(CallError, TimeoutError):
    """The call's deadline passed before a result arrived."""


class Cancelled(CallError):
    """The other side cancelled the stream."""


class HandshakeError(GridError):
    """A handshake failed. ``code`` is one of :class:`minigrid.handshake.Code` (a fixed
    vocabulary, safe to log and key logs by); ``reason`` says it for people."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class HandshakeRejected(HandshakeError):
    """The peer refused our Connect; ``code`` and ``reason`` are what it said."""
