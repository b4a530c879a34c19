"""The wire protocol, byte by byte: round trips, merging, caps and hostile input."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
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
