"""The wire protocol, byte by byte: round trips, merging, caps and hostile input."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minigrid import protocol
from minigrid.errors import LocalProtocolError, PayloadTooLarge, RemoteProtocolError
from minigrid.protocol import Flags, FrameDecoder, Message, Op

ALL_FLAGS = [Flags.EOF, Flags.PAYLOAD_IS_ERR, Flags.PAYLOAD_IS_EMPTY, Flags.SUBROUTE, Flags.MORE]


def roundtrip(data: bytes) -> list[Message]:
    return protocol.decode_frame(data)


@pytest.mark.parametrize("op", [op for op in Op if op is not Op.MERGED])
def test_every_op_round_trips(op: Op) -> None:
    data = protocol.encode(
        op,
        mux_id=2**40 + 7,
        seq=9,
        deadline_ms=1500,
        handler_id=200,
        flags=Flags.EOF | Flags.SUBROUTE,
        payload=b"\x00payload\xff",
    )
    [message] = roundtrip(data)
    assert message == Message(
        2**40 + 7, 9, 1500, 200, int(op), int(Flags.EOF | Flags.SUBROUTE), b"\x00payload\xff"
    )


def test_checksum_is_verified_and_stripped() -> None:
    data = protocol.encode(Op.REQUEST, payload=b"abc", checksum=True)
    [message] = roundtrip(data)
    assert message.payload == b"abc"
    assert not message.flags & Flags.CHECKSUM
    corrupted = bytearray(data)
    corrupted[-9] ^= 0x01  # a payload byte, before the 8-byte digest
    with pytest.raises(RemoteProtocolError, match="checksum"):
        roundtrip(bytes(corrupted))


def test_frame_fed_one_byte_at_a_time() -> None:
    frame = protocol.merge(
        [
            protocol.encode(Op.REQUEST, mux_id=1, payload=b"first"),
            protocol.encode(Op.PING, payload=b"\x01" * 300),
            protocol.encode(Op.RESPONSE, mux_id=3, payload=b""),
        ]
    )
    decoder = FrameDecoder()
    out: list[Message] = []
    for index in range(len(frame)):
        got = decoder.feed(frame[index : index + 1])
        if index < len(frame) - 1:
            assert got == []  # a merged message is only complete at its last byte
        out.extend(got)
    decoder.end_frame()
    assert [(m.op, m.mux_id, m.payload) for m in out] == [
        (Op.REQUEST, 1, b"first"),
        (Op.PING, 0, b"\x01" * 300),
        (Op.RESPONSE, 3, b""),
    ]


def test_merged_frames_keep_order_and_single_messages_are_not_wrapped() -> None:
    messages = [protocol.encode(Op.REQUEST, mux_id=i, payload=bytes([i])) for i in range(100)]
    frame = protocol.merge(messages)
    assert frame[5] == Op.MERGED
    assert [m.mux_id for m in roundtrip(frame)] == list(range(100))
    assert protocol.merge(messages[:1]) == messages[0]


def test_truncated_frame_is_a_protocol_error_at_end_of_frame() -> None:
    data = protocol.encode(Op.REQUEST, payload=b"x" * 50)
    decoder = FrameDecoder()
    assert decoder.feed(data[:-1]) == []
    with pytest.raises(RemoteProtocolError, match="inside a message"):
        decoder.end_frame()


def test_truncated_merged_payload_is_rejected() -> None:
    inner = protocol.encode(Op.REQUEST, payload=b"x" * 10)
    bad = msgpack.packb([0, 0, 0, 0, int(Op.MERGED), 0, inner + inner[:-1]], use_bin_type=True)
    with pytest.raises(RemoteProtocolError, match="inside a message"):
        roundtrip(bad)


def test_nested_merged_is_rejected() -> None:
    inner = protocol.merge([protocol.encode(Op.PING), protocol.encode(Op.PING)])
    outer = msgpack.packb([0, 0, 0, 0, int(Op.MERGED), 0, inner], use_bin_type=True)
    with pytest.raises(RemoteProtocolError, match="nested"):
        roundtrip(outer)


def test_unknown_op_and_flags_are_rejected() -> None:
    with pytest.raises(RemoteProtocolError, match="unknown op 99"):
        roundtrip(msgpack.packb([0, 0, 0, 0, 99, 0, b""], use_bin_type=True))
    with pytest.raises(RemoteProtocolError, match="unknown flags"):
        roundtrip(msgpack.packb([0, 0, 0, 0, int(Op.PING), 1 << 12, b""], use_bin_type=True))


@pytest.mark.parametrize(
    "obj",
    [
        [0, 0, 0, 0, int(Op.PING), 0],  # six fields
        [0, 0, 0, 0, int(Op.PING), 0, "text, not bin"],
        [-1, 0, 0, 0, int(Op.PING), 0, b""],
        [0, 0, 0, 2**17, int(Op.PING), 0, b""],
        [0, 0.5, 0, 0, int(Op.PING), 0, b""],
        {"not": "an array"},
        12,
    ],
)
def test_malformed_messages_are_rejected(obj: object) -> None:
    with pytest.raises(RemoteProtocolError):
        roundtrip(msgpack.packb(obj, use_bin_type=True))


def test_oversized_payload_is_rejected_both_ways() -> None:
    with pytest.raises(PayloadTooLarge):
        protocol.encode(Op.REQUEST, payload=b"x" * (protocol.MAX_PAYLOAD + 1))
    huge = msgpack.packb(
        [0, 0, 0, 0, int(Op.REQUEST), 0, b"x" * (protocol.MAX_PAYLOAD + 1)], use_bin_type=True
    )
    with pytest.raises(RemoteProtocolError, match="over cap"):
        roundtrip(huge)


def test_oversized_frame_is_rejected_before_buffering() -> None:
    decoder = FrameDecoder()
    with pytest.raises(RemoteProtocolError, match="cap"):
        decoder.feed(b"\x00" * (protocol.MAX_FRAME_SIZE + 1))


def test_a_huge_declared_length_does_not_allocate() -> None:
    # bin32 header declaring 4 GiB, with no data behind it.
    frame = bytes([0x97, 0, 0, 0, 0, int(Op.REQUEST), 0]) + b"\xc6\xff\xff\xff\xff"
    with pytest.raises(RemoteProtocolError):
        roundtrip(frame)


def test_encode_refuses_values_the_wire_cannot_carry() -> None:
    with pytest.raises(LocalProtocolError):
        protocol.encode(Op.REQUEST, mux_id=-1)
    with pytest.raises(LocalProtocolError):
        protocol.encode(Op.REQUEST, handler_id=2**16)
    with pytest.raises(LocalProtocolError):
        protocol.encode(99)


def test_subroute_round_trip_and_bad_prefixes() -> None:
    assert protocol.split_subroute(protocol.with_subroute("/d2", b"body")) == ("/d2", b"body")
    with pytest.raises(RemoteProtocolError):
        protocol.split_subroute(b"\x09/d")
    with pytest.raises(RemoteProtocolError):
        protocol.split_subroute(b"\x02\xff\xfe")
    with pytest.raises(LocalProtocolError):
        protocol.with_subroute("x" * 300, b"")


def test_chunks_cover_the_payload_exactly() -> None:
    payload = bytes(range(256)) * 10
    chunks = list(protocol.iter_chunks(payload, size=1000))
    assert b"".join(c for c, _ in chunks) == payload
    assert [more for _, more in chunks] == [True, True, False]
    assert list(protocol.iter_chunks(b"", size=10)) == [(b"", False)]


messages = st.builds(
    lambda op, mux, seq, dl, handler, flags, payload: (op, mux, seq, dl, handler, flags, payload),
    st.sampled_from([op for op in Op if op is not Op.MERGED]),
    st.integers(0, protocol.MAX_MUX_ID),
    st.integers(0, protocol.MAX_SEQ),
    st.integers(0, protocol.MAX_DEADLINE_MS),
    st.integers(0, protocol.MAX_HANDLER_ID),
    st.lists(st.sampled_from(ALL_FLAGS), max_size=3),
    st.binary(max_size=200),
)


@given(st.lists(messages, min_size=1, max_size=20), st.data())
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_any_messages_round_trip_in_any_split(batch: list[tuple], data: st.DataObject) -> None:
    encoded = []
    for op, mux, seq, dl, handler, flags, payload in batch:
        bits = 0
        for flag in flags:
            bits |= flag
        encoded.append(
            protocol.encode(
                op,
                mux_id=mux,
                seq=seq,
                deadline_ms=dl,
                handler_id=handler,
                flags=bits,
                payload=payload,
            )
        )
    frame = protocol.merge(encoded)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(frame)), max_size=8)))
    decoder = FrameDecoder()
    out: list[Message] = []
    for start, end in zip([0, *cuts], [*cuts, len(frame)], strict=True):
        out.extend(decoder.feed(frame[start:end]))
    decoder.end_frame()
    assert [(m.op, m.mux_id, m.seq, m.payload) for m in out] == [
        (op, mux, seq, payload) for op, mux, seq, _, _, _, payload in batch
    ]


@given(st.binary(max_size=2048))
@settings(max_examples=500)
def test_garbage_raises_only_protocol_errors(data: bytes) -> None:
    try:
        decoder = FrameDecoder()
        decoder.feed(data)
        decoder.end_frame()
    except RemoteProtocolError:
        pass


@given(st.data())
@settings(max_examples=300)
def test_mutated_valid_frames_raise_only_protocol_errors(data: st.DataObject) -> None:
    frame = bytearray(
        protocol.merge(
            [
                protocol.encode(Op.REQUEST, mux_id=5, payload=b"hello world", checksum=True),
                protocol.encode(
                    Op.CONNECT_MUX, mux_id=6, flags=Flags.SUBROUTE, payload=b"\x03/d1x"
                ),
            ]
        )
    )
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(frame) - 1))
        frame[index] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(frame)))
    with contextlib.suppress(RemoteProtocolError):
        protocol.decode_frame(bytes(frame[:cut]))


def test_control_payload_maps_are_validated() -> None:
    assert protocol.unpack_map(protocol.pack_obj({"a": 1}), "Connect") == {"a": 1}
    for bad in (b"\xc1", protocol.pack_obj([1, 2]), protocol.pack_obj({1: 2})):
        with pytest.raises(RemoteProtocolError):
            protocol.unpack_map(bad, "Connect")


# ------------------------------------------------------------ the one-copy paths (issue 17)


def _outcome(
    decode: object, frame: bytes
) -> list[tuple[int, int, int, int, int, int, bytes]] | str:
    try:
        messages = decode(frame)  # type: ignore[operator]
    except RemoteProtocolError:
        return "error"
    return [
        (m.mux_id, m.seq, m.deadline_ms, m.handler_id, m.op, m.flags, bytes(m.payload))
        for m in messages
    ]


def _incremental(frame: bytes) -> list[Message]:
    decoder = FrameDecoder()
    messages = decoder.feed(frame)
    decoder.end_frame()
    return messages


@pytest.mark.parametrize("checksum", [False, True])
@pytest.mark.parametrize(
    "size", [0, 100, protocol.JOIN_FROM - 9, protocol.JOIN_FROM - 1, protocol.JOIN_FROM, 70_000]
)
def test_encoding_by_join_is_byte_for_byte_msgpack(size: int, checksum: bool) -> None:
    # The wire format did not change: a big payload joined to a hand-made header gives the
    # bytes msgpack gives for the whole array, also from a memoryview of a bigger buffer.
    payload = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    body = payload + (xxhash.xxh3_64_digest(payload) if checksum else b"")
    flags = int(Flags.MORE) | (int(Flags.CHECKSUM) if checksum else 0)
    expected = msgpack.packb([2**33, 7, 65_000, 300, int(Op.SERVER_MSG), flags, body],
                             use_bin_type=True)  # fmt: skip
    fields = {"mux_id": 2**33, "seq": 7, "deadline_ms": 65_000, "handler_id": 300}
    got = protocol.encode(Op.SERVER_MSG, **fields, flags=Flags.MORE, payload=payload,
                          checksum=checksum)  # fmt: skip
    assert got == expected
    view = memoryview(b"head" + payload + b"tail")[4 : 4 + size]
    got = protocol.encode(Op.SERVER_MSG, **fields, flags=Flags.MORE, payload=view,
                          checksum=checksum)  # fmt: skip
    assert got == expected


def test_a_big_frame_is_decoded_by_slicing() -> None:
    big = bytes(range(256)) * 1024  # 256 KiB
    frame = protocol.merge(
        [
            protocol.encode(Op.PONG, payload=b"p"),
            protocol.encode(Op.SERVER_MSG, mux_id=9, seq=3, payload=big, checksum=True),
            protocol.encode(Op.UNBLOCK_CLIENT, mux_id=9, payload=b"\x01"),
        ]
    )
    assert len(frame) >= protocol.SLICE_FROM
    messages = protocol.decode_frame(frame)
    assert [(m.op, m.mux_id, m.seq, m.flags) for m in messages] == [
        (Op.PONG, 0, 0, 0),
        (Op.SERVER_MSG, 9, 3, 0),  # the checksum was verified and its flag taken off
        (Op.UNBLOCK_CLIENT, 9, 0, 0),
    ]
    assert messages[1].payload == big and type(messages[1].payload) is bytes
    assert _outcome(protocol.decode_frame, frame) == _outcome(_incremental, frame)
    corrupted = bytearray(frame)
    corrupted[len(frame) // 2] ^= 0x40  # inside the big payload: its checksum breaks
    with pytest.raises(RemoteProtocolError, match="checksum"):
        protocol.decode_frame(bytes(corrupted))


def test_sliced_decoding_keeps_the_caps() -> None:
    too_big = msgpack.packb(
        [0, 0, 0, 0, int(Op.REQUEST), 0, b"x" * (protocol.MAX_PAYLOAD + 1)], use_bin_type=True
    )
    with pytest.raises(RemoteProtocolError, match="over cap"):
        protocol.decode_frame(too_big)  # over SLICE_FROM: the sliced path
    with pytest.raises(RemoteProtocolError, match="cap"):
        protocol.decode_frame(b"\x97" * (protocol.MAX_FRAME_SIZE + 1))
    pings = [protocol.encode(Op.PING, payload=b"x" * 20)] * (protocol.MAX_MERGED + 1)
    with pytest.raises(RemoteProtocolError, match="over 4096 messages"):
        protocol.decode_sliced(b"".join(pings))
    with pytest.raises(RemoteProtocolError, match="over 4096 messages"):
        protocol.decode_sliced(
            protocol.merge(pings[:2]) + b"".join(pings[: protocol.MAX_MERGED - 1])
        )
    nested = msgpack.packb(
        [0, 0, 0, 0, int(Op.MERGED), 0, protocol.merge(pings[:2])], use_bin_type=True
    )
    with pytest.raises(RemoteProtocolError, match="nested"):
        protocol.decode_sliced(nested)
    empty = msgpack.packb([0, 0, 0, 0, int(Op.MERGED), 0, b""], use_bin_type=True)
    with pytest.raises(RemoteProtocolError, match="empty merged"):
        protocol.decode_sliced(empty)


@given(st.lists(messages, min_size=1, max_size=20), st.booleans())
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_sliced_and_incremental_decoders_agree(batch: list[tuple], merged: bool) -> None:
    encoded = [
        protocol.encode(op, mux_id=mux, seq=seq, deadline_ms=dl, handler_id=handler,
                        flags=sum(set(flags)), payload=payload, checksum=bool(seq % 2))
        for op, mux, seq, dl, handler, flags, payload in batch
    ]  # fmt: skip
    frame = protocol.merge(encoded) if merged else b"".join(encoded)
    assert _outcome(protocol.decode_sliced, frame) == _outcome(_incremental, frame)
    assert _outcome(protocol.decode_frame, frame) == _outcome(_incremental, frame)


@given(st.data())
@settings(max_examples=500)
def test_sliced_decoder_agrees_on_mutated_frames(data: st.DataObject) -> None:
    # Whatever a peer sends, the hand-made parser says exactly what msgpack says: the same
    # messages, or a protocol error (and never any other exception).
    parts = [
        protocol.encode(Op.REQUEST, mux_id=5, payload=b"hello world", checksum=True),
        protocol.encode(Op.CONNECT_MUX, mux_id=300, flags=Flags.SUBROUTE, payload=b"\x03/d1x"),
        protocol.encode(Op.SERVER_MSG, mux_id=2**40, seq=70_000, payload=b"y" * 300),
    ]
    frame = bytearray(protocol.merge(parts) if data.draw(st.booleans()) else b"".join(parts))
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(frame) - 1))
        frame[index] = data.draw(st.integers(0, 255))
    cut = bytes(frame[: data.draw(st.integers(0, len(frame)))])
    assert _outcome(protocol.decode_sliced, cut) == _outcome(_incremental, cut)
