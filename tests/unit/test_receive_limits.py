"""The receive limits of the protocol core, byte by byte: no sockets, no event loop.

Frames are capped in messages however they are packed; payloads in fragments and bytes; a
connection's held bytes by one :class:`~minigrid.mux.Budget` that every holder charges and
releases exactly; and every number a ping or pong carries must be finite and in range.
"""

from __future__ import annotations

import math

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minigrid import protocol
from minigrid.errors import LimitExceeded, RemoteProtocolError
from minigrid.liveness import MAX_WIRE_COUNT, MAX_WIRE_SECONDS, Health, wire_number
from minigrid.mux import HELD_OVERHEAD, MAX_ITEM, Budget, End, Fragments, Inbox
from minigrid.protocol import MAX_FRAGMENTS, MAX_MERGED, FrameDecoder, Op

PING = protocol.encode(Op.PING)


def merged(messages: list[bytes]) -> bytes:
    """A MERGED message around ``messages``, built by hand (``merge`` refuses over the cap)."""
    packed: bytes = msgpack.packb(
        [0, 0, 0, 0, int(Op.MERGED), 0, b"".join(messages)], use_bin_type=True
    )
    return packed


# --- messages per frame -----------------------------------------------------------------------


@pytest.mark.parametrize("form", ["back to back", "merged", "both"])
def test_a_frame_holds_at_most_max_merged_messages_however_packed(form: str) -> None:
    def frame(count: int) -> bytes:
        if form == "back to back":
            return PING * count
        if form == "merged":
            return merged([PING] * count)
        return PING * (count // 2) + merged([PING] * (count - count // 2))

    assert len(protocol.decode_frame(frame(MAX_MERGED))) == MAX_MERGED
    with pytest.raises(RemoteProtocolError, match=f"frame holds over {MAX_MERGED} messages"):
        protocol.decode_frame(frame(MAX_MERGED + 1))


def test_the_message_cap_stops_decoding_before_the_rest_of_the_frame() -> None:
    # 466k messages in 4 MiB, then bytes that are not msgpack: the cap is hit first, so the
    # decoder never reads that far (before the cap it decoded all 466k, for seconds).
    frame = PING * ((protocol.MAX_FRAME_SIZE - 1) // len(PING)) + b"\xc1"
    with pytest.raises(RemoteProtocolError, match="over 4096 messages"):
        protocol.decode_frame(frame)


def test_the_message_count_starts_again_with_each_frame() -> None:
    decoder = FrameDecoder()
    for _ in range(3):
        assert len(decoder.feed(PING * MAX_MERGED)) == MAX_MERGED
        decoder.end_frame()


def test_the_merged_wrapper_itself_is_not_counted() -> None:
    assert len(protocol.decode_frame(merged([PING] * MAX_MERGED))) == MAX_MERGED


# --- fragments --------------------------------------------------------------------------------


def test_a_payload_may_have_max_fragments_fragments_and_no_more() -> None:
    budget = Budget(1 << 30)
    partial = Fragments(budget)
    for _ in range(MAX_FRAGMENTS - 1):
        partial.add(b"ab", MAX_ITEM, "request")
    assert partial.finish(b"c", MAX_ITEM, "request") == b"ab" * (MAX_FRAGMENTS - 1) + b"c"
    assert budget.held == 0
    partial = Fragments(budget)
    for _ in range(MAX_FRAGMENTS - 1):
        partial.add(b"", MAX_ITEM, "request")
    with pytest.raises(RemoteProtocolError, match=f"over {MAX_FRAGMENTS} fragments"):
        partial.add(b"", MAX_ITEM, "request")
    partial.release()
    assert budget.held == 0


def test_a_fragmented_payload_is_capped_in_bytes() -> None:
    partial = Fragments(Budget(1 << 30))
    partial.add(b"x" * 60, 100, "request")
    with pytest.raises(RemoteProtocolError, match="over 100 bytes"):
        partial.add(b"x" * 41, 100, "request")
    with pytest.raises(RemoteProtocolError, match="over 100 bytes"):
        partial.finish(b"x" * 41, 100, "request")


def test_every_fragment_held_is_charged_even_an_empty_one() -> None:
    budget = Budget(1 << 30)
    partial = Fragments(budget)
    partial.add(b"", MAX_ITEM, "request")
    partial.add(b"12345", MAX_ITEM, "request")
    assert budget.held == partial.cost == 2 * HELD_OVERHEAD + 5
    partial.release()
    assert budget.held == 0


def test_40k_empty_fragments_are_refused_at_the_cap() -> None:
    """The reported case: reassembly was quadratic and counted only bytes."""
    inbox = Inbox(8, "items", Budget(1 << 30))
    accepted = 0
    with pytest.raises(RemoteProtocolError, match=f"over {MAX_FRAGMENTS} fragments"):
        for seq in range(40_000):
            inbox.push(seq, b"", more=True)
            accepted += 1
    assert accepted == MAX_FRAGMENTS - 1


# --- the budget -------------------------------------------------------------------------------


def test_a_refused_charge_charges_nothing() -> None:
    budget = Budget(1000)
    budget.charge(600, "a")
    with pytest.raises(LimitExceeded, match=r"b: the connection already holds 600 received "
                                            r"bytes \(cap 1000\)"):  # fmt: skip
        budget.charge(401, "b")
    assert budget.held == 600
    budget.charge(400, "c")
    assert budget.held == 1000


def test_unread_items_are_charged_until_taken() -> None:
    budget = Budget(1 << 20)
    inbox = Inbox(4, "items", budget)
    assert inbox.push(0, b"x" * 100)
    assert inbox.push(1, b"")
    assert budget.held == inbox.held == 100 + 2 * HELD_OVERHEAD
    assert inbox.take() == b"x" * 100
    assert budget.held == HELD_OVERHEAD
    assert inbox.take() == b""
    assert budget.held == 0


def test_an_item_over_the_budget_is_refused_and_charges_nothing() -> None:
    budget = Budget(2 * HELD_OVERHEAD + 1000)
    inbox = Inbox(8, "items", budget)
    inbox.push(0, b"x" * 900)
    with pytest.raises(LimitExceeded, match="items: the connection already holds"):
        inbox.push(1, b"x" * 200)
    assert budget.held == 900 + HELD_OVERHEAD


def test_detach_gives_everything_back_and_keeps_the_items_readable() -> None:
    budget = Budget(1 << 20)
    inbox = Inbox(4, "items", budget)
    inbox.push(0, b"first")
    inbox.push(1, b"partial", more=True)
    assert budget.held > 0
    inbox.detach()
    assert budget.held == inbox.held == 0
    assert inbox.take() == b"first"
    assert budget.held == 0  # taking after detach gives back nothing twice


def test_credit_is_checked_at_the_first_fragment_of_an_item() -> None:
    inbox = Inbox(0, "items", Budget(1 << 20))  # a direction that takes no items
    with pytest.raises(RemoteProtocolError, match="exceeded its credit"):
        inbox.push(0, b"x" * 1000, more=True)


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("item"), st.binary(max_size=50)),
            st.tuples(st.just("fragment"), st.binary(max_size=50)),
            st.just(("take", b"")),
            st.just(("end", b"")),
        ),
        max_size=60,
    )
)
@settings(max_examples=300)
def test_the_budget_always_matches_what_the_inbox_holds(steps: list[tuple[str, bytes]]) -> None:
    budget = Budget(4000)
    inbox = Inbox(6, "items", budget)
    seq = 0
    for step, data in steps:
        try:
            if step == "take":
                inbox.take()
            elif step == "end":
                inbox.push_end(seq)
                seq += 1
            else:
                inbox.push(seq, data, more=step == "fragment")
                seq += 1
        except RemoteProtocolError:
            break  # the mux fails here: the connection detaches its inbox
        assert budget.held == inbox.held <= budget.limit
    inbox.detach()
    assert budget.held == 0
    while (item := inbox.take()) is not None and not isinstance(item, End):
        pass
    assert budget.held == 0


# --- numbers in pings and pongs ---------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [math.inf, -math.inf, math.nan, -1, -0.5, MAX_WIRE_SECONDS * 2, 2**63, True, None, "1",
     [1.0], {"a": 1}, b"\x01"],
)  # fmt: skip
def test_a_wire_number_must_be_a_finite_number_in_range(value: object) -> None:
    with pytest.raises(RemoteProtocolError, match="pong field 'lag'"):
        wire_number(value, "pong field 'lag'", MAX_WIRE_SECONDS)


@pytest.mark.parametrize("key", ["lag", "q", "calls", "streams", "stall"])
@pytest.mark.parametrize("value", [math.inf, math.nan, -1, 2**40, 1e300, False, "x"])
def test_health_from_a_pong_refuses_every_bad_field(key: str, value: object) -> None:
    with pytest.raises(RemoteProtocolError, match=f"pong field '{key}'"):
        Health.from_wire({key: value})


def test_health_from_a_good_pong_and_missing_fields() -> None:
    health = Health.from_wire({"lag": 0.25, "q": 3, "calls": 2, "streams": MAX_WIRE_COUNT})
    assert health == Health(0.25, 3, 2, MAX_WIRE_COUNT, 0.0)
    assert Health.from_wire({}) == Health(0.0, 0, 0, 0, 0.0)


def test_error_texts_from_a_peer_are_cut() -> None:
    assert protocol.error_text(b"disk on fire") == "disk on fire"
    long = protocol.error_text(b"x" * (protocol.MAX_ERROR_TEXT + 10))
    assert long == "x" * protocol.MAX_ERROR_TEXT + " [cut]"
