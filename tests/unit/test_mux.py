"""``minigrid.mux`` on its own: the credit window, the inbox's order, credit and end rules, and
declared capacities. No session, no sockets, no event loop.

The session-level tests (tests/unit/test_session.py) check the same rules through whole
messages; these pin each object's contract, so a change to one shows up here first. Budget and
reassembly caps are in tests/unit/test_receive_limits.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minigrid.errors import LocalProtocolError, RemoteProtocolError
from minigrid.mux import MAX_CAPACITY, Budget, End, Inbox, Window, check_capacity

# --- Window: the sender's credits ----------------------------------------------------------


def test_a_window_starts_full_and_spends_one_credit_per_item() -> None:
    window = Window(3)
    assert [window.try_spend() for _ in range(4)] == [True, True, True, False]
    assert window.credits == 0
    assert not window.try_spend()  # at zero it stays at zero: the sender waits
    assert window.credits == 0


def test_a_window_may_start_with_fewer_credits_than_its_capacity() -> None:
    window = Window(4, credits=1)
    assert window.try_spend()
    assert not window.try_spend()
    window.grant(4)
    assert window.credits == 4


def test_a_grant_gives_credits_back_up_to_the_capacity() -> None:
    window = Window(2)
    window.try_spend()
    window.try_spend()
    window.grant(1)
    assert window.credits == 1
    window.grant(1)
    assert window.credits == 2


@pytest.mark.parametrize(("spent", "count"), [(0, 1), (1, 2), (2, 3), (2, 100)])
def test_a_grant_past_the_capacity_breaks_the_protocol_and_changes_nothing(
    spent: int, count: int
) -> None:
    window = Window(2)
    for _ in range(spent):
        window.try_spend()
    with pytest.raises(RemoteProtocolError, match="would exceed the window"):
        window.grant(count)
    assert window.credits == 2 - spent


@pytest.mark.parametrize("count", [0, -1])
def test_an_empty_or_negative_grant_breaks_the_protocol(count: int) -> None:
    window = Window(2)
    window.try_spend()
    with pytest.raises(RemoteProtocolError):
        window.grant(count)
    assert window.credits == 1


def test_a_window_of_zero_never_sends() -> None:
    window = Window(0)
    assert not window.try_spend()
    with pytest.raises(RemoteProtocolError):
        window.grant(1)


# --- Inbox: order ----------------------------------------------------------------------------


def test_items_come_out_in_the_order_they_went_in() -> None:
    inbox = Inbox(3, "items")
    for seq, item in enumerate([b"a", b"b", b"c"]):
        assert inbox.push(seq, item)
    assert len(inbox) == 3
    assert [inbox.take(), inbox.take(), inbox.take(), inbox.take()] == [b"a", b"b", b"c", None]


@pytest.mark.parametrize("seq", [1, 2, 99, -1])
def test_a_first_message_out_of_order_breaks_the_protocol(seq: int) -> None:
    inbox = Inbox(3, "items")
    with pytest.raises(RemoteProtocolError, match=rf"items: message out of order \(seq {seq}, "
                                                  r"expected 0\)"):  # fmt: skip
        inbox.push(seq, b"x")


def test_a_repeated_sequence_number_breaks_the_protocol() -> None:
    inbox = Inbox(3, "items")
    inbox.push(0, b"x")
    with pytest.raises(RemoteProtocolError, match="seq 0, expected 1"):
        inbox.push(0, b"x")


def test_every_fragment_takes_a_sequence_number() -> None:
    inbox = Inbox(1, "items")
    assert not inbox.push(0, b"ab", more=True)
    assert not inbox.push(1, b"cd", more=True)
    assert inbox.push(2, b"ef")
    assert inbox.take() == b"abcdef"
    with pytest.raises(RemoteProtocolError, match="seq 2, expected 3"):
        inbox.push(2, b"again")


def test_the_end_takes_a_sequence_number_too() -> None:
    inbox = Inbox(1, "items")
    with pytest.raises(RemoteProtocolError, match="seq 1, expected 0"):
        inbox.push_end(1)


# --- Inbox: credit ---------------------------------------------------------------------------


def test_the_inbox_refuses_an_item_past_the_credit_it_granted() -> None:
    inbox = Inbox(2, "items")
    inbox.push(0, b"a")
    inbox.push(1, b"b")
    with pytest.raises(RemoteProtocolError, match=r"items: sender exceeded its credit "
                                                  r"\(2 items unread\)"):  # fmt: skip
        inbox.push(2, b"c")


def test_taking_an_item_makes_room_for_one_more_and_only_one() -> None:
    inbox = Inbox(2, "items")
    inbox.push(0, b"a")
    inbox.push(1, b"b")
    assert inbox.take() == b"a"  # the consumer took one: its credit goes back
    assert inbox.push(2, b"c")
    with pytest.raises(RemoteProtocolError, match="exceeded its credit"):
        inbox.push(3, b"d")


def test_the_end_costs_no_credit() -> None:
    inbox = Inbox(1, "items")
    inbox.push(0, b"a")
    inbox.push_end(1)  # the inbox is full of payloads; a sender can always finish
    assert inbox.take() == b"a"
    assert inbox.take() == End()


def test_fragments_of_one_item_cost_one_credit() -> None:
    inbox = Inbox(1, "items")
    for seq in range(5):
        inbox.push(seq, b"x", more=True)
    assert inbox.push(5, b"y")
    assert len(inbox) == 1
    assert inbox.take() == b"xxxxxy"


# --- Inbox: the end --------------------------------------------------------------------------


def test_the_end_stays_in_place_for_every_later_take() -> None:
    inbox = Inbox(2, "items")
    inbox.push(0, b"a")
    inbox.push_end(1, "it broke")
    assert inbox.ended
    assert inbox.take() == b"a"
    assert inbox.take() == End("it broke")
    assert inbox.take() == End("it broke")
    assert len(inbox) == 1


def test_nothing_may_follow_the_end() -> None:
    inbox = Inbox(2, "items")
    inbox.push_end(0)
    with pytest.raises(RemoteProtocolError, match="items: message after end of stream"):
        inbox.push(1, b"late")
    with pytest.raises(RemoteProtocolError, match="message after end of stream"):
        inbox.push_end(2)


def test_an_end_inside_a_fragmented_item_breaks_the_protocol() -> None:
    inbox = Inbox(2, "items")
    inbox.push(0, b"half", more=True)
    with pytest.raises(RemoteProtocolError, match="end of stream inside a fragmented item"):
        inbox.push_end(1)


def test_a_detached_inbox_still_reads_out_what_it_holds() -> None:
    budget = Budget(1 << 20)
    inbox = Inbox(2, "items", budget)
    inbox.push(0, b"a")
    inbox.push_end(1)
    inbox.detach()
    assert budget.held == 0
    assert inbox.take() == b"a"
    assert inbox.take() == End()
    assert budget.held == 0


# --- declared capacities ---------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 1, MAX_CAPACITY])
def test_a_capacity_in_range_is_accepted(value: int) -> None:
    assert check_capacity("out_capacity", value) == value


@pytest.mark.parametrize("value", [-1, MAX_CAPACITY + 1])
def test_a_capacity_out_of_range_is_our_own_mistake(value: int) -> None:
    with pytest.raises(LocalProtocolError, match=f"out_capacity must be between 0 and "
                                                 f"{MAX_CAPACITY}, not {value}"):  # fmt: skip
        check_capacity("out_capacity", value)


# --- credit is never lost or doubled ---------------------------------------------------------


@given(
    capacity=st.integers(min_value=1, max_value=8),
    steps=st.lists(st.sampled_from(["send", "take", "deliver"]), max_size=80),
)
@settings(max_examples=300)
def test_credit_in_flight_plus_credit_held_is_always_the_capacity(
    capacity: int, steps: list[str]
) -> None:
    """A sender's window and a receiver's inbox joined by two in-order wires (items one way,
    grants the other), with sends, takes and deliveries in any order: at every step the
    sender's credits, the items on the wire, the unread items and the grants on the wire add up
    to exactly the capacity, and every item arrives once, in order."""
    window, inbox = Window(capacity), Inbox(capacity, "items")
    items_on_wire: list[bytes] = []
    grants_on_wire = 0
    sent = taken = 0
    seq = 0
    received: list[bytes] = []
    for step in steps:
        if step == "send" and window.try_spend():
            items_on_wire.append(str(sent).encode())
            sent += 1
        elif step == "deliver" and (items_on_wire or grants_on_wire):
            if items_on_wire:
                assert inbox.push(seq, items_on_wire.pop(0))  # never past the credit granted
                seq += 1
            if grants_on_wire:
                window.grant(grants_on_wire)  # never past the window's capacity
                grants_on_wire = 0
        elif step == "take":
            item = inbox.take()
            if isinstance(item, bytes):
                received.append(item)
                taken += 1
                grants_on_wire += 1  # credit goes back when the consumer takes, not on arrival
        in_flight = len(items_on_wire) + len(inbox) + grants_on_wire
        assert window.credits + in_flight == capacity
    assert received == [str(n).encode() for n in range(taken)]
