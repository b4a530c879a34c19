"""The grid session, sans-IO, in h11's style: messages in (whole, merged, byte by byte), events
and messages out. No sockets, no event loop, no sleeps: time is a number we pass in.

* every op in every mux state, for both ends of a stream, against a table written out here;
* credit and cancel rules;
* the stream hazards that hurt MinIO's grid in production (cancel racing EOF, a blocked
  consumer, a full queue at setup, a disconnect mid-setup, a listing cut short), each as a
  deterministic session-level test beside the socket tests in tests/integration;
* single calls, deadlines, liveness and the end of a session.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import pytest

from minigrid import protocol
from minigrid.config import GridConfig
from minigrid.errors import (
    Cancelled,
    DeadlineExceeded,
    Disconnected,
    LocalProtocolError,
    RemoteError,
)
from minigrid.events import (
    CallFailed,
    CallReceived,
    Event,
    PeerStalled,
    SessionEnded,
    StopHandler,
    StreamChanged,
    StreamReceived,
)
from minigrid.handlers import HandlerID, Registry
from minigrid.liveness import Cause, CauseKind, Health, LoopStats
from minigrid.mux import End
from minigrid.protocol import Flags, Op
from minigrid.records import Mux, Outgoing
from minigrid.session import GridSession
from minigrid.sim.pair import How, SessionPair, feed, new_session, sent
from minigrid.state import MuxState, Role
from minigrid.streams import ServerStream

ECHO, SLEEP = HandlerID.TEST_ECHO, HandlerID.TEST_SLEEP
GEN, SINK, DUPLEX = (
    HandlerID.TEST_STREAM_GENERATE,
    HandlerID.TEST_STREAM_SINK,
    HandlerID.TEST_STREAM_ECHO,
)
HOW: list[How] = ["whole", "merged", "bytewise"]
EOF = int(Flags.EOF | Flags.PAYLOAD_IS_EMPTY)
ERR = int(Flags.EOF | Flags.PAYLOAD_IS_ERR)
RESET = Cause(CauseKind.RESET, "closed by peer (code 1006)")
E = TypeVar("E")


async def _reply(payload: bytes) -> bytes:
    return payload  # never awaited here: the session only looks the handler up


async def _serve(stream: ServerStream) -> None:
    return None


def registry() -> Registry:
    reg = Registry()
    reg.add_single(ECHO, _reply)
    reg.add_single(SLEEP, _reply)
    reg.add_stream(GEN, _serve, out_capacity=4)
    reg.add_stream(SINK, _serve, in_capacity=2)
    reg.add_stream(DUPLEX, _serve, in_capacity=2, out_capacity=2)
    return reg


def ack(mux_id: int, in_capacity: int = 2, out_capacity: int = 2) -> bytes:
    payload = protocol.pack_obj({"in": in_capacity, "out": out_capacity})
    return protocol.encode(Op.ACK_MUX, mux_id=mux_id, payload=payload)


def ops(messages: list[protocol.Message]) -> list[str]:
    return [Op(m.op).name for m in messages]


def of_type(events: list[Event], kind: type[E]) -> list[E]:
    return [event for event in events if isinstance(event, kind)]


def live_until(s: GridSession, end: float, step: float = 0.5) -> list[Event]:
    """Run ``s``'s timers up to ``end`` while the peer keeps the connection busy (a stream
    pong for no stream every ``step``: traffic, but no news for any mux)."""
    events: list[Event] = []
    now = 0.0
    while now < end:
        now = min(end, now + step)
        events += feed(s, [protocol.encode(Op.PONG, mux_id=99)], now=now)
        events += run_until(s, now)
    return events


def run_until(s: GridSession, end: float) -> list[Event]:
    """Tick ``s`` at each of its timers up to ``end``, on time."""
    events: list[Event] = []
    for _ in range(10_000):
        due = s.next_timer()
        if due > end:
            return events
        events += s.tick(due)
    raise AssertionError("the session's timer does not move on")


# ------------------------------------------------------------ every op in every mux state


def client_in(state: MuxState) -> tuple[GridSession, Mux]:
    """A session with our stream to DUPLEX in ``state``; in the states that send, one credit
    is spent, so that a grant of one is legal."""
    s = new_session(registry())
    mux, _ = s.streams.open(s.new_mux_id(), DUPLEX, now=0.0)
    if state is MuxState.OPENING_SEND_CLOSED:
        s.streams.end(mux)
    elif state is not MuxState.OPENING:
        feed(s, [ack(mux.mux_id)])
        if state in (MuxState.OPEN, MuxState.SEND_CLOSED):
            assert s.streams.send_item(mux, b"spent") is not None
        if state is MuxState.SEND_CLOSED:
            s.streams.end(mux)
        elif state is MuxState.CLOSED:
            feed(s, [protocol.encode(Op.SERVER_MSG, mux_id=mux.mux_id, flags=EOF)])
        elif state is MuxState.CANCELLED:
            s.streams.cancel(mux)
        elif state is MuxState.FAILED:
            feed(s, [protocol.encode(Op.DISCONNECT_CLIENT_MUX, mux_id=mux.mux_id)])
    sent(s)
    s.take_events()
    assert mux.state is state
    return s, mux


def server_in(state: MuxState) -> tuple[GridSession, Mux]:
    """A session serving the peer's stream 7 to DUPLEX in ``state``, one credit spent."""
    s = new_session(registry())
    opening = protocol.encode(Op.CONNECT_MUX, mux_id=7, handler_id=DUPLEX, deadline_ms=1000)
    (received,) = of_type(feed(s, [opening]), StreamReceived)
    mux = received.mux
    assert s.streams.send_item(mux, b"spent") is not None
    if state is MuxState.RECV_CLOSED:
        feed(s, [protocol.encode(Op.CLIENT_MSG, mux_id=7, flags=EOF)])
    elif state is MuxState.EXPIRED:
        s.tick(1.0)
    elif state is MuxState.CLOSED:
        s.streams.end(mux)
    elif state is MuxState.CANCELLED:
        live_until(s, s.config.stream_timeout)
    elif state is MuxState.FAILED:
        feed(s, [protocol.encode(Op.DISCONNECT_SERVER_MUX, mux_id=7)])
    sent(s)
    s.take_events()
    assert mux.state is state, mux
    return s, mux


def peer_message(role: Role, op: str, mux: Mux) -> bytes:
    """What the peer would send on ``mux`` for ``op``, with the next expected seq."""
    seq = mux.inbox.next_seq if mux.inbox is not None else 0
    client = role is Role.CLIENT
    item = Op.SERVER_MSG if client else Op.CLIENT_MSG
    return {
        "ack": lambda: ack(mux.mux_id),
        "item": lambda: protocol.encode(item, mux_id=mux.mux_id, seq=seq, payload=b"x"),
        "eof": lambda: protocol.encode(item, mux_id=mux.mux_id, seq=seq, flags=EOF),
        "error-end": lambda: protocol.encode(
            item, mux_id=mux.mux_id, seq=seq, flags=ERR, payload=b"boom"
        ),
        "grant": lambda: protocol.encode(
            Op.UNBLOCK_CLIENT if client else Op.UNBLOCK_SERVER, mux_id=mux.mux_id, payload=b"\x01"
        ),
        "cancel": lambda: protocol.encode(
            Op.DISCONNECT_CLIENT_MUX if client else Op.DISCONNECT_SERVER_MUX, mux_id=mux.mux_id
        ),
        "refuse": lambda: protocol.encode(
            Op.MUX_CONNECT_ERROR, mux_id=mux.mux_id, payload=b"no such drive"
        ),
        "pong": lambda: protocol.encode(Op.PONG, mux_id=mux.mux_id),
        "ping": lambda: protocol.encode(Op.PING, mux_id=mux.mux_id),
        "connect": lambda: protocol.encode(Op.CONNECT_MUX, mux_id=mux.mux_id, handler_id=DUPLEX),
    }[op]()


# What happens, by state and op: a new state, "breach" (the mux fails on both sides as a
# protocol error), "ignored" (the mux has left the table: nothing changes, nothing is sent),
# or a named special case. Written out by hand: it is the specification the table must meet.
S = MuxState
CLIENT_EXPECTED: dict[MuxState, dict[str, object]] = {
    S.OPENING: {
        "ack": S.OPEN, "item": "breach", "eof": "breach", "error-end": "breach",
        "grant": "breach", "cancel": S.FAILED, "refuse": S.FAILED, "pong": S.OPENING,
    },
    S.OPENING_SEND_CLOSED: {
        "ack": S.SEND_CLOSED, "item": "breach", "eof": "breach", "error-end": "breach",
        "grant": "breach", "cancel": S.FAILED, "refuse": S.FAILED, "pong": S.OPENING_SEND_CLOSED,
    },
    S.OPEN: {
        "ack": "breach", "item": S.OPEN, "eof": S.CLOSED, "error-end": S.CLOSED,
        "grant": S.OPEN, "cancel": S.FAILED, "refuse": S.FAILED, "pong": S.OPEN,
    },
    S.SEND_CLOSED: {
        "ack": "breach", "item": S.SEND_CLOSED, "eof": S.CLOSED, "error-end": S.CLOSED,
        "grant": S.SEND_CLOSED, "cancel": S.FAILED, "refuse": S.FAILED, "pong": S.SEND_CLOSED,
    },
    **{
        state: dict.fromkeys(
            ["ack", "item", "eof", "error-end", "grant", "cancel", "refuse", "pong"], "ignored"
        )
        for state in (S.CLOSED, S.CANCELLED, S.FAILED)
    },
}  # fmt: skip
SERVER_EXPECTED: dict[MuxState, dict[str, object]] = {
    S.OPEN: {
        "item": S.OPEN, "eof": S.RECV_CLOSED, "grant": S.OPEN, "cancel": S.FAILED,
        "ping": "pong", "connect": "already open",
    },
    S.RECV_CLOSED: {
        "item": "breach", "eof": "breach", "grant": S.RECV_CLOSED, "cancel": S.FAILED,
        "ping": "pong", "connect": "already open",
    },
    S.EXPIRED: {
        "item": S.EXPIRED, "eof": S.EXPIRED, "grant": S.EXPIRED, "cancel": S.FAILED,
        "ping": "pong", "connect": "already open",
    },
    **{
        state: {
            "item": "ignored", "eof": "ignored", "grant": "ignored", "cancel": "ignored",
            "ping": "unknown stream", "connect": "new stream",
        }
        for state in (S.CLOSED, S.CANCELLED, S.FAILED)
    },
}  # fmt: skip


def check_outcome(
    role: Role, s: GridSession, mux: Mux, before: MuxState, expected: object, events: list[Event]
) -> None:
    out = sent(s)
    if isinstance(expected, MuxState):
        assert mux.state is expected
        assert s.counters.protocol_errors == 0
        if expected.terminal and not before.terminal:
            assert mux.error is None or isinstance(mux.error, Cancelled | RemoteError)
        return
    if expected == "breach":
        assert mux.state is MuxState.FAILED
        assert s.counters.protocol_errors == 1
        cancel = Op.DISCONNECT_SERVER_MUX if role is Role.CLIENT else Op.DISCONNECT_CLIENT_MUX
        assert ops(out) == [cancel.name]
        assert any(isinstance(e, StreamChanged) and e.mux is mux for e in events)
        if role is Role.SERVER:
            assert any(isinstance(e, StopHandler) and e.work is mux for e in events)
        return
    if expected == "ignored":
        assert mux.state is before
        assert out == [] and events == []
        return
    if expected == "pong":
        assert mux.state is before and ops(out) == ["PONG"]
    elif expected == "unknown stream":
        assert ops(out) == ["DISCONNECT_CLIENT_MUX"]
        assert out[0].payload == b"stream unknown on the server"
    elif expected == "already open":
        assert mux.state is before and ops(out) == ["MUX_CONNECT_ERROR"]
        assert b"already open" in out[0].payload
    elif expected == "new stream":
        (received,) = of_type(events, StreamReceived)
        assert isinstance(received, StreamReceived) and received.mux is not mux
        assert ops(out) == ["ACK_MUX"]
    else:
        raise AssertionError(f"no such expectation {expected!r}")


CLIENT_CASES = [(st, op) for st, row in CLIENT_EXPECTED.items() for op in row]
SERVER_CASES = [(st, op) for st, row in SERVER_EXPECTED.items() for op in row]


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize(("state", "op"), CLIENT_CASES, ids=lambda v: getattr(v, "value", v))
def test_client_mux_every_op_in_every_state(state: MuxState, op: str, how: How) -> None:
    s, mux = client_in(state)
    events = feed(s, [peer_message(Role.CLIENT, op, mux)], how=how)
    check_outcome(Role.CLIENT, s, mux, state, CLIENT_EXPECTED[state][op], events)


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize(("state", "op"), SERVER_CASES, ids=lambda v: getattr(v, "value", v))
def test_server_mux_every_op_in_every_state(state: MuxState, op: str, how: How) -> None:
    s, mux = server_in(state)
    events = feed(s, [peer_message(Role.SERVER, op, mux)], how=how)
    check_outcome(Role.SERVER, s, mux, state, SERVER_EXPECTED[state][op], events)


@pytest.mark.parametrize("how", HOW)
def test_a_whole_stream_reads_the_same_however_its_bytes_arrive(how: How) -> None:
    s = new_session(registry())
    mux, _ = s.streams.open(s.new_mux_id(), GEN, now=0.0)
    items = [protocol.encode(Op.SERVER_MSG, mux_id=mux.mux_id, seq=i, payload=b"%d" % i)
             for i in range(3)]  # fmt: skip
    end = protocol.encode(Op.SERVER_MSG, mux_id=mux.mux_id, seq=3, flags=EOF)
    events = feed(s, [ack(mux.mux_id, 0, 4), *items, end], how=how)
    assert [type(e) for e in events] == [StreamChanged] * 5
    assert mux.state is MuxState.CLOSED
    got = [s.streams.take_item(mux) for _ in range(4)]
    assert got == [b"0", b"1", b"2", End()]
    assert s.budget.held == 0


def test_a_frame_cut_inside_a_message_ends_the_session() -> None:
    s = new_session(registry())
    ping = protocol.encode(Op.PING, payload=protocol.pack_obj({"t": 1.0}))
    events = s.receive_frame(ping[:-1], 0.0)
    (ended,) = events
    assert isinstance(ended, SessionEnded)
    assert ended.cause.kind is CauseKind.PROTOCOL_ERROR
    assert "frame ended inside a message" in ended.cause.detail


# ------------------------------------------------------------ credit


def opened(kind: int = DUPLEX, capacities: tuple[int, int] = (2, 2)) -> tuple[GridSession, Mux]:
    s = new_session(registry())
    mux, _ = s.streams.open(s.new_mux_id(), kind, now=0.0)
    feed(s, [ack(mux.mux_id, *capacities)])
    sent(s)
    return s, mux


def test_a_sender_spends_one_credit_per_item_and_waits_at_zero() -> None:
    s, mux = opened()
    assert s.streams.send_item(mux, b"1") is not None
    assert s.streams.send_item(mux, b"2") is not None
    assert s.streams.send_item(mux, b"3") is None  # no credit: the caller waits
    events = feed(s, [protocol.encode(Op.UNBLOCK_CLIENT, mux_id=mux.mux_id, payload=b"\x01")])
    assert events == [StreamChanged(mux)]
    assert s.streams.send_item(mux, b"3") is not None


def test_credit_goes_back_when_an_item_is_taken_not_when_it_arrives() -> None:
    s, mux = opened()
    item = protocol.encode(Op.SERVER_MSG, mux_id=mux.mux_id, seq=0, payload=b"a")
    feed(s, [item])
    assert sent(s) == []  # arrived: no credit yet
    assert s.streams.take_item(mux) == b"a"
    (grant,) = sent(s)
    assert (Op(grant.op), grant.mux_id, grant.payload) == (Op.UNBLOCK_SERVER, mux.mux_id, b"\x01")


def test_items_past_the_credit_granted_fail_the_mux() -> None:
    s, mux = opened(capacities=(2, 2))
    items = [
        protocol.encode(Op.SERVER_MSG, mux_id=mux.mux_id, seq=i, payload=b"x") for i in range(3)
    ]
    feed(s, items)
    assert mux.state is MuxState.FAILED
    with pytest.raises(RemoteError, match="exceeded its credit"):
        s.streams.take_item(mux)
    assert ops(sent(s)) == ["DISCONNECT_SERVER_MUX"]


@pytest.mark.parametrize(
    ("payload", "why"),
    [(b"\x02", "exceed the window"), (b"\x00\x00\x00\x00\x01", "credit grant of 5 bytes")],
)
def test_a_grant_past_capacity_or_too_long_fails_the_mux(payload: bytes, why: str) -> None:
    s, mux = opened()
    assert s.streams.send_item(mux, b"1") is not None  # one credit out: one may come back
    feed(s, [protocol.encode(Op.UNBLOCK_CLIENT, mux_id=mux.mux_id, payload=payload)])
    assert mux.state is MuxState.FAILED
    with pytest.raises(RemoteError, match=why):
        s.streams.take_item(mux)


def test_a_handler_without_requests_refuses_sends_and_terminal_messages_cost_no_credit() -> None:
    s, mux = opened(GEN, (0, 4))
    with pytest.raises(LocalProtocolError, match="takes no requests"):
        s.streams.send_item(mux, b"x")
    s.streams.end(mux)  # EOF with no credit at all
    (eof,) = sent(s)
    assert Op(eof.op) is Op.CLIENT_MSG and eof.flags & Flags.EOF
    with pytest.raises(LocalProtocolError, match="send after the sending side closed"):
        s.streams.send_item(mux, b"late")


def test_a_server_item_waiting_for_credit_is_charged_to_the_budget() -> None:
    s, mux = server_in(MuxState.OPEN)
    held = s.budget.held
    cost = s.streams.hold(mux, 1000)
    assert s.budget.held == held + cost > held + 1000
    s.streams.unhold(cost)
    assert s.budget.held == held


# ------------------------------------------------------------ cancel rules


def test_the_client_cancels_once_and_the_server_stops_its_handler() -> None:
    pair = SessionPair(registry(), registry())
    a, b = pair.a.session, pair.b.session
    mux, _ = a.streams.open(a.new_mux_id(), GEN, now=0.0)
    pair.pump()
    (received,) = of_type(pair.b.events, StreamReceived)
    a.streams.cancel(mux)
    a.streams.cancel(mux)  # twice is once
    pair.pump()
    assert mux.state is MuxState.CANCELLED
    with pytest.raises(Cancelled, match="cancelled by the caller"):
        a.streams.take_item(mux)
    assert received.mux.state is MuxState.FAILED
    assert of_type(pair.b.events, StopHandler) == [StopHandler(received.mux)]
    assert a.inflight_streams == b.inflight_streams == 0
    assert a.budget.held == b.budget.held == 0


def test_a_cancel_after_the_server_finished_keeps_the_items_readable() -> None:
    s, mux = opened(GEN, (0, 4))
    item = protocol.encode(Op.SERVER_MSG, mux_id=mux.mux_id, seq=0, payload=b"last")
    feed(s, [item, protocol.encode(Op.SERVER_MSG, mux_id=mux.mux_id, seq=1, flags=EOF)])
    s.streams.cancel(mux)
    assert sent(s) == []  # nothing to cancel: the server is done
    assert s.streams.take_item(mux) == b"last"
    assert s.streams.take_item(mux) == End()


def test_only_the_client_cancels() -> None:
    s, mux = server_in(MuxState.OPEN)
    with pytest.raises(LocalProtocolError, match="only the client"):
        s.streams.cancel(mux)


# ------------------------------------------------------------ the production hazards


def gen_pair(count: int) -> tuple[SessionPair, Mux, Mux]:
    """Our GEN stream on a pair, the server's mux ready to send ``count`` items."""
    pair = SessionPair(registry(), registry())
    a = pair.a.session
    mux, _ = a.streams.open(a.new_mux_id(), GEN, now=0.0)
    pair.pump()
    (received,) = of_type(pair.b.events, StreamReceived)
    return pair, mux, received.mux


@pytest.mark.parametrize("cancel_at", range(12))
def test_hazard_1_a_cancel_racing_the_final_eof_never_looks_complete(cancel_at: int) -> None:
    count = 5
    pair, mux, server = gen_pair(count)
    a, b = pair.a.session, pair.b.session
    steps: list[Callable[[], None]] = []
    for index in range(count):
        steps.append(lambda i=index: send_now(b, server, b"%d" % i))  # type: ignore[misc]
    steps.append(lambda: b.streams.end(server))
    got: list[bytes] = []
    outcome = ""
    for step, action in enumerate(steps + [lambda: None] * 6):
        if step == cancel_at:
            a.streams.cancel(mux)
        action()
        pair.pump()
        while not outcome:
            try:
                item = a.streams.take_item(mux)
            except Cancelled:
                outcome = "cancelled"
                break
            if item is None:
                break
            if isinstance(item, End):
                outcome = "complete"
                break
            got.append(item)
            pair.pump()
    assert outcome in ("complete", "cancelled")
    if outcome == "complete":
        assert got == [b"%d" % i for i in range(count)]


def send_now(s: GridSession, mux: Mux, payload: bytes) -> None:
    """Send if the mux still runs and has credit (a handler would wait otherwise)."""
    if mux.state.terminal:
        return
    outgoing = s.streams.send_item(mux, payload)
    if outgoing is not None:
        assert s.push(outgoing)


def test_hazard_2_a_blocked_consumer_never_blocks_the_cancel_or_the_server_error() -> None:
    pair, mux, server = gen_pair(10)
    b = pair.b.session
    for index in range(4):  # GEN's out capacity: the client reads nothing
        send_now(b, server, b"%d" % index)
    pair.pump()
    assert b.streams.send_item(server, b"blocked") is None  # the handler waits for credit
    b.streams.end(server, "server gave up")  # the error end costs no credit
    pair.pump()
    a = pair.a.session
    assert [a.streams.take_item(mux) for _ in range(4)] == [b"0", b"1", b"2", b"3"]
    with pytest.raises(RemoteError, match="server gave up"):
        a.streams.take_item(mux)

    pair, mux, server = gen_pair(10)
    b = pair.b.session
    for index in range(4):
        send_now(b, server, b"%d" % index)
    pair.pump()
    assert b.streams.send_item(server, b"blocked") is None
    pair.a.session.streams.cancel(mux)
    pair.pump()
    assert of_type(pair.b.events, StopHandler) == [StopHandler(server)]


def test_hazard_3_the_acknowledgement_never_waits_behind_a_full_data_queue() -> None:
    config = GridConfig(max_queue_messages=2)
    s = new_session(registry(), config=config)
    call = protocol.encode(Op.REQUEST, mux_id=1, handler_id=ECHO)
    of_type(feed(s, [call]), CallReceived)
    for index in range(2):  # fill the data queue with our own requests
        s.calls.start(ECHO, b"%d" % index, timeout=5.0, now=0.0)
    _, waiting = s.calls.start(ECHO, b"full", timeout=5.0, now=0.0)
    assert waiting is not None  # the queue is full
    feed(s, [protocol.encode(Op.CONNECT_MUX, mux_id=9, handler_id=GEN)])
    taken = s.next_frame()
    assert taken is not None
    first = protocol.decode_frame(taken[0])
    assert ops(first)[0] == "ACK_MUX"  # control first, ahead of the queued data


@pytest.mark.parametrize("stage", ["queued", "sent", "acknowledged"])
def test_hazard_4_a_disconnect_during_setup_leaves_nothing_behind(stage: str) -> None:
    pair = SessionPair(registry(), registry())
    a, b = pair.a.session, pair.b.session
    mux, _ = a.streams.open(a.new_mux_id(), GEN, now=0.0)
    if stage == "sent":
        taken = a.next_frame()
        assert taken is not None
        pair.b.take(b.receive_frame(taken[0], 0.0))  # the ACK is queued on b, not delivered
    elif stage == "acknowledged":
        pair.pump()
    pair.a.take(a.close(RESET, 0.0))
    pair.b.take(b.close(RESET, 0.0))
    assert of_type(pair.a.events, SessionEnded)
    with pytest.raises(Disconnected):
        a.streams.take_item(mux)
    assert a.inflight_streams == b.inflight_streams == 0
    assert a.budget.held == b.budget.held == 0
    stopped = of_type(pair.b.events, StopHandler)
    assert len(stopped) == len(of_type(pair.b.events, StreamReceived))


def test_hazard_5_a_connection_lost_mid_stream_is_never_a_normal_end() -> None:
    pair, mux, server = gen_pair(10)
    b = pair.b.session
    for index in range(3):
        send_now(b, server, b"%d" % index)
    pair.pump()
    pair.a.session.close(RESET, 0.0)
    with pytest.raises(Disconnected):  # even with three items unread
        pair.a.session.streams.take_item(mux)


def test_an_unread_stream_does_not_hold_up_single_calls() -> None:
    pair, _, server = gen_pair(10)
    a, b = pair.a.session, pair.b.session
    for index in range(4):
        send_now(b, server, b"%d" % index)
    ids = [a.calls.start(ECHO, b"%d" % i, timeout=5.0, now=0.0)[0] for i in range(50)]
    pair.pump()
    for event in of_type(pair.b.events, CallReceived):
        assert b.calls.reply(event.call, event.call.take_payload()) is None
        b.calls.finish(event.call)
    pair.pump()
    assert [pair.a.outcomes[i] for i in ids] == [b"%d" % i for i in range(50)]


# ------------------------------------------------------------ single calls


def test_a_call_ends_exactly_once_with_its_answer() -> None:
    pair = SessionPair(registry(), registry())
    a, b = pair.a.session, pair.b.session
    mux_id, outgoing = a.calls.start(ECHO, b"hi", subroute="", timeout=5.0, now=0.0)
    assert outgoing is None
    pair.pump()
    (received,) = of_type(pair.b.events, CallReceived)
    assert received.call.take_payload() == b"hi" and received.call.payload == b""
    assert b.budget.held > 0
    b.calls.reply(received.call, b"hello")
    b.calls.finish(received.call)
    pair.pump()
    assert pair.a.outcomes == {mux_id: b"hello"}
    assert b.budget.held == 0 and a.inflight_calls == b.inflight_handlers == 0
    pair.advance(10.0)  # its deadline passes: nothing more happens to it
    assert pair.a.outcomes == {mux_id: b"hello"}


def test_a_call_past_its_deadline_fails_and_the_peer_is_told() -> None:
    pair = SessionPair(registry(), registry())
    a = pair.a.session
    mux_id, _ = a.calls.start(SLEEP, b"", timeout=0.3, now=0.0)
    pair.pump()
    (received,) = of_type(pair.b.events, CallReceived)
    pair.advance(0.29)
    assert mux_id not in pair.a.outcomes
    pair.advance(0.02)
    error = pair.a.outcomes[mux_id]
    assert isinstance(error, DeadlineExceeded) and "no answer within 0.300s" in str(error)
    # The peer's deadline (the same 300 ms, on its own clock) stopped the handler too, or
    # the cancel did: either way it is stopped once.
    assert of_type(pair.b.events, StopHandler) == [StopHandler(received.call)]


def test_the_server_keeps_the_deadline_the_call_carried() -> None:
    s = new_session(registry())
    # 0.2 s: not a multiple of the ping interval, so no ping is due at the same instant.
    feed(s, [protocol.encode(Op.REQUEST, mux_id=3, handler_id=SLEEP, deadline_ms=200)])
    assert s.next_timer() == pytest.approx(0.2)
    (stop,) = s.tick(0.2)
    assert isinstance(stop, StopHandler)
    call = stop.work
    assert not isinstance(call, Mux) and call.expired
    assert s.calls.reply(call, b"SLEEP: deadline of 0.200s exceeded", error=True) is None
    s.calls.finish(call)
    (reply,) = sent(s)
    assert reply.flags & Flags.PAYLOAD_IS_ERR and b"deadline" in reply.payload


def test_a_late_answer_after_the_caller_left_is_dropped() -> None:
    s = new_session(registry())
    mux_id, _ = s.calls.start(ECHO, b"", timeout=5.0, now=0.0)
    s.calls.cancel(mux_id)
    # The cancel is control, so it overtakes the request it cancels; the peer ignores it, and
    # drops the late answer, as below.
    assert ops(sent(s)) == ["DISCONNECT_SERVER_MUX", "REQUEST"]
    events = feed(s, [protocol.encode(Op.RESPONSE, mux_id=mux_id, payload=b"late")])
    assert events == []


def test_fragmented_payloads_are_put_back_together_and_unknown_handlers_say_so() -> None:
    pair = SessionPair(registry(), registry())
    a, b = pair.a.session, pair.b.session
    big = bytes(range(256)) * (protocol.CHUNK_SIZE // 256 * 2 + 3)
    _, outgoing = a.calls.start(ECHO, big, timeout=5.0, now=0.0)
    assert outgoing is None
    pair.pump()
    (received,) = of_type(pair.b.events, CallReceived)
    assert received.call.take_payload() == big
    unknown, _ = a.calls.start(999, b"", timeout=5.0, now=0.0)
    pair.pump()
    error = pair.a.outcomes[unknown]
    assert isinstance(error, RemoteError) and "unknown handler" in str(error)
    assert b.counters.protocol_errors == 0


def test_requests_over_the_handler_cap_are_refused_busy_at_once() -> None:
    s = new_session(registry(), config=GridConfig(max_inflight_handlers=2))
    requests = [protocol.encode(Op.REQUEST, mux_id=i, handler_id=ECHO) for i in (1, 2, 3)]
    events = feed(s, requests)
    assert len(of_type(events, CallReceived)) == 2
    (refusal,) = sent(s)
    assert refusal.mux_id == 3 and refusal.payload.startswith(b"busy: 2 calls")
    assert s.counters.refused == 1


# ------------------------------------------------------------ liveness


def test_a_pong_gives_the_round_trip_time_and_the_peer_health() -> None:
    pair = SessionPair(registry(), registry())
    pair.pump()  # the first pings, and their pongs
    pair.advance(1.0)
    rtts = pair.a.session.counters.rtts  # the first ping and one every ping interval since
    assert len(rtts) == 1 + round(1.0 / pair.a.session.config.ping_interval)
    assert set(rtts) == {0.0}  # a virtual wire takes no time
    health = pair.a.session.peer_health
    assert health is not None
    assert (health.loop_lag, health.calls, health.streams, health.stall) == (0.0, 0, 0, 0.0)


def test_a_silent_peer_is_declared_dead_at_the_window_and_not_before() -> None:
    s = new_session(registry())
    window = s.config.dead_after
    assert of_type(run_until(s, window - 0.001), SessionEnded) == []
    (ended,) = of_type(run_until(s, window), SessionEnded)
    assert ended.cause.kind is CauseKind.NETWORK_SILENT
    assert s.closed and s.next_timer() == float("inf")


def test_any_traffic_is_proof_of_life() -> None:
    s = new_session(registry())
    assert of_type(live_until(s, 30.0, step=s.config.dead_after * 0.9), SessionEnded) == []
    assert not s.closed


def test_a_peer_that_reported_a_lag_is_diagnosed_remote_stalled() -> None:
    s = new_session(registry())
    lagging = Health(2.0, 0, 0, 0, 0.0).to_wire() | {"t": 0.0}
    feed(s, [protocol.encode(Op.PONG, payload=protocol.pack_obj(lagging))])
    # A peer that said its loop is 2 s late gets the longest window, not the floor.
    assert s.silence_window == s.config.dead_after_max
    assert of_type(run_until(s, s.config.dead_after_max - 0.001), SessionEnded) == []
    (ended,) = of_type(run_until(s, s.config.dead_after_max), SessionEnded)
    assert ended.cause.kind is CauseKind.REMOTE_STALLED


def test_our_own_late_timer_is_not_the_peers_fault() -> None:
    s = new_session(registry())
    due = s.next_timer()
    events = s.tick(due + s.config.dead_after)  # the loop was blocked for the whole window
    assert of_type(events, SessionEnded) == []
    assert not s.closed
    assert ops(sent(s)) == ["PING"]  # and it pings at once, to hear from the peer again


def test_a_stall_the_loop_monitor_saw_is_not_the_peers_fault() -> None:
    loop = LoopStats()
    s = new_session(registry(), loop=loop)
    run_until(s, 0.5)  # every timer on time
    loop.record(1.7, 1.2)  # then our loop was stuck from 0.5 s to 1.7 s
    assert of_type(run_until(s, s.config.dead_after), SessionEnded) == []
    assert not s.closed


def test_a_reset_right_after_our_own_stall_is_local_stalled() -> None:
    loop = LoopStats()
    s = new_session(registry(), loop=loop)
    loop.record(3.0, 2.5)
    (ended,) = of_type(s.close(RESET, 3.0), SessionEnded)
    assert ended.cause.kind is CauseKind.LOCAL_STALLED


def test_a_peer_that_does_not_read_is_cut_off() -> None:
    s = new_session(registry(), config=GridConfig(max_queue_messages=1))
    s.calls.start(ECHO, b"1", timeout=60.0, now=0.0)
    _, blocked = s.calls.start(ECHO, b"2", timeout=60.0, now=0.5)
    assert blocked is not None
    # The peer keeps sending (every ping interval: no evidence of slowness to stretch the
    # window), but nothing we queue leaves: cut off one window after the queue filled.
    step, cut = s.config.ping_interval, 0.5 + s.config.dead_after
    assert of_type(live_until(s, cut - 0.01, step), SessionEnded) == []
    (ended,) = of_type(live_until(s, cut, step), SessionEnded)
    assert ended.cause.kind is CauseKind.PEER_NOT_READING


def test_an_overflowing_control_queue_is_a_peer_that_does_not_read() -> None:
    s = new_session(registry(), config=GridConfig(max_control_messages=4, max_queue_messages=2))
    # 7 replies owed for streams the node does not know: they go behind the data (2 fit),
    # then into the control queue (4 fit); the 7th is one too many.
    pings = [protocol.encode(Op.PING, mux_id=100 + i) for i in range(7)]
    (ended,) = of_type(feed(s, pings), SessionEnded)
    assert ended.cause.kind is CauseKind.PEER_NOT_READING


def test_a_stream_ping_just_after_the_end_is_answered_behind_the_eof() -> None:
    """The client's stream ping crossed the server's EOF: the answer "unknown stream" must not
    overtake the EOF still queued, or the client fails a stream that finished."""
    s, mux = server_in(MuxState.RECV_CLOSED)
    s.streams.end(mux)  # the server's EOF waits in the data queue
    assert mux.state is MuxState.CLOSED
    feed(s, [protocol.encode(Op.PING, mux_id=7)])
    ops = [Op(m.op) for m in sent(s) if m.mux_id == 7]
    assert ops == [Op.SERVER_MSG, Op.DISCONNECT_CLIENT_MUX], ops


def test_a_pong_reporting_a_long_stall_is_passed_on_once() -> None:
    s = new_session(registry())
    stalled = Health(0.0, 0, 0, 0, 9.5).to_wire() | {"t": 0.0}
    pong = protocol.encode(Op.PONG, payload=protocol.pack_obj(stalled))
    assert feed(s, [pong]) == [PeerStalled(9.5)]
    assert feed(s, [pong]) == []


def test_a_quiet_client_stream_is_cancelled_and_says_so() -> None:
    s, mux = server_in(MuxState.OPEN)
    events = live_until(s, s.config.stream_timeout)
    assert StopHandler(mux) in events
    assert mux.state is MuxState.CANCELLED
    (cancel,) = [m for m in sent(s) if Op(m.op) is Op.DISCONNECT_CLIENT_MUX]
    assert cancel.payload.startswith(b"server canceled the stream: not seen for")


def test_long_streams_are_pinged_and_a_vanished_server_fails_them() -> None:
    s, mux = opened(GEN, (0, 4))
    live_until(s, s.config.stream_ping_interval)
    assert [m.mux_id for m in sent(s) if Op(m.op) is Op.PING and m.mux_id] == [mux.mux_id]
    live_until(s, s.config.stream_client_timeout)
    assert mux.state is MuxState.FAILED
    with pytest.raises(Disconnected, match="stopped answering"):
        s.streams.take_item(mux)


# ------------------------------------------------------------ the end of a session


@dataclass
class Busy:
    session: GridSession
    calls: list[int]
    ours: Mux
    theirs: Mux


def busy() -> Busy:
    s = new_session(registry())
    calls = [s.calls.start(ECHO, b"%d" % i, timeout=5.0, now=0.0)[0] for i in range(3)]
    ours, _ = s.streams.open(s.new_mux_id(), GEN, now=0.0)
    feed(s, [protocol.encode(Op.REQUEST, mux_id=50, handler_id=SLEEP)])
    (received,) = of_type(
        feed(s, [protocol.encode(Op.CONNECT_MUX, mux_id=51, handler_id=DUPLEX)]), StreamReceived
    )
    return Busy(s, calls, ours, received.mux)


def test_the_end_of_a_session_fails_everything_in_it_once() -> None:
    state = busy()
    s = state.session
    events = s.close(RESET, 1.0)
    failed = of_type(events, CallFailed)
    assert {e.mux_id for e in failed} == set(state.calls)
    assert all(isinstance(e.error, Disconnected) for e in failed)
    stopped = [e.work for e in of_type(events, StopHandler)]
    assert len(stopped) == 2 and state.theirs in stopped
    assert isinstance(events[-1], SessionEnded)
    assert s.close(Cause(CauseKind.SHUTDOWN), 2.0) == []  # once
    assert s.inflight_calls == s.inflight_handlers == s.inflight_streams == 0
    assert s.budget.held == 0 and not s.has_output
    with pytest.raises(Disconnected, match="closed by peer"):
        s.calls.start(ECHO, b"", timeout=1.0, now=2.0)
    with pytest.raises(Disconnected):
        s.push(Outgoing(b"x"))
    assert s.receive_frame(protocol.encode(Op.PING), 2.0) == []
