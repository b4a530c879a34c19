"""What the parts of one session share (sans-IO): the out-queue, the events for the driver, the
byte budget, the counters, mux ids, deadlines, and how a misbehaving peer is logged.

:class:`~minigrid.session.GridSession` owns one :class:`Link` and hands it to its call table
(:mod:`minigrid.calls`) and its stream table (:mod:`minigrid.muxtable`).
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Callable
from typing import Final, Generic, TypeVar

from .config import GridConfig
from .errors import Disconnected
from .events import Event
from .liveness import Cause, CauseKind
from .mux import Budget
from .outbox import Outbox
from .protocol import Message, Op
from .records import Mux, Outgoing, ServerCall
from .stats import Counters

log = logging.getLogger("minigrid.grid")

#: Per session, the first few protocol errors of single messages or muxes, and the first
#: refusal for a cap, are logged; the rest are only counted, so a hostile peer cannot flood
#: the log.
LOGGED_PER_SESSION: Final = 3

T = TypeVar("T")
#: What a deadline is for: our call (its mux id), a call of the peer's, or a stream.
DeadlineTarget = int | ServerCall | Mux


class Deadlines(Generic[T]):
    """Deadlines of calls and streams, earliest first. Work that finished early is not taken
    out (that would cost a search): its entry is skipped when it comes up, and the heap is
    rebuilt from the entries still due whenever it has doubled since the last rebuild, so it
    holds at most about twice the live work, at a constant cost per deadline."""

    __slots__ = ("_count", "_heap", "_limit", "_still_due")

    def __init__(self, still_due: Callable[[T], bool]) -> None:
        self._heap: list[tuple[float, int, T, float]] = []
        self._count = 0
        self._limit = 64
        self._still_due = still_due

    def __len__(self) -> int:
        return len(self._heap)

    @property
    def next(self) -> float:
        """When the earliest deadline falls (infinity when there is none)."""
        return self._heap[0][0] if self._heap else math.inf

    def add(self, when: float, target: T, seconds: float) -> None:
        """``target``, given ``seconds`` to finish, is due at ``when``."""
        self._count += 1
        heap = self._heap
        heapq.heappush(heap, (when, self._count, target, seconds))
        if len(heap) > self._limit:
            self._heap = heap = [entry for entry in heap if self._still_due(entry[2])]
            heapq.heapify(heap)
            self._limit = max(64, 2 * len(heap))

    def pop_due(self, now: float) -> list[tuple[T, float]]:
        """Every target due by ``now`` that is still running, with its seconds."""
        heap: list[tuple[float, int, T, float]] = self._heap
        due: list[tuple[T, float]] = []
        while heap and heap[0][0] <= now:
            _, _, target, seconds = heapq.heappop(heap)
            if self._still_due(target):
                due.append((target, seconds))
        return due

    def clear(self) -> None:
        self._heap.clear()


class Link:
    """The shared state of one session's parts."""

    def __init__(
        self,
        config: GridConfig,
        *,
        now: float,
        local: str,
        remote: str,
        counters: Counters,
        first_mux_id: int,
        on_not_reading: Callable[[Cause], None],
        still_due: Callable[[DeadlineTarget], bool],
    ) -> None:
        self.config = config
        self.local = local
        self.remote = remote
        self.counters = counters
        #: Bytes received from the peer and held here, across every mux.
        self.budget = Budget(config.max_held_bytes)
        self.outbox = Outbox(config)
        #: What the driver has not been told yet.
        self.events: list[Event] = []
        #: The latest time the driver gave the session.
        self.now = now
        #: Why the session ended; None while it runs.
        self.cause: Cause | None = None
        #: When the liveness checks want to run next (lowered by whoever adds work to check).
        self.due = now
        #: Deadlines of calls and streams, both directions.
        self.deadlines: Deadlines[DeadlineTarget] = Deadlines(still_due)
        self._next_mux_id = first_mux_id
        self._on_not_reading = on_not_reading
        self._breaches = 0
        self._refusals = 0

    @property
    def closed(self) -> bool:
        return self.cause is not None

    def new_mux_id(self) -> int:
        """The next mux id of our own (calls and streams share one space)."""
        mux_id = self._next_mux_id
        self._next_mux_id = mux_id + 1
        return mux_id

    def peek_mux_id(self) -> int:
        return self._next_mux_id

    def disconnected(self) -> Disconnected:
        """The error for work that this session can no longer do."""
        cause = str(self.cause) if self.cause is not None else "session not running"
        return Disconnected(
            f"grid connection {self.local}->{self.remote} is down ({cause})", cause=cause
        )

    def emit(self, event: Event) -> None:
        self.events.append(event)

    # ------------------------------------------------------------------ the out-queue

    def control(self, message: bytes) -> None:
        """Queue a control message. It never waits: its queue fills only when the peer stops
        reading, and that ends the session instead."""
        if self.cause is not None:
            return
        outbox = self.outbox
        if outbox.control_full:
            cause = Cause(
                CauseKind.PEER_NOT_READING,
                f"{outbox.control_messages} control messages queued and unsent "
                f"(cap {self.config.max_control_messages}); the peer sends but does not read",
            )
            log.warning("grid %s->%s: disconnecting: %s", self.local, self.remote, cause)
            self._on_not_reading(cause)
            return
        outbox.put_control(message)

    def queue(self, message: bytes) -> Outgoing | None:
        """Queue one data message now (None), or hand it back to push when there is room."""
        if self.outbox.try_put_data(message, self.now):
            return None
        self.no_room()
        return Outgoing(message)

    def push(self, outgoing: Outgoing) -> bool:
        """Queue what fits of ``outgoing``; True when all of it is queued. Raises
        :class:`Disconnected` once the session has ended."""
        if self.cause is not None:
            raise self.disconnected()
        rest = outgoing.rest
        message = outgoing.next
        if message is None and rest is not None:
            message = next(rest, None)
        outbox = self.outbox
        while message is not None:
            if not outbox.try_put_data(message, self.now):
                outgoing.next = message
                self.no_room()
                return False
            message = next(rest, None) if rest is not None else None
        outgoing.next = outgoing.rest = None
        return True

    def terminal(self, message: bytes) -> None:
        """Queue a stream direction's last message past the bound."""
        if self.cause is None:
            self.outbox.put_terminal(message)

    def no_room(self) -> None:
        """The data queue just refused a message: check in time that the peer reads."""
        full_since = self.outbox.full_since
        if full_since is not None:
            self.due = min(self.due, full_since + self.config.dead_after)

    # ------------------------------------------------------------------ misbehaviour

    def breach(self, message: Message, exc: Exception) -> None:
        """One message or mux broke the protocol; it alone is refused. Logged a few times per
        session, then only counted."""
        self.counters.protocol_errors += 1
        self._breaches += 1
        if self._breaches <= LOGGED_PER_SESSION:
            log.warning(
                "grid %s->%s: protocol error on mux %d (%s): %s%s",
                self.local,
                self.remote,
                message.mux_id,
                Op(message.op).name,
                exc,
                "; further ones this session are counted, not logged"
                if self._breaches == LOGGED_PER_SESSION
                else "",
            )

    def refused(self, what: str) -> None:
        """A request or stream was refused for a cap ("busy"). Logged once per session."""
        self.counters.refused += 1
        self._refusals += 1
        if self._refusals == 1:
            log.warning(
                "grid %s->%s: %s; further refusals this session are counted, not logged",
                self.local,
                self.remote,
                what,
            )
