"""Sessions without sockets, for tests: feed one session messages any way they can arrive,
read back what it sends, or wire two sessions together on a hand-turned clock.

* :func:`new_session` builds a :class:`~minigrid.session.GridSession` with its first ping
  already taken off the queue.
* :func:`feed` delivers messages in one frame, merged, or one byte at a time.
* :func:`sent` decodes everything the session has queued.
* :class:`SessionPair` is two sessions that talk to each other: :meth:`SessionPair.pump`
  moves frames both ways until both are quiet, :meth:`SessionPair.advance` moves the clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from .. import protocol
from ..config import GridConfig
from ..errors import CallError
from ..events import CallFailed, CallResult, Event
from ..handlers import Registry
from ..liveness import LoopStats
from ..protocol import Message
from ..session import GridSession

How = Literal["whole", "merged", "bytewise"]


def new_session(
    registry: Registry,
    *,
    config: GridConfig | None = None,
    now: float = 0.0,
    loop: LoopStats | None = None,
    local: str = "us",
    remote: str = "peer",
) -> GridSession:
    """A session whose first ping has already been taken off its queue."""
    session = GridSession(
        config or GridConfig(),
        registry,
        now=now,
        loop=loop if loop is not None else LoopStats(),
        local=local,
        remote=remote,
    )
    sent(session)
    return session


def feed(
    session: GridSession, messages: Iterable[bytes], *, now: float = 0.0, how: How = "whole"
) -> list[Event]:
    """Deliver encoded ``messages`` as a peer would: back to back in one websocket frame, as
    one MERGED message, or that frame one byte at a time."""
    encoded = list(messages)
    merged = how == "merged" and len(encoded) > 1
    frame = protocol.merge(encoded) if merged else b"".join(encoded)
    if how != "bytewise":
        return session.receive_frame(frame, now)
    events: list[Event] = []
    for index in range(len(frame)):
        final = index == len(frame) - 1
        events += session.receive_frame(frame[index : index + 1], now, final=final)
    return events


def sent(session: GridSession) -> list[Message]:
    """Every message the session has queued, decoded, in the order it would write them."""
    messages: list[Message] = []
    while (taken := session.next_frame()) is not None:
        messages += protocol.decode_frame(taken[0])
        session.frame_written()
    return messages


@dataclass
class Side:
    """One session of a :class:`SessionPair` and what it told its driver."""

    session: GridSession
    events: list[Event] = field(default_factory=list)
    #: Our calls' outcomes by mux id: the payload or the error.
    outcomes: dict[int, bytes | CallError] = field(default_factory=dict)

    def take(self, events: list[Event]) -> None:
        for event in events:
            self.events.append(event)
            if isinstance(event, CallResult):
                assert event.mux_id not in self.outcomes, f"call {event.mux_id} ended twice"
                self.outcomes[event.mux_id] = event.payload
            elif isinstance(event, CallFailed):
                assert event.mux_id not in self.outcomes, f"call {event.mux_id} ended twice"
                self.outcomes[event.mux_id] = event.error


class SessionPair:
    """Two sessions wired back to back on a clock that only moves when told to."""

    def __init__(
        self,
        registry_a: Registry,
        registry_b: Registry,
        *,
        config: GridConfig | None = None,
        now: float = 0.0,
    ) -> None:
        config = config or GridConfig()
        self.now = now
        self.a = Side(self._session(config, registry_a, now, "a", "b"))
        self.b = Side(self._session(config, registry_b, now, "b", "a"))

    @staticmethod
    def _session(
        config: GridConfig, registry: Registry, now: float, local: str, remote: str
    ) -> GridSession:
        return GridSession(config, registry, now=now, loop=LoopStats(), local=local, remote=remote)

    def pump(self, limit: int = 10_000) -> int:
        """Move frames both ways until neither side has anything queued; return how many."""
        moved = 0
        while moved < limit:
            progress = False
            for src, dst in ((self.a, self.b), (self.b, self.a)):
                self.collect()
                taken = src.session.next_frame()
                if taken is None:
                    continue
                src.session.frame_written()
                dst.take(dst.session.receive_frame(taken[0], self.now))
                moved += 1
                progress = True
            if not progress:
                break
        self.collect()
        return moved

    def collect(self) -> None:
        """Gather the events local calls produced on either side."""
        for side in (self.a, self.b):
            side.take(side.session.take_events())

    def advance(self, seconds: float) -> None:
        """Move the clock, ticking each side whenever its timer comes due on the way."""
        end = self.now + seconds
        while True:
            due = min(self.a.session.next_timer(), self.b.session.next_timer())
            if due > end:
                break
            self.now = max(self.now, due)
            for side in (self.a, self.b):
                if side.session.next_timer() <= self.now:
                    side.take(side.session.tick(self.now))
            self.pump()
        self.now = end
