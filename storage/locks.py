"""Per-key read/write locks for one process.

A *writer* (the commit phase of a put, a delete) holds a key exclusively; *readers* (metadata
reads for head and get) share it. A reader that arrives while a commit is in progress waits for
it, so it never sees a version that might still be rolled back. Waiters are served in arrival
order, so a stream of readers cannot starve a writer.

Granting and releasing are synchronous bookkeeping (no awaits), so a task cancelled while it
waits or while it releases can never leave a key locked.

The locks are per process, not distributed: two nodes may still commit the same key at once
(the quorum and the version vote sort that out).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Hashable


class _RWState:
    __slots__ = ("queue", "readers", "writer")

    def __init__(self) -> None:
        self.readers = 0
        self.writer = False
        # Waiters in arrival order: (wants to write, granted when done).
        self.queue: collections.deque[tuple[bool, asyncio.Future[None]]] = collections.deque()

    @property
    def idle(self) -> bool:
        return not self.readers and not self.writer and not self.queue

    def grant(self) -> None:
        """Hand the lock to the waiters at the head of the queue that can have it now."""
        queue = self.queue
        while queue:
            wants_write, waiter = queue[0]
            if waiter.done():  # cancelled while waiting
                queue.popleft()
                continue
            if self.writer or (wants_write and self.readers):
                return
            queue.popleft()
            if wants_write:
                self.writer = True
                waiter.set_result(None)
                return
            self.readers += 1
            waiter.set_result(None)


class KeyLocks:
    """Read/write locks keyed by any hashable name, created on first use and dropped when idle."""

    def __init__(self) -> None:
        self._states: dict[Hashable, _RWState] = {}

    @contextlib.asynccontextmanager
    async def read(self, name: Hashable) -> AsyncIterator[None]:
        """Share ``name`` with other readers; wait while a writer holds it or waits for it."""
        await self._acquire(name, write=False)
        try:
            yield
        finally:
            self._release(name, write=False)

    @contextlib.asynccontextmanager
    async def write(self, name: Hashable) -> AsyncIterator[None]:
        """Hold ``name`` alone."""
        await self._acquire(name, write=True)
        try:
            yield
        finally:
            self._release(name, write=True)

    async def _acquire(self, name: Hashable, *, write: bool) -> None:
        state = self._states.get(name)
        if state is None:
            state = self._states[name] = _RWState()
        if not state.queue and not state.writer and not (write and state.readers):
            if write:
                state.writer = True
            else:
                state.readers += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        state.queue.append((write, waiter))
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._release(name, write=write)  # granted just as we were cancelled
            else:
                with contextlib.suppress(ValueError):
                    state.queue.remove((write, waiter))
                state.grant()  # we may have been the head blocking others
                self._drop_if_idle(name, state)
            raise

    def _release(self, name: Hashable, *, write: bool) -> None:
        state = self._states[name]
        if write:
            state.writer = False
        else:
            state.readers -= 1
        state.grant()
        self._drop_if_idle(name, state)

    def _drop_if_idle(self, name: Hashable, state: _RWState) -> None:
        if state.idle and self._states.get(name) is state:
            del self._states[name]

    def waiters(self, name: Hashable) -> int:
        """Tasks queued for ``name`` (for tests and the admin API)."""
        state = self._states.get(name)
        return 0 if state is None else sum(1 for _, w in state.queue if not w.done())

    def readers(self, name: Hashable) -> int:
        """Readers holding ``name`` now."""
        state = self._states.get(name)
        return 0 if state is None else state.readers

    def __len__(self) -> int:
        return len(self._states)
