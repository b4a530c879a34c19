"""The out-queue of one session, sans-IO: control before data, merged into frames.

Control messages (pings, pongs, acknowledgements, credit grants, cancels, error replies) go in
their own queue, which the writer always drains first: bulk data can never starve liveness.
They are small and never wait; their queue fills only when the peer stops reading while it
keeps sending, and going over its cap ends the session instead.

Data messages (requests, replies, stream items) are bounded by count and bytes; a sender that
finds no room waits for the writer to take some (see :meth:`Outbox.try_put_data`). The last
message of a stream direction (its EOF) is queued past the bound: it must never wait, and
there is at most one per mux.
"""

from __future__ import annotations

import collections

from . import protocol
from .config import GridConfig


class Outbox:
    """Queued messages waiting for the writer, already encoded."""

    __slots__ = (
        "_control",
        "_data",
        "_max_bytes",
        "_max_control",
        "_max_messages",
        "_merge_bytes",
        "_merge_messages",
        "data_bytes",
        "full_since",
    )

    def __init__(self, config: GridConfig) -> None:
        self._control: collections.deque[bytes] = collections.deque()
        self._data: collections.deque[bytes] = collections.deque()
        #: Bytes of the queued data messages.
        self.data_bytes = 0
        #: When the data queue last refused a message with no frame written since (None: the
        #: writer has made progress since it was last full).
        self.full_since: float | None = None
        self._max_control = config.max_control_messages
        self._max_messages = config.max_queue_messages
        self._max_bytes = config.max_queue_bytes
        self._merge_messages = config.merge_max_messages
        self._merge_bytes = config.merge_max_bytes

    def __len__(self) -> int:
        return len(self._control) + len(self._data)

    def __bool__(self) -> bool:
        return bool(self._control) or bool(self._data)

    @property
    def control_full(self) -> bool:
        """The control queue is at its cap: the peer is not reading."""
        return len(self._control) >= self._max_control

    @property
    def control_messages(self) -> int:
        return len(self._control)

    def put_control(self, message: bytes) -> None:
        """Queue a control message (check :attr:`control_full` first)."""
        self._control.append(message)

    def try_put_data(self, message: bytes, now: float) -> bool:
        """Queue a data message if there is room (an empty queue always has room)."""
        data = self._data
        if data and (
            len(data) >= self._max_messages or self.data_bytes + len(message) > self._max_bytes
        ):
            if self.full_since is None:
                self.full_since = now
            return False
        data.append(message)
        self.data_bytes += len(message)
        return True

    def put_terminal(self, message: bytes) -> None:
        """Queue a stream's last message past the bound."""
        self._data.append(message)
        self.data_bytes += len(message)

    def take_frame(self) -> tuple[bytes, int, int] | None:
        """The next frame: every queued control message (up to the merge cap), then as much
        data as fits. Returns ``(frame, messages, data messages taken)``, or None."""
        control, data = self._control, self._data
        if not control and not data:
            return None
        batch: list[bytes] = []
        max_messages = self._merge_messages
        while control and len(batch) < max_messages:
            batch.append(control.popleft())
        size = sum(map(len, batch))
        max_bytes = self._merge_bytes
        taken = taken_bytes = 0
        while data and len(batch) < max_messages:
            message = data[0]
            if batch and size + len(message) > max_bytes:
                break
            data.popleft()
            batch.append(message)
            size += len(message)
            taken += 1
            taken_bytes += len(message)
        self.data_bytes -= taken_bytes
        return protocol.merge(batch), len(batch), taken

    def clear(self) -> None:
        self._control.clear()
        self._data.clear()
        self.data_bytes = 0
