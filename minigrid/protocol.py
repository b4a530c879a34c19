"""The grid wire protocol, sans-IO: messages, ops, flags, encoding, decoding and caps.

Every message is one msgpack array::

    [mux_id, seq, deadline_ms, handler_id, op, flags, payload(bin)]

A websocket frame holds one message, or one ``MERGED`` message whose payload is many packed
messages back to back. Batching many small messages into one frame is where throughput comes
from: one syscall and one websocket header for dozens of calls.

This module never imports asyncio or aiohttp. Bytes go in, :class:`Message` objects or a
:class:`~minigrid.errors.RemoteProtocolError` come out, and nothing else: whatever a peer sends,
decoding either succeeds or raises a protocol error, within hard caps on every size.

``deadline_ms`` is the time *remaining* when the message was sent, not an absolute instant.
Monotonic clocks of two processes share no epoch and wall clocks jump, so the receiver rebuilds
an absolute deadline on its own monotonic clock (see :mod:`minigrid.deadline`).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

import msgpack
import xxhash

from .errors import LocalProtocolError, PayloadTooLarge, RemoteProtocolError

#: What :func:`encode` takes as a payload.
Buffer: TypeAlias = bytes | bytearray | memoryview

PROTOCOL_VERSION: Final = 2  # 2: the challenge–response handshake (minigrid.handshake)

#: Payloads above this are cut into ``MORE``-flagged fragments (DESIGN §2: chunks ≤ 1 MiB).
CHUNK_SIZE: Final = 1 << 20
#: Hard cap on one message's payload: a chunk plus room for a subroute prefix and a checksum.
MAX_PAYLOAD: Final = CHUNK_SIZE + 4096
#: Hard cap on one websocket frame.
MAX_FRAME_SIZE: Final = 4 * CHUNK_SIZE
#: Hard cap on messages in one websocket frame, counted across every form a frame can take:
#: one ``MERGED`` message, messages packed back to back, or both. The writer merges at most
#: ``GridConfig.merge_max_messages`` (512) per frame, so 4096 leaves room; the cap keeps what
#: one frame can make the reader do (decode, dispatch, reply) bounded.
MAX_MERGED: Final = 4096
#: Hard cap on a payload reassembled from fragments.
MAX_REASSEMBLED: Final = 64 * CHUNK_SIZE
#: Hard cap on the fragments of one payload, the last one included: a payload of
#: ``MAX_REASSEMBLED`` bytes cut into ``CHUNK_SIZE`` chunks needs exactly this many.
MAX_FRAGMENTS: Final = MAX_REASSEMBLED // CHUNK_SIZE
#: Error texts are cut to this many bytes, both the ones a peer sends (error payloads, cancel
#: reasons) and the ones sent to it (a stream's error end is queued past the queue's bound).
MAX_ERROR_TEXT: Final = 8 << 10
#: Largest values of the header fields.
MAX_MUX_ID: Final = (1 << 64) - 1
MAX_SEQ: Final = (1 << 32) - 1
MAX_DEADLINE_MS: Final = (1 << 32) - 1
MAX_HANDLER_ID: Final = (1 << 16) - 1
MAX_SUBROUTE: Final = 255


class Op(enum.IntEnum):
    """What a message means. Values are on the wire: never renumber."""

    CONNECT = 1
    CONNECT_RESPONSE = 2
    PING = 3
    PONG = 4
    REQUEST = 5  # single call, client → server
    RESPONSE = 6  # single call, server → client
    CONNECT_MUX = 7  # open a stream, client → server
    ACK_MUX = 8  # stream accepted, server → client
    CLIENT_MSG = 9  # stream request item, client → server
    SERVER_MSG = 10  # stream response item, server → client
    UNBLOCK_CLIENT = 11  # server grants the client credit to send requests
    UNBLOCK_SERVER = 12  # client grants the server credit to send responses
    DISCONNECT_CLIENT_MUX = 13  # server → client: this mux is gone on the server
    DISCONNECT_SERVER_MUX = 14  # client → server: the caller gave up, drop the work
    MUX_CONNECT_ERROR = 15  # server → client: the stream could not be opened
    MERGED = 16  # payload holds several packed messages


class Flags(enum.IntFlag):
    """Per-message flags. Values are on the wire: never renumber."""

    NONE = 0
    EOF = 1  # last message in this direction of the mux
    PAYLOAD_IS_ERR = 2  # payload is a UTF-8 error message
    PAYLOAD_IS_EMPTY = 4  # no payload (distinguishes "nothing" from b"")
    SUBROUTE = 8  # payload starts with a one-byte length and a subroute
    CHECKSUM = 16  # payload ends with 8 bytes of xxh3-64 over the rest
    MORE = 32  # a fragment: more of the same payload follows


#: Ops sent by the side that started the call; the mux id is in the caller's id space.
CLIENT_OPS: Final = frozenset(
    {Op.REQUEST, Op.CONNECT_MUX, Op.CLIENT_MSG, Op.UNBLOCK_SERVER, Op.DISCONNECT_SERVER_MUX}
)
_VALID_OPS: Final = frozenset(int(op) for op in Op)
_ALL_FLAGS: Final = int(
    Flags.EOF
    | Flags.PAYLOAD_IS_ERR
    | Flags.PAYLOAD_IS_EMPTY
    | Flags.SUBROUTE
    | Flags.CHECKSUM
    | Flags.MORE
)
_CHECKSUM_LEN: Final = 8
#: Payloads from this size up are encoded as a msgpack header joined to the payload, in one copy.
JOIN_FROM: Final = 4 << 10
#: Frames from this size up are decoded by hand, each payload a slice of the frame (one copy);
#: smaller ones go through msgpack's C unpacker, faster per message when messages are small.
SLICE_FROM: Final = 64 << 10
_MERGED: Final = int(Op.MERGED)
# Plain ints on the hot path: ``int & IntFlag`` goes through the enum's reflected operator.
_CHECKSUM: Final = int(Flags.CHECKSUM)


@dataclass(slots=True)
class Message:
    """One decoded grid message. ``op`` and ``flags`` are plain ints on the hot path."""

    mux_id: int
    seq: int
    deadline_ms: int
    handler_id: int
    op: int
    flags: int
    payload: bytes

    def __repr__(self) -> str:
        op = Op(self.op).name if self.op in _VALID_OPS else str(self.op)
        return (
            f"Message(op={op} mux={self.mux_id} seq={self.seq} handler={self.handler_id} "
            f"flags={Flags(self.flags & _ALL_FLAGS)!r} payload={len(self.payload)}B)"
        )


_packer = msgpack.Packer(use_bin_type=True, autoreset=True)


def encode(
    op: int,
    *,
    mux_id: int = 0,
    seq: int = 0,
    deadline_ms: int = 0,
    handler_id: int = 0,
    flags: int = 0,
    payload: Buffer = b"",
    checksum: bool = False,
) -> bytes:
    """Encode one message. Raises :class:`LocalProtocolError` for values the wire cannot carry.

    ``payload`` may be any bytes-like object (a memoryview of a bigger payload, for one); it is
    copied exactly once, into the returned message."""
    size = len(payload)
    if checksum:
        size += _CHECKSUM_LEN
        flags |= _CHECKSUM
    if size > MAX_PAYLOAD:
        raise PayloadTooLarge(f"payload of {size} bytes is over the {MAX_PAYLOAD} cap")
    if not (0 <= mux_id <= MAX_MUX_ID and 0 <= seq <= MAX_SEQ):
        raise LocalProtocolError(f"mux id {mux_id} or seq {seq} out of range")
    if not (0 <= deadline_ms <= MAX_DEADLINE_MS and 0 <= handler_id <= MAX_HANDLER_ID):
        raise LocalProtocolError(f"deadline {deadline_ms} or handler {handler_id} out of range")
    if op not in _VALID_OPS or flags & ~_ALL_FLAGS:
        raise LocalProtocolError(f"unknown op {op} or flags {flags:#x}")
    if size < JOIN_FROM:
        # Small: msgpack's C packer beats building the header in Python, and the copy is tiny.
        if checksum:
            payload = bytes(payload) + xxhash.xxh3_64_digest(payload)
        packed: bytes = _packer.pack(
            [mux_id, seq, deadline_ms, handler_id, int(op), int(flags), payload]
        )
        return packed
    # Large: only the header goes through msgpack; the payload is copied once, by the join
    # (packing it would copy it into the packer's growing buffer and then out again).
    # A 6-array of the header fields: its first byte is swapped for the 7-array's.
    header = _packer.pack((mux_id, seq, deadline_ms, handler_id, int(op), int(flags)))
    parts: list[Buffer] = [b"\x97", memoryview(header)[1:], _bin_header(size), payload]
    if checksum:
        parts.append(xxhash.xxh3_64_digest(payload))
    return b"".join(parts)


def _bin_header(length: int) -> bytes:
    if length < 1 << 8:
        return b"\xc4" + length.to_bytes(1, "big")
    if length < 1 << 16:
        return b"\xc5" + length.to_bytes(2, "big")
    return b"\xc6" + length.to_bytes(4, "big")


# [0, 0, 0, 0, MERGED, 0, <bin>]: fixarray of 7, five positive fixints.
_MERGED_PREFIX: Final = bytes([0x97, 0, 0, 0, 0, int(Op.MERGED), 0])


def merge(encoded: list[bytes]) -> bytes:
    """Build one frame from already-encoded messages, copying each byte once."""
    if len(encoded) == 1:
        return encoded[0]
    if len(encoded) > MAX_MERGED:
        raise LocalProtocolError(f"{len(encoded)} messages is over the merge cap {MAX_MERGED}")
    total = sum(map(len, encoded))
    if total > MAX_FRAME_SIZE:
        raise LocalProtocolError(f"merged frame of {total} bytes is over {MAX_FRAME_SIZE}")
    return b"".join([_MERGED_PREFIX, _bin_header(total), *encoded])


_UNPACK_LIMITS: Final[dict[str, Any]] = {
    "raw": False,
    "use_list": True,
    "max_str_len": 0,
    "max_array_len": 7,
    "max_map_len": 0,
    "max_ext_len": 0,
}


def _new_unpacker(max_bin: int, size: int = 64 << 10) -> msgpack.Unpacker:
    # ``read_size`` is the buffer msgpack allocates up front; left alone it would be 1 MiB
    # (its default for a cap this big) for every unpacker, however small the data.
    return msgpack.Unpacker(
        read_size=max(1, min(size, MAX_FRAME_SIZE)),
        max_buffer_size=MAX_FRAME_SIZE + 64,
        max_bin_len=max_bin,
        **_UNPACK_LIMITS,
    )


def _to_message(obj: Any) -> Message:
    """Validate one unpacked object as a message, or raise RemoteProtocolError."""
    if type(obj) is not list or len(obj) != 7:
        raise RemoteProtocolError(f"message is not a 7-element array: {type(obj).__name__}")
    mux_id, seq, deadline_ms, handler_id, op, flags, payload = obj
    if (
        type(mux_id) is not int
        or type(seq) is not int
        or type(deadline_ms) is not int
        or type(handler_id) is not int
        or type(op) is not int
        or type(flags) is not int
    ):
        raise RemoteProtocolError("message header fields must be integers")
    if type(payload) is not bytes:
        raise RemoteProtocolError("message payload must be bin")
    _check_header(mux_id, seq, deadline_ms, handler_id, op, flags)
    if flags & _CHECKSUM:
        if len(payload) < _CHECKSUM_LEN:
            raise RemoteProtocolError("checksum flag on a payload too short to carry one")
        body, digest = payload[:-_CHECKSUM_LEN], payload[-_CHECKSUM_LEN:]
        if xxhash.xxh3_64_digest(body) != digest:
            raise RemoteProtocolError("payload checksum mismatch")
        payload = body
        flags &= ~_CHECKSUM
    return Message(mux_id, seq, deadline_ms, handler_id, op, flags, payload)


def _check_header(
    mux_id: int, seq: int, deadline_ms: int, handler_id: int, op: int, flags: int
) -> None:
    if op not in _VALID_OPS:
        raise RemoteProtocolError(f"unknown op {op}")
    if flags & ~_ALL_FLAGS or flags < 0:
        raise RemoteProtocolError(f"unknown flags {flags:#x}")
    if not (
        0 <= mux_id <= MAX_MUX_ID and 0 <= seq <= MAX_SEQ and 0 <= deadline_ms <= MAX_DEADLINE_MS
    ):
        raise RemoteProtocolError("mux id, seq or deadline out of range")
    if not 0 <= handler_id <= MAX_HANDLER_ID:
        raise RemoteProtocolError(f"handler id {handler_id} out of range")


def _expand(obj: Any, out: list[Message], count: int) -> int:
    """Validate one top-level object of a frame and add its message, or the messages merged
    in it, to ``out``. ``count`` is how many messages the frame held before it; returns the
    new count (the cap is checked as each one is unpacked, before it is validated)."""
    count += 1
    if count > MAX_MERGED:
        raise _too_many()
    message = _to_message(obj)
    if message.op != _MERGED:
        if len(message.payload) > MAX_PAYLOAD:
            raise RemoteProtocolError(f"payload of {len(message.payload)} bytes over cap")
        out.append(message)
        return count
    # The MERGED wrapper itself is not a message: its parts are counted instead.
    count -= 1
    payload = message.payload
    inner = _new_unpacker(MAX_PAYLOAD, len(payload))
    inner.feed(payload)
    first = count
    for item in inner:
        count += 1
        if count > MAX_MERGED:
            raise _too_many()
        part = _to_message(item)
        if part.op == _MERGED:
            raise RemoteProtocolError("merged message nested inside a merged message")
        out.append(part)
    if inner.tell() != len(payload):
        raise RemoteProtocolError("merged payload ends inside a message")
    if count == first:
        raise RemoteProtocolError("empty merged message")
    return count


class FrameDecoder:
    """Incremental decoder: feed bytes in any pieces, get whole messages out.

    A frame may be fed one byte at a time. :meth:`end_frame` checks that a websocket frame ended
    on a message boundary. Merged messages are expanded in place. Only
    :class:`RemoteProtocolError` ever escapes. A frame that arrives whole is faster through
    :func:`decode_frame`.
    """

    def __init__(self) -> None:
        self._unpacker = _new_unpacker(MAX_FRAME_SIZE)
        self._fed = 0
        # Offset just past the last complete message; ``Unpacker.tell()`` also counts bytes of
        # a message it has only partly parsed, so it cannot say where a message ended.
        self._boundary = 0
        # Messages in the current frame, top-level and merged alike (checked against
        # MAX_MERGED as each one is unpacked, before it is validated or expanded).
        self._count = 0

    def feed(self, data: bytes) -> list[Message]:
        """Add bytes and return every message they complete, in order."""
        if self._fed - self._boundary + len(data) > MAX_FRAME_SIZE:
            raise RemoteProtocolError(f"frame over the {MAX_FRAME_SIZE}-byte cap")
        out: list[Message] = []
        unpacker = self._unpacker
        try:
            unpacker.feed(data)
            self._fed += len(data)
            for obj in unpacker:
                self._boundary = unpacker.tell()
                self._count = _expand(obj, out, self._count)
        except RemoteProtocolError:
            raise
        except Exception as exc:  # msgpack raises many types on garbage
            raise RemoteProtocolError(f"malformed msgpack: {exc}") from exc
        return out

    def end_frame(self) -> None:
        """Raise if the bytes fed so far end inside a message; then start a new frame."""
        leftover = self._fed - self._boundary
        if leftover:
            raise RemoteProtocolError(f"frame ended inside a message ({leftover} bytes left)")
        self._count = 0


def _too_many() -> RemoteProtocolError:
    return RemoteProtocolError(f"frame holds over {MAX_MERGED} messages")


def decode_frame(data: bytes) -> list[Message]:
    """Decode one complete websocket frame.

    A frame under :data:`SLICE_FROM` bytes that is one message (a call, a reply, or a
    ``MERGED`` batch) is one call into msgpack's C unpacker. A bigger one is parsed by hand:
    only the headers are decoded, and each payload is copied once, as a slice of the frame.
    Anything else (messages back to back, or bytes that break the protocol) takes the
    incremental decoder, which also says precisely what is wrong."""
    if len(data) > MAX_FRAME_SIZE:
        raise RemoteProtocolError(f"frame over the {MAX_FRAME_SIZE}-byte cap")
    if len(data) >= SLICE_FROM:
        return decode_sliced(data)
    out: list[Message] = []
    try:
        obj = msgpack.unpackb(data, max_bin_len=MAX_FRAME_SIZE, **_UNPACK_LIMITS)
    except Exception:  # back to back, or malformed: let the careful path sort it out
        decoder = FrameDecoder()
        messages = decoder.feed(data)
        decoder.end_frame()
        return messages
    _expand(obj, out, 0)
    return out


# --------------------------------------------------------------------- decoding by hand

_U8: Final = struct.Struct(">B").unpack_from
_U16: Final = struct.Struct(">H").unpack_from
_U32: Final = struct.Struct(">I").unpack_from
#: msgpack's integer forms past the positive fixints: lead byte -> (width, unpacker).
_INT_FORMS: Final[dict[int, tuple[int, Callable[[bytes, int], tuple[int, ...]]]]] = {
    0xCC: (1, _U8),
    0xCD: (2, _U16),
    0xCE: (4, _U32),
    0xCF: (8, struct.Struct(">Q").unpack_from),
    0xD0: (1, struct.Struct(">b").unpack_from),
    0xD1: (2, struct.Struct(">h").unpack_from),
    0xD2: (4, struct.Struct(">i").unpack_from),
    0xD3: (8, struct.Struct(">q").unpack_from),
}
#: msgpack's bin forms: lead byte -> (width of the length, unpacker).
_BIN_FORMS: Final[dict[int, tuple[int, Callable[[bytes, int], tuple[int, ...]]]]] = {
    0xC4: (1, _U8),
    0xC5: (2, _U16),
    0xC6: (4, _U32),
}
_ARRAY16_OF_7: Final = b"\xdc\x00\x07"
_ARRAY32_OF_7: Final = b"\xdd\x00\x00\x00\x07"


def decode_sliced(data: bytes) -> list[Message]:
    """Decode one complete frame by hand (what :func:`decode_frame` does with a big one):
    headers parsed here, each payload one slice of ``data``. Same messages, same caps and
    the same errors (as :class:`RemoteProtocolError`) as the incremental decoder."""
    if len(data) > MAX_FRAME_SIZE:
        raise RemoteProtocolError(f"frame over the {MAX_FRAME_SIZE}-byte cap")
    out: list[Message] = []
    _slice_messages(data, 0, len(data), out, 0, merged=False)
    return out


def _read_uint(data: bytes, pos: int) -> tuple[int, int]:
    """One msgpack integer at ``pos``: its value and the offset after it."""
    lead = data[pos]
    if lead < 0x80:
        return lead, pos + 1
    form = _INT_FORMS.get(lead)
    if form is None:
        raise RemoteProtocolError("message header fields must be integers")
    width, unpack = form
    return unpack(data, pos + 1)[0], pos + 1 + width


def _read_message(data: bytes, pos: int, end: int) -> tuple[Message, int, int]:
    """The message at ``pos`` (its payload still empty), and where its payload starts and
    ends; it must end by ``end``."""
    try:
        lead = data[pos]
        if lead == 0x97:
            pos += 1
        elif data.startswith(_ARRAY16_OF_7, pos):
            pos += 3
        elif data.startswith(_ARRAY32_OF_7, pos):
            pos += 5
        else:
            raise RemoteProtocolError(f"message is not a 7-element array (lead byte {lead:#x})")
        mux_id, pos = _read_uint(data, pos)
        seq, pos = _read_uint(data, pos)
        deadline_ms, pos = _read_uint(data, pos)
        handler_id, pos = _read_uint(data, pos)
        op, pos = _read_uint(data, pos)
        flags, pos = _read_uint(data, pos)
        form = _BIN_FORMS.get(data[pos])
        if form is None:
            raise RemoteProtocolError("message payload must be bin")
        width, unpack = form
        size = unpack(data, pos + 1)[0]
    except (IndexError, struct.error) as exc:
        raise RemoteProtocolError("frame ended inside a message") from exc
    start = pos + 1 + width
    stop = start + size
    if stop > end:
        raise RemoteProtocolError("frame ended inside a message")
    _check_header(mux_id, seq, deadline_ms, handler_id, op, flags)
    return Message(mux_id, seq, deadline_ms, handler_id, op, flags, b""), start, stop


def _slice_messages(
    data: bytes, pos: int, end: int, out: list[Message], count: int, *, merged: bool
) -> int:
    """Decode the messages in ``data[pos:end]`` by hand into ``out``; returns the count of
    messages in the frame so far (the same rules as :func:`_expand`)."""
    while pos < end:
        count += 1
        if count > MAX_MERGED:
            raise _too_many()
        message, start, stop = _read_message(data, pos, end)
        pos = stop
        if message.flags & _CHECKSUM:
            if stop - start < _CHECKSUM_LEN:
                raise RemoteProtocolError("checksum flag on a payload too short to carry one")
            stop -= _CHECKSUM_LEN
            if xxhash.xxh3_64_digest(memoryview(data)[start:stop]) != data[stop:pos]:
                raise RemoteProtocolError("payload checksum mismatch")
            message.flags &= ~_CHECKSUM
        if message.op != _MERGED:
            if stop - start > MAX_PAYLOAD:
                raise RemoteProtocolError(f"payload of {stop - start} bytes over cap")
            message.payload = data[start:stop]
            out.append(message)
            continue
        if merged:
            raise RemoteProtocolError("merged message nested inside a merged message")
        first = count = count - 1  # the wrapper is not a message: its parts are counted
        count = _slice_messages(data, start, stop, out, count, merged=True)
        if count == first:
            raise RemoteProtocolError("empty merged message")
    return count


def iter_chunks(payload: bytes, size: int = CHUNK_SIZE) -> Iterator[tuple[Buffer, bool]]:
    """Cut ``payload`` into ``(chunk, more)`` pieces of at most ``size`` bytes. The pieces of
    a payload that needs cutting are memoryviews of it: :func:`encode` copies each once."""
    if len(payload) <= size:
        yield payload, False
        return
    view = memoryview(payload)
    for start in range(0, len(payload), size):
        end = start + size
        yield view[start:end], end < len(payload)


def with_subroute(subroute: str, payload: bytes) -> bytes:
    """Prefix ``payload`` with a subroute (sent with :data:`Flags.SUBROUTE`)."""
    raw = subroute.encode()
    if len(raw) > MAX_SUBROUTE:
        raise LocalProtocolError(f"subroute {subroute!r} is over {MAX_SUBROUTE} bytes")
    return bytes([len(raw)]) + raw + payload


def split_subroute(payload: bytes) -> tuple[str, bytes]:
    """Undo :func:`with_subroute`; raises :class:`RemoteProtocolError` on a bad prefix."""
    if not payload:
        raise RemoteProtocolError("subroute flag on an empty payload")
    length = payload[0]
    if len(payload) < 1 + length:
        raise RemoteProtocolError("subroute prefix longer than the payload")
    try:
        subroute = payload[1 : 1 + length].decode()
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError("subroute is not UTF-8") from exc
    return subroute, payload[1 + length :]


def error_text(payload: bytes) -> str:
    """A peer's error payload as text, cut to :data:`MAX_ERROR_TEXT` bytes."""
    if len(payload) > MAX_ERROR_TEXT:
        return payload[:MAX_ERROR_TEXT].decode("utf-8", "replace") + " [cut]"
    return payload.decode("utf-8", "replace")


def pack_obj(obj: Any) -> bytes:
    """msgpack-encode a small control structure."""
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def unpack_map(payload: bytes, what: str) -> dict[str, Any]:
    """Decode a small control map (Connect, pong health, …), or raise RemoteProtocolError."""
    try:
        obj = msgpack.unpackb(
            payload,
            raw=False,
            max_bin_len=4096,
            max_str_len=4096,
            max_array_len=64,
            max_map_len=64,
            max_ext_len=0,
        )
    except Exception as exc:
        raise RemoteProtocolError(f"malformed {what} payload: {exc}") from exc
    if not isinstance(obj, dict) or not all(isinstance(key, str) for key in obj):
        raise RemoteProtocolError(f"{what} payload is not a map with string keys")
    return obj
