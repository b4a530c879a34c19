"""The grid handshake, sans-IO: a mutual challenge–response keyed by the cluster secret.

Bytes go in, bytes or errors come out; this module never touches a socket, asyncio or aiohttp
(:mod:`minigrid.manager` carries the frames over a websocket). Three messages, each one grid
message in its own websocket frame (DESIGN §2 "Handshake")::

    acceptor → dialer   CONNECT           {host, instance, version, nonce: Na}
    dialer → acceptor   CONNECT           {host, instance, version, nonce: Nd, proof: Pd}
    acceptor → dialer   CONNECT_RESPONSE  {accepted: true, proof: Pa}
                     or CONNECT_RESPONSE  {accepted: false, code, reason}

``Pd`` and ``Pa`` are HMAC-SHA256 tags, under a key derived from the cluster secret, over one
transcript: a direction label (``dialer`` or ``acceptor``), the purpose (``dial`` opens a
session, ``poke`` only says "dial me now"), both nonces, both host strings, both instance IDs
and the protocol version, each length-prefixed so no two transcripts encode alike.

Why this is not replayable: the acceptor's nonce is fresh for every connection, so a proof
recorded on one connection is worth nothing on the next; the dialer's nonce does the same for
the acceptor's proof. The direction label keeps a node's own proof from being reflected back
at it, and the purpose keeps a poke's proof from opening a session (and the reverse). The
instance IDs in the transcript make a restart claim ("I am a new instance") as authentic as
the rest. MACs are compared in constant time.

What it does not do: without TLS nothing after the handshake is authenticated or encrypted,
so an attacker on the path can read, change or inject session traffic, or relay a live
handshake between two real nodes (see ``docs/security.md``). TLS (``wss://``, with the dialer
verifying the acceptor's certificate) closes that.

The acceptor sends first, right after the websocket upgrade, so the dialer never says anything
before it has a fresh challenge in hand. The acceptor admits nothing before the dialer's proof
checks out: no session, no state change, and a failed or replayed handshake never touches a
session that is up (``docs/security.md`` "Grid authentication" says why the exchange happens
inside the websocket and how long an unauthenticated peer may hold one).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from . import protocol
from .errors import HandshakeError, HandshakeRejected, LocalProtocolError, RemoteProtocolError
from .protocol import Op

VERSION: Final = protocol.PROTOCOL_VERSION
NONCE_SIZE: Final = 32
PROOF_SIZE: Final = 32
MAX_HOST: Final = 255
MAX_INSTANCE: Final = 64
#: A handshake frame is a few hundred bytes; anything larger is refused before decoding.
MAX_FRAME: Final = 2048
#: How much of a peer's rejection reason we keep (and log).
MAX_REASON: Final = 200
_KEY_CONTEXT: Final = b"minigrid grid handshake v2"
_LABEL: Final = b"minigrid grid proof"
_INSTANCE_CHARS: Final = frozenset(string.ascii_letters + string.digits + "-_")


class Role(enum.Enum):
    """Which side a proof comes from: the direction label inside the MAC."""

    DIALER = "dialer"
    ACCEPTOR = "acceptor"


class Purpose(enum.Enum):
    """What the connection is for: ``DIAL`` opens a session, ``POKE`` asks the peer to dial."""

    DIAL = "dial"
    POKE = "poke"


class Code(enum.StrEnum):
    """Why a handshake failed. A short fixed vocabulary: safe to log and to key logs by."""

    VERSION = "version-mismatch"
    UNKNOWN_HOST = "unknown-host"
    WRONG_SIDE = "wrong-side"
    WRONG_HOST = "wrong-host"
    BAD_PROOF = "bad-proof"
    MALFORMED = "malformed"
    BUSY = "busy"
    CLOSING = "closing"
    TIMEOUT = "timeout"
    TLS = "tls"  # the dialer's TLS handshake or the peer's certificate failed
    UNKNOWN = "unknown"  # a code from a peer that we do not know

    @classmethod
    def parse(cls, value: object) -> Code:
        """The code a peer named, or ``UNKNOWN`` (never the peer's own text)."""
        try:
            return cls(value) if isinstance(value, str) else cls.UNKNOWN
        except ValueError:
            return cls.UNKNOWN


@dataclass(frozen=True, slots=True)
class Hello:
    """What one side's Connect says about it."""

    host: str
    instance: str
    nonce: bytes
    version: int = VERSION

    def to_map(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "instance": self.instance,
            "version": self.version,
            "nonce": self.nonce,
        }


#: ``admit(host)`` returns ``None`` to go on, or the code and reason to refuse that host.
Admit = Callable[[str], "tuple[Code, str] | None"]


def derive_key(secret: str | bytes) -> bytes:
    """The handshake key: never use the raw secret as a MAC key for two different things."""
    raw = secret.encode() if isinstance(secret, str) else secret
    if not raw:
        raise ValueError("the cluster secret must not be empty")
    return hmac.new(raw, _KEY_CONTEXT, hashlib.sha256).digest()


def new_nonce() -> bytes:
    """A fresh random nonce (32 bytes from the OS's CSPRNG)."""
    return secrets.token_bytes(NONCE_SIZE)


def transcript(role: Role, purpose: Purpose, acceptor: Hello, dialer: Hello) -> bytes:
    """The bytes a proof covers, each field length-prefixed."""
    fields = (
        _LABEL,
        role.value.encode(),
        purpose.value.encode(),
        acceptor.nonce,
        dialer.nonce,
        acceptor.host.encode(),
        dialer.host.encode(),
        acceptor.instance.encode(),
        dialer.instance.encode(),
        str(acceptor.version).encode(),
    )
    return b"".join(len(field).to_bytes(4, "big") + field for field in fields)


def make_proof(key: bytes, role: Role, purpose: Purpose, acceptor: Hello, dialer: Hello) -> bytes:
    """``role``'s proof that it holds the key, bound to this one exchange."""
    return hmac.new(key, transcript(role, purpose, acceptor, dialer), hashlib.sha256).digest()


def proof_ok(
    key: bytes, role: Role, purpose: Purpose, acceptor: Hello, dialer: Hello, candidate: object
) -> bool:
    """Whether ``candidate`` is ``role``'s proof for this exchange (constant-time compare)."""
    if not isinstance(candidate, bytes):
        return False
    expected = make_proof(key, role, purpose, acceptor, dialer)
    return hmac.compare_digest(expected, candidate)


def printable(text: object, limit: int = MAX_REASON) -> str:
    """Peer-supplied text made safe for one log line: printable ASCII, cut to ``limit``."""
    raw = text if isinstance(text, str) else repr(text)
    cleaned = "".join(ch if " " <= ch <= "~" else "?" for ch in raw[:limit])
    return cleaned + ("..." if len(raw) > limit else "")


# --- messages ---------------------------------------------------------------------------------


def _frame(op: Op, body: Mapping[str, Any]) -> bytes:
    return protocol.encode(op, payload=protocol.pack_obj(dict(body)))


def _read(frame: bytes, op: Op) -> dict[str, Any]:
    """One handshake message of type ``op``, or HandshakeError(MALFORMED)."""
    if len(frame) > MAX_FRAME:
        raise HandshakeError(Code.MALFORMED, f"{op.name} frame of {len(frame)} bytes is too big")
    try:
        messages = protocol.decode_frame(frame)
        if len(messages) != 1 or messages[0].op != op:
            raise RemoteProtocolError(f"expected one {op.name} message")
        return protocol.unpack_map(messages[0].payload, op.name)
    except RemoteProtocolError as exc:
        raise HandshakeError(Code.MALFORMED, str(exc)) from exc


def parse_hello(body: Mapping[str, Any]) -> Hello:
    """Check a Connect map field by field; the version first, so a mismatch says so."""
    version = body.get("version")
    if type(version) is not int or version != VERSION:
        raise HandshakeError(
            Code.VERSION, f"protocol version mismatch: peer speaks {printable(version, 20)}, "
            f"we speak {VERSION}"
        )  # fmt: skip
    host, instance, nonce = body.get("host"), body.get("instance"), body.get("nonce")
    if not isinstance(host, str) or not 0 < len(host) <= MAX_HOST or not host.isprintable():
        raise HandshakeError(Code.MALFORMED, "Connect carries no valid host")
    if (
        not isinstance(instance, str)
        or not 0 < len(instance) <= MAX_INSTANCE
        or not set(instance) <= _INSTANCE_CHARS
    ):
        raise HandshakeError(Code.MALFORMED, "Connect carries no valid instance ID")
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_SIZE:
        raise HandshakeError(Code.MALFORMED, f"Connect carries no {NONCE_SIZE}-byte nonce")
    return Hello(host, instance, nonce, version)


def reject_frame(code: Code, reason: str) -> bytes:
    """A CONNECT_RESPONSE that refuses the dialer, saying why."""
    return _frame(Op.CONNECT_RESPONSE, {"accepted": False, "code": code.value, "reason": reason})


# --- the two sides ----------------------------------------------------------------------------


class AcceptorHandshake:
    """The accepting side. :meth:`challenge`, then :meth:`receive_connect`, then :meth:`accept`.

    ``admit(host)`` is the caller's policy (is the host a peer, does it dial us); it runs after
    the message is well formed and before the proof is checked."""

    def __init__(
        self,
        key: bytes,
        host: str,
        instance: str,
        purpose: Purpose = Purpose.DIAL,
        *,
        admit: Admit | None = None,
        nonce: bytes | None = None,
    ) -> None:
        self._key = key
        self.purpose = purpose
        self.hello = Hello(host, instance, nonce if nonce is not None else new_nonce())
        self._admit = admit
        self._challenged = False
        #: The host the dialer claimed, once its Connect parsed (not yet verified).
        self.claimed: str | None = None
        #: The dialer's Connect, once its proof has been verified.
        self.peer: Hello | None = None

    def challenge(self) -> bytes:
        """Our Connect: the first frame on the websocket."""
        if self._challenged:
            raise LocalProtocolError("the challenge is sent once per connection")
        self._challenged = True
        return _frame(Op.CONNECT, self.hello.to_map())

    def receive_connect(self, frame: bytes) -> Hello:
        """Check the dialer's Connect and proof; its verified :class:`Hello`, or HandshakeError."""
        if not self._challenged or self.peer is not None:
            raise LocalProtocolError("receive_connect before the challenge, or twice")
        body = _read(frame, Op.CONNECT)
        dialer = parse_hello(body)
        self.claimed = dialer.host
        if dialer.nonce == self.hello.nonce:
            raise HandshakeError(Code.MALFORMED, "the dialer's nonce echoes ours")
        if self._admit is not None:
            refusal = self._admit(dialer.host)
            if refusal is not None:
                raise HandshakeError(*refusal)
        if not proof_ok(self._key, Role.DIALER, self.purpose, self.hello, dialer,
                        body.get("proof")):  # fmt: skip
            raise HandshakeError(
                Code.BAD_PROOF,
                f"bad proof from {printable(dialer.host, 64)} (is the cluster secret the same?)",
            )
        self.peer = dialer
        return dialer

    def accept(self) -> bytes:
        """The CONNECT_RESPONSE that admits the verified dialer and proves us to it."""
        if self.peer is None:
            raise LocalProtocolError("accept before a verified Connect")
        proof = make_proof(self._key, Role.ACCEPTOR, self.purpose, self.hello, self.peer)
        return _frame(Op.CONNECT_RESPONSE, {"accepted": True, "proof": proof})


class DialerHandshake:
    """The dialing side. :meth:`receive_challenge`, send what it returns, then
    :meth:`receive_response`. ``expected`` is the host we meant to reach."""

    def __init__(
        self,
        key: bytes,
        host: str,
        instance: str,
        expected: str,
        purpose: Purpose = Purpose.DIAL,
        *,
        nonce: bytes | None = None,
    ) -> None:
        self._key = key
        self.purpose = purpose
        self.expected = expected
        self.hello = Hello(host, instance, nonce if nonce is not None else new_nonce())
        #: The acceptor's Connect, once it has arrived (verified only after the response).
        self.peer: Hello | None = None
        self.verified = False

    def receive_challenge(self, frame: bytes) -> bytes:
        """Check the acceptor's Connect; our Connect with our proof, to send back."""
        if self.peer is not None:
            raise LocalProtocolError("the challenge arrives once per connection")
        acceptor = parse_hello(_read(frame, Op.CONNECT))
        if acceptor.host != self.expected:
            raise HandshakeError(
                Code.WRONG_HOST,
                f"dialed {self.expected} but the node there says it is "
                f"{printable(acceptor.host, 64)} (check the node list)",
            )
        if acceptor.nonce == self.hello.nonce:
            raise HandshakeError(Code.MALFORMED, "the acceptor's nonce echoes ours")
        self.peer = acceptor
        proof = make_proof(self._key, Role.DIALER, self.purpose, acceptor, self.hello)
        return _frame(Op.CONNECT, {**self.hello.to_map(), "proof": proof})

    def receive_response(self, frame: bytes) -> Hello:
        """The acceptor's verified :class:`Hello`; HandshakeRejected if it refused us,
        HandshakeError if it failed to prove it holds the secret."""
        if self.peer is None or self.verified:
            raise LocalProtocolError("receive_response before the challenge, or twice")
        body = _read(frame, Op.CONNECT_RESPONSE)
        accepted = body.get("accepted")
        if accepted is False:
            raise HandshakeRejected(Code.parse(body.get("code")), printable(body.get("reason")))
        if accepted is not True:
            raise HandshakeError(Code.MALFORMED, "CONNECT_RESPONSE says neither yes nor no")
        if not proof_ok(self._key, Role.ACCEPTOR, self.purpose, self.peer, self.hello,
                        body.get("proof")):  # fmt: skip
            raise HandshakeError(
                Code.BAD_PROOF,
                f"{self.expected} accepted us but failed to prove it holds the cluster secret",
            )
        self.verified = True
        return self.peer


__all__ = [
    "MAX_FRAME",
    "NONCE_SIZE",
    "PROOF_SIZE",
    "VERSION",
    "AcceptorHandshake",
    "Code",
    "DialerHandshake",
    "Hello",
    "Purpose",
    "Role",
    "derive_key",
    "make_proof",
    "new_nonce",
    "parse_hello",
    "printable",
    "proof_ok",
    "reject_frame",
    "transcript",
]
