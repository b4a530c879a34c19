"""The state of one peer connection across its sessions: the :class:`~minigrid.state.State`
machine, why the last session ended (and whether a later report revises that), waiting for a
change, and telling the state listeners."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from .liveness import Cause
from .state import State, check_transition

log = logging.getLogger("minigrid.grid")

#: ``listener(connection, old_state, new_state, cause_text)``.
StateListener = Callable[[Any, State, State, str], None]


class PeerState:
    """One connection's state; the connection and its manager move it."""

    def __init__(
        self,
        owner: object,
        listeners: list[StateListener],
        local: str,
        remote: str,
        fields: Callable[[Cause | None, State], dict[str, object]],
    ) -> None:
        self._owner = owner
        self._listeners = listeners
        self._where = f"{local}->{remote}"
        self._fields = fields  # the structured fields of a state-change log line
        self.state = State.UNCONNECTED
        #: Why the last session ended (or the last dial failed); None before any.
        self.cause: Cause | None = None
        self._changed = asyncio.Event()
        # The last disconnect, while a later report (a pong with a long stall, a new instance)
        # may still revise its diagnosis: (when it happened, its cause).
        self._revisable: tuple[float, Cause] | None = None

    def move(self, new: State, cause: Cause | None = None) -> None:
        """Change state (the table in :mod:`minigrid.state` says what is legal), log the
        changes people care about, wake the waiters and tell the listeners."""
        if new is self.state:
            return
        check_transition(self.state, new)
        old, self.state = self.state, new
        if cause is not None and new is not State.CONNECTED:
            self.cause = cause
        if State.CONNECTED in (new, old) or new is State.SHUTDOWN:
            why = f" ({cause})" if cause is not None else ""
            extra = self._fields(cause, new)
            log.info("grid %s: %s -> %s%s", self._where, old.value, new.value, why, extra=extra)
        self._changed.set()
        self._changed = asyncio.Event()
        text = str(self.cause) if self.cause is not None else ""
        for listener in self._listeners:
            try:
                listener(self._owner, old, new, text)
            except Exception:
                log.exception("grid: state listener failed")

    def lost(self, cause: Cause, now: float) -> None:
        """A session ended with ``cause``; a later report may still revise it."""
        if self.state is State.CONNECTED:
            self._revisable = (now, cause)
            self.move(State.ERROR, cause)
        else:
            self.cause = cause

    def revise(self, cause: Cause, now: float) -> None:
        """A later report explains the last disconnect better: say so once, and keep it."""
        if self._revisable is None:
            return
        when, earlier = self._revisable
        self._revisable = None
        if earlier.kind is cause.kind:
            return
        self.cause = Cause(cause.kind, f"{cause.detail} (revised from {earlier.kind.value})")
        log.warning(
            "grid %s: the disconnect %.1fs ago was most likely %s, not %s",
            self._where,
            now - when,
            cause,
            earlier.kind.value,
        )

    async def wait(self, wanted: State, timeout: float | None = None) -> None:
        async with asyncio.timeout(timeout):
            while self.state is not wanted:
                await self._changed.wait()

    async def wait_change(self) -> None:
        await self._changed.wait()
