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
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Final

from .errors import LocalProtocolError, RemoteProtocolError

#: Largest per-direction capacity a handler may declare.
MAX_CAPACITY: Final = 1024
#: Largest item reassembled from fragments.
MAX_ITEM: Final = 64 << 20


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
    items that were cut into ``MORE``-flagged fragments.
    """

    __slots__ = ("_items", "_partial", "_payloads", "capacity", "ended", "next_seq", "what")

    def __init__(self, capacity: int, what: str) -> None:
        self.capacity = capacity
        self.what = what
        self.next_seq = 0
        self.ended = False
        self._items: collections.deque[bytes | End] = collections.deque()
        self._payloads = 0
        self._partial: list[bytes] = []

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
        """A message arrived; True when it completed an item. Raises on a credit/order breach."""
        self._check_seq(seq)
        if more or self._partial:
            self._partial.append(payload)
            if sum(map(len, self._partial)) > MAX_ITEM:
                raise RemoteProtocolError(f"{self.what}: item over {MAX_ITEM} bytes")
            if more:
                return False
            payload = b"".join(self._partial)
            self._partial = []
        if self._payloads >= self.capacity:
            raise RemoteProtocolError(
                f"{self.what}: sender exceeded its credit ({self.capacity} items unread)"
            )
        self._items.append(payload)
        self._payloads += 1
        return True

    def push_end(self, seq: int, error: str = "") -> None:
        """The sender finished (or failed). Costs no credit."""
        self._check_seq(seq)
        if self._partial:
            raise RemoteProtocolError(f"{self.what}: end of stream inside a fragmented item")
        self.ended = True
        self._items.append(End(error))

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
        return item


def check_capacity(name: str, value: int) -> int:
    """Validate a declared capacity."""
    if not 0 <= value <= MAX_CAPACITY:
        raise LocalProtocolError(f"{name} must be between 0 and {MAX_CAPACITY}, not {value}")
    return value
