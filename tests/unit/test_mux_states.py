"""The mux and call state tables, as tables: no sockets, no event loop."""

from __future__ import annotations

import pytest

from minigrid.errors import LocalProtocolError, RemoteProtocolError
from minigrid.state import (
    CALL_TRANSITIONS,
    MUX_TRANSITIONS,
    REMOTE_EVENTS,
    CallEvent,
    CallState,
    MuxEvent,
    MuxState,
    Role,
    next_call_state,
    next_mux_state,
)

CASES = [(role, state, event) for role in Role for state in MuxState for event in MuxEvent]


@pytest.mark.parametrize(("role", "state", "event"), CASES)
def test_every_move_is_in_the_table_or_raises_the_right_error(
    role: Role, state: MuxState, event: MuxEvent
) -> None:
    allowed = MUX_TRANSITIONS[role].get(state, {})
    if event in allowed:
        assert next_mux_state(role, state, event) is allowed[event]
        return
    error = RemoteProtocolError if event in REMOTE_EVENTS else LocalProtocolError
    with pytest.raises(error) as info:
        next_mux_state(role, state, event, "GEN")
    # Exactly that class: the peer's fault must never pass for ours, nor the reverse.
    assert type(info.value) is error
    assert str(info.value).startswith("GEN: ")


@pytest.mark.parametrize("role", list(Role))
def test_terminal_states_have_no_moves_and_every_live_state_can_end(role: Role) -> None:
    table = MUX_TRANSITIONS[role]
    for state in MuxState:
        moves = table.get(state, {})
        if state.terminal:
            assert not moves, f"{role.value} {state.value} is terminal but has moves"
        elif moves:
            # Whatever happens, a live mux can always be ended from either side.
            assert moves[MuxEvent.CANCEL] is MuxState.CANCELLED
            assert moves[MuxEvent.ABORT] is MuxState.FAILED


def test_each_role_uses_only_its_own_states() -> None:
    client = set(MUX_TRANSITIONS[Role.CLIENT]) | {
        new for moves in MUX_TRANSITIONS[Role.CLIENT].values() for new in moves.values()
    }
    server = set(MUX_TRANSITIONS[Role.SERVER]) | {
        new for moves in MUX_TRANSITIONS[Role.SERVER].values() for new in moves.values()
    }
    assert MuxState.EXPIRED not in client and MuxState.RECV_CLOSED not in client
    assert MuxState.OPENING not in server and MuxState.SEND_CLOSED not in server


def test_the_server_acknowledges_nothing_and_the_client_is_never_expired() -> None:
    for moves in MUX_TRANSITIONS[Role.SERVER].values():
        assert MuxEvent.ACK not in moves
    for moves in MUX_TRANSITIONS[Role.CLIENT].values():
        assert moves.get(MuxEvent.EXPIRE) in (None, MuxState.CANCELLED)


def test_refusals_say_why_in_words() -> None:
    with pytest.raises(RemoteProtocolError, match="GEN: stream data before the stream was"):
        next_mux_state(Role.CLIENT, MuxState.OPENING, MuxEvent.ITEM_RECEIVED, "GEN")
    with pytest.raises(RemoteProtocolError, match="second ACK_MUX"):
        next_mux_state(Role.CLIENT, MuxState.OPEN, MuxEvent.ACK)
    with pytest.raises(LocalProtocolError, match="send after the sending side closed"):
        next_mux_state(Role.CLIENT, MuxState.SEND_CLOSED, MuxEvent.ITEM_SENT)
    with pytest.raises(RemoteProtocolError, match="message after end of stream"):
        next_mux_state(Role.SERVER, MuxState.RECV_CLOSED, MuxEvent.ITEM_RECEIVED)


@pytest.mark.parametrize("state", list(CallState))
@pytest.mark.parametrize("event", list(CallEvent))
def test_call_moves(state: CallState, event: CallEvent) -> None:
    allowed = CALL_TRANSITIONS[state]
    if event in allowed:
        assert next_call_state(state, event) is allowed[event]
    else:
        with pytest.raises(LocalProtocolError):
            next_call_state(state, event)
    if state in (CallState.DONE, CallState.CANCELLED):
        assert not allowed
    else:
        assert allowed[CallEvent.CANCEL] is CallState.CANCELLED
