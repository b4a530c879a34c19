"""The failure detector of a session, on virtual time: a frozen peer is declared down within
``dead_after`` of its last frame, a peer that is slow and says so (or whose pongs come back
late) gets a longer window, and our own pauses are never blamed on the peer."""

from __future__ import annotations

import pytest

from minigrid import protocol
from minigrid.config import GridConfig, profile, scaled
from minigrid.events import Event, SessionEnded
from minigrid.handlers import Registry
from minigrid.liveness import CauseKind, Health, LoopStats, SilenceWindow
from minigrid.protocol import Op
from minigrid.session import GridSession
from minigrid.sim.pair import SessionPair, feed, new_session, sent


def ended(events: list[Event]) -> list[SessionEnded]:
    return [event for event in events if isinstance(event, SessionEnded)]


def run_until(s: GridSession, end: float) -> list[Event]:
    """Tick ``s`` at each of its timers up to ``end``, on time; nothing reaches the peer."""
    events: list[Event] = []
    for _ in range(10_000):
        due = s.next_timer()
        if due > end:
            return events
        events += s.tick(due)
        sent(s)
    raise AssertionError("the session's timer does not move on")


def pong(*, lag: float = 0.0, sent_at: float | None = None) -> bytes:
    """A connection pong reporting a loop lag of ``lag`` (echoing our ping of ``sent_at``)."""
    body = Health(lag, 0, 0, 0, 0.0).to_wire()
    if sent_at is not None:
        body["t"] = sent_at
    return protocol.encode(Op.PONG, payload=protocol.pack_obj(body))


def test_a_frozen_peer_that_was_healthy_is_declared_down_after_dead_after() -> None:
    pair = SessionPair(Registry(), Registry())
    pair.pump()
    pair.advance(30.0)  # pings and pongs both ways, on time: no evidence of slowness
    a = pair.a.session
    assert a.silence_window == a.config.dead_after
    frozen_at = pair.now  # b stops: nothing more leaves it, nothing it is sent is read
    last_heard = a.last_seen
    events = run_until(a, frozen_at + a.config.dead_after_max)
    (end,) = ended(events)
    assert end.cause.kind is CauseKind.NETWORK_SILENT
    assert a.closed
    # Declared at exactly the window after the last frame: within 2 s of the freeze.
    assert a.last_seen == last_heard
    assert a.config.dead_after <= 2.0 - a.config.ping_interval / 2
    assert "window 1.75s" in end.cause.detail


@pytest.mark.parametrize("evidence", ["reported lag", "late pongs"])
def test_a_busy_peer_that_shows_it_is_slow_is_not_declared_down(evidence: str) -> None:
    """Its frames come 1.9 s apart, longer than ``dead_after``, but each pong says its loop
    is 0.9 s late (or answers a ping 0.9 s old): the window stretches, nobody is accused."""
    s = new_session(Registry())
    gap, slow = 1.9, 0.9
    assert gap > s.config.dead_after
    now = 1.0
    for _ in range(40):
        message = pong(lag=slow) if evidence == "reported lag" else pong(sent_at=now - slow)
        assert ended(feed(s, [message], now=now)) == []
        assert s.silence_window >= s.config.dead_after + 2 * slow
        assert ended(run_until(s, now + gap)) == [], now
        now += gap
    assert not s.closed


def test_the_same_gaps_from_a_peer_that_looked_healthy_end_the_session() -> None:
    """The control for the test above: without the evidence, the first long gap is fatal."""
    s = new_session(Registry())
    feed(s, [pong(lag=0.0, sent_at=0.0)], now=0.0)
    assert s.silence_window == s.config.dead_after
    (end,) = ended(run_until(s, 1.9))
    assert end.cause.kind is CauseKind.NETWORK_SILENT


def test_long_gaps_that_still_came_stretch_the_window_and_are_forgotten() -> None:
    s = new_session(Registry())
    feed(s, [pong()], now=0.0)
    feed(s, [pong()], now=1.0)  # 0.75 s longer than a ping interval, but it came
    stretched = s.silence_window
    assert stretched == pytest.approx(s.config.dead_after + 2 * 0.75)
    now = 1.0
    while now < 1.0 + s.config.evidence_memory:  # on time from then on
        now += s.config.ping_interval
        feed(s, [pong()], now=now)
        run_until(s, now)
    assert s.silence_window == s.config.dead_after


def test_our_own_pause_is_not_blamed_but_a_peer_still_silent_after_it_is() -> None:
    loop = LoopStats()
    s = new_session(Registry(), loop=loop)
    feed(s, [pong()], now=0.0)
    due = s.next_timer()
    # Our loop was stuck for 1.5 s (more than half the window) and the timer fires late.
    loop.record(due + 1.5, 1.5)
    assert ended(s.tick(due + 1.5)) == []
    assert not s.closed and s.last_seen == due + 1.5  # a fresh window from now
    # The peer really is gone: one whole window of silence after the pause, it is declared.
    (end,) = ended(run_until(s, due + 1.5 + s.config.dead_after))
    assert end.cause.kind is CauseKind.NETWORK_SILENT


def test_the_window_never_passes_its_cap_and_minio_keeps_a_fixed_one() -> None:
    fast = GridConfig()
    window = SilenceWindow(fast.dead_after, fast.dead_after_max, fast.lag_allowance, 30.0, 0.0)
    window.note(0.0, 1e6)  # a peer may claim anything: it buys at most the cap
    assert window.window(0.0) == fast.dead_after_max
    assert window.window(30.0) == fast.dead_after  # forgotten after the memory
    for config in (profile("minio"), scaled(profile("minio"), 0.1)):
        fixed = SilenceWindow(
            config.dead_after, config.dead_after_max, config.lag_allowance, 30.0, 0.0
        )
        fixed.note(0.0, 5.0)
        assert fixed.window(0.0) == config.dead_after


def test_a_busy_peer_gets_no_more_than_the_cap() -> None:
    s = new_session(Registry())
    feed(s, [pong(lag=100.0)], now=0.0)
    assert ended(run_until(s, s.config.dead_after_max - 0.001)) == []
    (end,) = ended(run_until(s, s.config.dead_after_max))
    assert end.cause.kind is CauseKind.REMOTE_STALLED
