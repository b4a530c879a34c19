"""One erasure set: its drives in position order, its quorums, and the calls that span it.

This is the public surface the object layer, the healer and the scanner share:

- :meth:`ErasureSet.fan_out` runs one call on every drive at once, skips offline drives
  without calling them, and stops waiting for stragglers soon after a write quorum answered;
- :meth:`ErasureSet.read_metadata` and :meth:`ErasureSet.pick_metadata` read every drive's copy
  of an object's metadata and choose the version a read quorum agrees on; a drive still silent
  after a quorum answered is waited for only until its own recent p95 (times a factor) has
  passed, so a frozen peer costs a read a few of its usual answer times, not a fixed wait.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from storage.drive import Drive
from storage.errors import (
    BucketNotFound,
    DriveNotFound,
    DriveOffline,
    FileNotFound,
    ObjectNotFound,
    ReadQuorum,
    StorageError,
    VolumeNotFound,
)
from storage.latency import DriveLatency, HedgeDelay, node_of
from storage.meta import ObjectMeta
from storage.placement import read_quorum, write_quorum
from storage.quorum import Agreement, count_ok, reduce_quorum

T = TypeVar("T")

#: Waits (bounded) for drives whose peer was lost moments ago and is reconnecting, until
#: ``needed`` of them are back (see :meth:`storage.peers.PeerTable.rejoin`).
Rejoin = Callable[[Sequence[Drive], int], Awaitable[None]]

#: The latency kind of metadata reads in :attr:`ErasureSet.latency`.
METADATA = "metadata"
MIN_STRAGGLER_WAIT = 0.2
MAX_STRAGGLER_WAIT = 2.0

Results = list[T | StorageError]


@dataclass
class ErasureSet:
    """The drives of one set, in position order, and its erasure layout."""

    index: int
    drives: list[Drive]
    data: int
    parity: int
    #: Observed drive latency, shared by every set of a layer (it sets the straggler cut-off).
    hedge: HedgeDelay = field(default_factory=HedgeDelay)
    #: Per-drive recent latency (shard reads and metadata reads), shared by every set of a
    #: layer: it times hedged shard reads and the metadata straggler cut-off.
    latency: DriveLatency = field(default_factory=DriveLatency)
    #: Set by the node: lets a call that is short of a quorum of online drives wait a moment
    #: for peers that are reconnecting (a node just thawed finds every session gone at once).
    rejoin: Rejoin | None = None

    @property
    def write_quorum(self) -> int:
        return write_quorum(self.data, self.parity)

    @property
    def read_quorum(self) -> int:
        return read_quorum(self.data)

    def straggler_wait(self) -> float:
        """How long to wait for the rest once a quorum answered: 4 hedge delays, 0.2-2s."""
        return min(max(4 * self.hedge.delay, MIN_STRAGGLER_WAIT), MAX_STRAGGLER_WAIT)

    def online(self) -> int:
        """Drives the peer table currently believes are usable."""
        return sum(1 for drive in self.drives if drive.is_online())

    async def _await_rejoin(self) -> None:
        """Short of even a read quorum of online drives: give peers lost moments ago (and
        redialling) a bounded moment to come back, up to a write quorum, before the call fails
        for want of them. A set with a read quorum online (a node down for good) never waits
        here: reads can go on, and a write that needs more fails at once, as before."""
        online = self.online()
        if self.rejoin is not None and online < self.read_quorum:
            offline = [drive for drive in self.drives if not drive.is_online()]
            await self.rejoin(offline, self.write_quorum - online)

    async def fan_out(
        self, call: Callable[[Drive], Awaitable[T]], *, patience: float | None = None
    ) -> Results[T]:
        """Run ``call`` on every drive at once; offline drives fail without a call.

        A *frozen* peer (SIGSTOP, a stalled VM) keeps its connection up and answers nothing,
        so waiting for every drive would wait for the grid's failure detector. Once a write
        quorum has answered, the rest get :meth:`straggler_wait` more (``patience`` instead,
        for background work that would rather wait than skip a drive); a drive still silent
        then counts as failed for this call (its call is cancelled), as if it were offline.
        """
        return await self.fan_out_positions(
            lambda position: call(self.drives[position]), patience=patience
        )

    async def fan_out_positions(
        self,
        call: Callable[[int], Awaitable[T]],
        *,
        patience: float | None = None,
        timed: str | None = None,
        settled: Callable[[list[T | StorageError], int], bool] | None = None,
    ) -> Results[T]:
        """:meth:`fan_out`, for a call that needs the drive's position in the set.

        ``timed`` names the kind of call in :attr:`latency`: each drive's answer time is
        recorded under it, and (without ``patience``) once ``settled(answers, silent)`` says
        the silent drives can no longer change the outcome, a drive silent after the quorum
        is waited for only until its own deadline for that kind (at most
        :meth:`straggler_wait` after the quorum); a drive cut off is marked late."""
        await self._await_rejoin()
        loop = asyncio.get_running_loop()
        missing = object()  # "no answer yet" (None is a valid answer)
        results: list[Any] = [missing] * len(self.drives)
        started = loop.time()

        async def one(position: int, drive: Drive) -> None:
            if not drive.is_online():
                results[position] = DriveNotFound(f"drive {drive.endpoint} is offline")
                return
            try:
                results[position] = await call(position)
            except StorageError as exc:
                results[position] = exc
            if timed is not None:
                self.latency.observe(drive.endpoint, timed, loop.time() - started)

        tasks = [loop.create_task(one(p, d)) for p, d in enumerate(self.drives)]
        wait = self.straggler_wait() if patience is None else patience
        cutoffs: list[float] | None = None
        if timed is not None and patience is None:
            cutoffs = [started + self.latency.deadline(d.endpoint, timed) for d in self.drives]

        def early() -> bool:
            answers = [r for r in results if r is not missing]
            return settled is None or settled(answers, len(results) - len(answers))

        try:
            await self._wait_quorum_then_stragglers(tasks, wait, cutoffs, early)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        late = "no answer in time after the quorum"
        if timed is not None:
            for drive, result in zip(self.drives, results, strict=True):
                if result is missing:
                    self.latency.mark_late(drive.endpoint, node_of(drive))
        return [
            DriveNotFound(f"drive {drive.endpoint}: {late}") if result is missing else result
            for drive, result in zip(self.drives, results, strict=True)
        ]

    async def every_drive(self, call: Callable[[int], Awaitable[T]]) -> Results[T]:
        """Run ``call(position)`` on every online drive and wait for every answer (each drive
        call is bounded by its own timeout): for steps whose every drive counts later, such
        as staging a multipart upload's parts, where a drive cut off as a straggler would miss
        a part and could not take the object when it completes."""

        async def one(position: int, drive: Drive) -> T | StorageError:
            if not drive.is_online():
                return DriveNotFound(f"drive {drive.endpoint} is offline")
            try:
                return await call(position)
            except StorageError as exc:
                return exc

        await self._await_rejoin()
        return list(await asyncio.gather(*(one(p, d) for p, d in enumerate(self.drives))))

    async def _wait_quorum_then_stragglers(
        self,
        tasks: Sequence[asyncio.Task[None]],
        wait: float,
        cutoffs: Sequence[float] | None = None,
        settled: Callable[[], bool] | None = None,
    ) -> None:
        """Wait for a write quorum of ``tasks``, then for the rest until ``wait`` after the
        quorum, or (with ``cutoffs``, one loop time per task, once ``settled()``) until the
        latest cut-off of the tasks still pending, if that comes sooner."""
        loop = asyncio.get_running_loop()
        pending = set(tasks)
        quorum_at: float | None = None
        while pending:
            timeout = None
            if quorum_at is not None:
                until = quorum_at + wait
                if cutoffs is not None and (settled is None or settled()):
                    latest = max(cutoffs[i] for i, task in enumerate(tasks) if task in pending)
                    until = min(until, latest)
                timeout = max(0.0, until - loop.time())
            done, pending = await asyncio.wait(
                pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                return  # the stragglers' time is up
            if quorum_at is None and len(tasks) - len(pending) >= self.write_quorum:
                quorum_at = loop.time()

    async def read_metadata(
        self, bucket: str, key: str, *, patience: float | None = None
    ) -> Results[ObjectMeta]:
        """Every drive's copy of an object's metadata (or why it has none).

        When the answers fall short of a read quorum because the drives went offline during
        the read (a node thawed after SIGSTOP: the calls it had just sent fail as every
        session closes), the read is made once more, after :meth:`_await_rejoin` gave the
        peers their moment to redial. It reads and changes nothing, so asking again is safe."""

        def read() -> Awaitable[Results[ObjectMeta]]:
            return self.fan_out_positions(
                lambda position: self.drives[position].read_metadata(bucket, key),
                patience=patience,
                timed=METADATA,
                settled=self.metadata_settled,
            )

        copies = await read()
        if (
            self.rejoin is not None
            and count_ok(copies) < self.read_quorum
            and any(isinstance(copy, DriveOffline) for copy in copies)
        ):
            copies = await read()
        return copies

    def metadata_settled(self, answers: Sequence[ObjectMeta | StorageError], silent: int) -> bool:
        """Whether the ``silent`` drives could no longer change the version a read picks: a
        version already has a read quorum, and no newer one (seen, or unseen) could reach one
        with the silent drives' copies. Until then stragglers get the full straggler wait, so
        cutting slow drives early never hides a version that a write quorum committed."""
        quorum = self.read_quorum
        if silent >= quorum:
            return False
        counts = Counter(a.version_key() for a in answers if isinstance(a, ObjectMeta))
        agreed = [version for version, count in counts.items() if count >= quorum]
        if not agreed:
            return self._absence_settled(answers, silent, counts)
        best = max(agreed)
        return all(count + silent < quorum for version, count in counts.items() if version > best)

    def _absence_settled(
        self, answers: Sequence[ObjectMeta | StorageError], silent: int, counts: Counter[Any]
    ) -> bool:
        """A read quorum already says "not found", no version could reach a read quorum with
        the silent drives' copies, and the silent drives could not turn "no such object" into
        "no such bucket": the verdict :meth:`pick_metadata` gives cannot change (a GET of a
        missing key with a node frozen answers 404 without waiting out the stragglers)."""
        quorum = self.read_quorum
        absent = sum(1 for a in answers if isinstance(a, FileNotFound | VolumeNotFound))
        no_bucket = sum(1 for a in answers if isinstance(a, VolumeNotFound))
        return (
            absent >= quorum
            and all(count + silent < quorum for count in counts.values())
            and (no_bucket >= quorum or no_bucket + silent < quorum)
        )

    def pick_metadata(
        self, bucket: str, key: str, copies: Sequence[ObjectMeta | StorageError]
    ) -> Agreement[ObjectMeta]:
        """The latest version a read quorum agrees on, and the drives holding it.

        Raises ObjectNotFound (or BucketNotFound) when a read quorum says so, else ReadQuorum.
        """
        return reduce_quorum(
            copies,
            self.read_quorum,
            version=ObjectMeta.version_key,
            verdicts={
                VolumeNotFound: BucketNotFound(f"bucket {bucket} not found"),
                (FileNotFound, VolumeNotFound): ObjectNotFound(f"{bucket}/{key} not found"),
            },
            short=lambda why: ReadQuorum(
                f"{bucket}/{key}: no version is held by {self.read_quorum} drives of set "
                f"{self.index} ({why})"
            ),
        )


__all__ = ["MAX_STRAGGLER_WAIT", "MIN_STRAGGLER_WAIT", "ErasureSet", "Rejoin", "Results"]
