"""Say each handshake rejection once per peer and state change, in bounded memory.

A peer with the wrong secret retries every few seconds, forever; an attacker can try from many
addresses, claiming any host. So the log is keyed by *who* (a known peer's host string, or the
remote IP address when the claimed host is not a peer) and *what* (dial, poke, ...), and it
remembers only the last reason **code** (a fixed vocabulary, :class:`minigrid.handshake.Code`),
never the text a peer sent. A line is written when the code for a key changes; a success
clears the key, so the next failure is said again. At most ``capacity`` keys are kept, least
recently used first out: a flood of addresses costs a bounded dictionary, and an evicted key
at worst logs its line once more.
"""

from __future__ import annotations

import collections
import logging
from typing import Final

DEFAULT_CAPACITY: Final = 1024

Key = tuple[str, str]


class RejectionLog:
    """Log a warning when the reason code for a key changes; remember at most ``capacity``."""

    def __init__(self, logger: logging.Logger, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._log = logger
        self.capacity = capacity
        self._last: collections.OrderedDict[Key, str] = collections.OrderedDict()

    def note(self, key: Key, code: str, message: str) -> bool:
        """Log ``message`` unless ``key`` was last seen with the same ``code``; True if logged."""
        last = self._last.get(key)
        self._last[key] = code
        self._last.move_to_end(key)
        while len(self._last) > self.capacity:
            self._last.popitem(last=False)
        if last == code:
            return False
        self._log.warning("%s", message)
        return True

    def clear(self, key: Key) -> None:
        """The peer got through: the next rejection is news again."""
        self._last.pop(key, None)

    def __len__(self) -> int:
        return len(self._last)


__all__ = ["RejectionLog"]
