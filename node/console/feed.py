"""The console's live feed: one collector per node, shared by every open page.

While at least one page is open, two loops run on the node serving it:

- every second, a cluster-wide ``top`` snapshot with each node's new journal events, asked
  over the grid by :class:`~node.observe.ObserveService` (the same collector as
  ``minigrid admin top``; nothing is collected twice), fed to the :class:`Picture`;
- every second, this node's view of every drive (the same reports as ``admin info``), in its
  own loop so a drive that is slow to answer never holds up the links.

After each snapshot every page is woken and sent the picture (server-sent events). A page that
reads slowly is sent the latest picture when it is ready, never a backlog; it gets every
timeline event it has not seen yet, up to the timeline's bound. The loops stop when the last
page closes; the picture (histories, timeline) is kept for the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from node.console.picture import Picture
from node.procident import NotLocal, ProcessIdentity

log = logging.getLogger("node.console")

INTERVAL = 1.0
DRIVES_TIMEOUT = 5.0


class Snapshots(Protocol):
    """What the feed reads of :class:`~node.observe.ObserveService`."""

    #: The serving node's own key in ``events_since`` (its URL; peers are keyed by host).
    node: str

    async def snapshot(
        self, cluster: bool, events_since: Mapping[str, int] | None = None
    ) -> dict[str, Any]: ...

    def process_of(self, peer: str) -> dict[str, Any] | None: ...


@dataclass
class Reader:
    """One open page: woken after each snapshot; ``after`` is the last event it was sent."""

    after: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class Feed:
    """The shared collector (see the module docstring)."""

    def __init__(self, snapshots: Snapshots, drives: Callable[[], Awaitable[list[dict[str, Any]]]],
                 hosts: Sequence[str], me: str, interval: float = INTERVAL) -> None:  # fmt: skip
        self.snapshots = snapshots
        self.drives = drives
        self.picture = Picture(hosts, me)
        self.me = me
        self.interval = interval
        self.readers: list[Reader] = []
        self._task: asyncio.Task[None] | None = None
        self.ticks = 0

    def subscribe(self) -> Reader:
        reader = Reader()
        self.readers.append(reader)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="console feed")
        if self.ticks:
            reader.wake.set()  # the picture so far, at once
        return reader

    async def unsubscribe(self, reader: Reader) -> None:
        with contextlib.suppress(ValueError):
            self.readers.remove(reader)
        if not self.readers:
            await self.close()

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def frame(self, reader: Reader) -> dict[str, Any]:
        """The next message for ``reader`` (and note the events it now has)."""
        frame = self.picture.frame(reader.after)
        frame["processes"] = self.processes()
        if frame["events"]:
            reader.after = frame["events"][-1]["id"]
        return frame

    def processes(self) -> list[dict[str, str]]:
        """Each node's process as this node sees it: ``running`` or ``stopped`` (frozen) when
        it runs on this machine and can be signalled from here, else ``remote`` and why."""
        result = []
        for host in self.picture.hosts:
            if host == self.me:
                result.append({"state": "running", "note": "serves this console"})
                continue
            raw = self.snapshots.process_of(host)
            if raw is None:
                result.append({"state": "unknown", "note": "not seen answering yet"})
                continue
            try:
                identity = ProcessIdentity.from_dict(raw)
                identity.check_local()
            except (ValueError, NotLocal) as exc:
                result.append({"state": "remote", "note": str(exc)})
                continue
            result.append({"state": "stopped" if identity.stopped() else "running",
                           "note": f"pid {identity.pid}"})  # fmt: skip
        return result

    # --- the loops ----------------------------------------------------------------------------

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._tops())
            group.create_task(self._drive_reports())

    async def _tops(self) -> None:
        loop = asyncio.get_running_loop()
        failed = False
        while True:
            started = loop.time()
            try:
                since = self.picture.events_since()
                since[self.snapshots.node] = since.get(self.me, 0)  # this node, by its URL
                snapshot = await self.snapshots.snapshot(True, since)
                self.picture.update(snapshot)
            except Exception:
                # A bug, not a peer's fault (their answers are checked): say so once, with the
                # traceback, and keep the pages alive rather than freeze them on a stale picture.
                if not failed:
                    log.exception("console: the live picture could not be updated")
                failed = True
            else:
                failed = False
            self.ticks += 1
            for reader in self.readers:
                reader.wake.set()
            await asyncio.sleep(max(0.0, self.interval - (loop.time() - started)))

    async def _drive_reports(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                async with asyncio.timeout(DRIVES_TIMEOUT):
                    self.picture.set_drives(await self.drives())
            except TimeoutError:
                log.debug("console: the drive reports took over %.0fs", DRIVES_TIMEOUT)
            await asyncio.sleep(max(0.0, self.interval - (loop.time() - started)))


__all__ = ["Feed", "Reader", "Snapshots"]
