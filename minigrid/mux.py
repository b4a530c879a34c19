"""Stream (mux) flow control and ordering, sans-IO.

Each direction of a stream is governed by two small objects:

* the sender holds a :class:`Window`: credits it may spend, one per item;
* the receiver holds an :class:`Inbox`: items that arrived and are not yet *taken*.

The receiver grants ``capacity`` credits when the stream opens and grants one more each time its
consumer *takes* an item, never when the item merely arrives. So an inbox can never hold more
than ``capacity`` items, whatever the consumer does, and a sender with no credit waits instead
of buffering without bound. A peer that sends past its credit, out of order, or after its end is
breaking the protocol on that one mux: :class:`RemoteProtocolError`, not a crash.

Terminal messages (EOF, error) cost no credit: a sender must always be able to finish.

Credits bound one mux; a :class:`Budget` bounds them all together. Every byte received from a
peer and still held here (a payload being reassembled, an unread item, the payload of a running
call or of an open stream) is charged to its connection's budget, so many muxes cannot add up to
an unbounded amount. A piece that would go over the budget is refused with
:class:`~minigrid.errors.LimitExceeded`: that mux or message fails, the connection lives on.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Final

from .errors import LimitExceeded, LocalProtocolError, RemoteProtocolError
from .protocol import MAX_FRAGMENTS

#: Largest per-direction capacity a handler may declare (and an ACK_MUX may announce).
MAX_CAPACITY: Final = 1024
#: Largest item reassembled from fragments.
MAX_ITEM: Final = 64 << 20
#: What holding one received piece costs beyond its bytes (a rough upper estimate of the
#: objects behind it). Charged with every piece, so that empty pieces are not free.
HELD_OVERHEAD: Final = 256
#: A budget with no practical limit, for an inbox used on its own (tests).
_UNLIMITED: Final = 1 << 62


class Budget:
    """Bytes received from one peer and held here, against a cap.

    One per session of a connection. Whoever holds received bytes charges them here and
    releases exactly what it charged when it lets go, so ``held`` is what the peer currently
    makes this node keep."""

    __slots__ = ("held", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def charge(self, size: int, what: str) -> None:
        """Hold ``size`` more bytes, or raise :class:`LimitExceeded` (nothing is charged)."""
        held = self.held + size
        if held > self.limit:
            raise LimitExceeded(
                f"{what}: the connection already holds {self.held} received bytes "
                f"(cap {self.limit})"
            )
        self.held = held

    def release(self, size: int) -> None:
        """Give back bytes charged earlier."""
        self.held -= size


class Fragments:
    """One payload being put back together from ``MORE``-flagged fragments.

    Keeps a running total (never re-sums its parts), holds at most :data:`MAX_FRAGMENTS`
    fragments, and charges every fragment to the budget until the payload is finished or
    dropped."""

    __slots__ = ("_budget", "cost", "parts", "size")

    def __init__(self, budget: Budget) -> None:
        self._budget = budget
        self.parts: list[bytes] = []
        self.size = 0
        self.cost = 0

    def add(self, payload: bytes, max_size: int, what: str) -> None:
        """Hold one more fragment that is not the last; raises on any cap."""
        if len(self.parts) >= MAX_FRAGMENTS - 1:
            raise RemoteProtocolError(f"{what}: payload cut into over {MAX_FRAGMENTS} fragments")
        size = self.size + len(payload)
        if size > max_size:
            raise RemoteProtocolError(f"{what}: fragmented payload over {max_size} bytes")
        cost = len(payload) + HELD_OVERHEAD
        self._budget.charge(cost, what)
        self.parts.append(payload)
        self.size = size
        self.cost += cost

    def finish(self, payload: bytes, max_size: int, what: str) -> bytes:
        """The last fragment: release what was held and return the whole payload."""
        size = self.size + len(payload)
        parts = self.parts
        self.release()
        if size > max_size:
            raise RemoteProtocolError(f"{what}: fragmented payload over {max_size} bytes")
        parts.append(payload)
        return b"".join(parts)

    def release(self) -> None:
        """Drop the fragments held so far and give their bytes back."""
        self._budget.release(self.cost)
        self.cost = 0
        self.parts = []


class Window:
    """Credits the local sender may spend. Granted by the remote receiver."""

    __slots__ = ("capacity", "credits")

    def __init__(self, capacity: int, credits: int | None = None) -> None:
        self.capacity = capacity
        self.credits = capacity if credits is None else credits

    def try_spend(self) -> bool:
        """Spend one credit if there is one."""
        if self.credits > 0:
            self.credits -= 1
            return True
        return False

    def grant(self, count: int) -> None:
        """The receiver took ``count`` items. Granting past capacity breaks the protocol."""
        if count <= 0 or self.credits + count > self.capacity:
            raise RemoteProtocolError(
                f"credit grant of {count} would exceed the window "
                f"({self.credits} held of {self.capacity})"
            )
        self.credits += count


@dataclass(frozen=True, slots=True)
class End:
    """The terminal item of a direction: a normal end (``error`` empty) or an error."""

    error: str = ""


class Inbox:
    """Items received on one direction of one mux, in order, bounded by credits granted.

    It also checks sequence numbers (one per message, fragments included) and reassembles
    items that were cut into ``MORE``-flagged fragments. Everything it holds is charged to
    ``budget`` (the connection's) until it is taken or the inbox is :meth:`detach`-ed.
    """

    __slots__ = (
        "_budget",
        "_held",
        "_items",
        "_partial",
        "_payloads",
        "capacity",
        "ended",
        "next_seq",
        "what",
    )

    def __init__(self, capacity: int, what: str, budget: Budget | None = None) -> None:
        self.capacity = capacity
        self.what = what
        self.next_seq = 0
        self.ended = False
        self._items: collections.deque[bytes | End] = collections.deque()
        self._payloads = 0
        self._partial: Fragments | None = None
        self._budget = budget if budget is not None else Budget(_UNLIMITED)
        self._held = 0  # charged for the unread items, until detach()

    def __len__(self) -> int:
        return len(self._items)

    def _check_seq(self, seq: int) -> None:
        if seq != self.next_seq:
            raise RemoteProtocolError(
                f"{self.what}: message out of order (seq {seq}, expected {self.next_seq})"
            )
        self.next_seq += 1
        if self.ended:
            raise RemoteProtocolError(f"{self.what}: message after end of stream")

    def push(self, seq: int, payload: bytes, *, more: bool = False) -> bool:
        """A message arrived; True when it completed an item. Raises on a credit/order breach
        and on any receive limit."""
        self._check_seq(seq)
        partial = self._partial
        if partial is None and self._payloads >= self.capacity:
            # Checked at an item's first message: the sender spent its credit before sending.
            raise RemoteProtocolError(
                f"{self.what}: sender exceeded its credit ({self.capacity} items unread)"
            )
        if more:
            if partial is None:
                partial = self._partial = Fragments(self._budget)
            partial.add(payload, MAX_ITEM, self.what)
            return False
        if partial is not None:
            self._partial = None
            payload = partial.finish(payload, MAX_ITEM, self.what)
        cost = len(payload) + HELD_OVERHEAD
        self._budget.charge(cost, self.what)
        self._held += cost
        self._items.append(payload)
        self._payloads += 1
        return True

    def push_end(self, seq: int, error: str = "") -> None:
        """The sender finished (or failed). Costs no credit."""
        self._check_seq(seq)
        if self._partial is not None:
            raise RemoteProtocolError(f"{self.what}: end of stream inside a fragmented item")
        self.ended = True
        self._items.append(End(error))

    @property
    def spent(self) -> int:
        """Credits the sender has spent here and not yet earned back: one per unread item, and
        one for an item still arriving in fragments."""
        return self._payloads + (self._partial is not None)

    @property
    def held(self) -> int:
        """What this inbox has charged to its budget and not given back."""
        return self._held + (self._partial.cost if self._partial is not None else 0)

    def detach(self) -> None:
        """The mux left its connection's table: the peer can add nothing more, so give every
        charged byte back. Unread items stay readable."""
        if self._partial is not None:
            self._partial.release()
            self._partial = None
        self._budget.release(self._held)
        self._held = 0

    def take(self) -> bytes | End | None:
        """The next item, or None if nothing has arrived. Taking a payload earns a credit.

        The End stays in place, so every later take() sees it again."""
        if not self._items:
            return None
        item = self._items[0]
        if isinstance(item, End):
            return item
        self._items.popleft()
        self._payloads -= 1
        if self._held:  # still charged (not detached)
            cost = len(item) + HELD_OVERHEAD
            self._held -= cost
            self._budget.release(cost)
        return item


def check_capacity(name: str, value: int) -> int:
    """Validate a declared capacity."""
    if not 0 <= value <= MAX_CAPACITY:
        raise LocalProtocolError(f"{name} must be between 0 and {MAX_CAPACITY}, not {value}")
    return value
