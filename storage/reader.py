"""Hedged shard reads: fetch k shards per block, replacing failed and late sources.

The fetcher starts ``k`` shard streams, data shards first, and keeps the other drives as
alternates (Tahoe's rule). Every stream reads ahead at most ``READ_AHEAD`` chunks; a chunk's
credit returns only when its block has been assembled, so memory stays bounded however far one
stream runs ahead of another.

- A stream that fails (missing or corrupt shard, drive error) is replaced at once by the next
  alternate, starting at the block still needed. Missing and corrupt shards go to the heal hook.
- Each stream's outstanding chunk has a deadline from *its own drive's* recent latency
  (:class:`~storage.latency.DriveLatency`: a factor times the drive's p95, the set-wide p95
  for a drive without history). A stream still owing the block being assembled past its
  deadline is *late*: an alternate starts at that block (a ranged shard read), one per late
  stream, preferring drives that are not late themselves nor on a node that is.
- The first ``k`` chunks of a block win. After the block, a stream that fell behind is
  cancelled (a cancel never waits for the peer) and kept as a last-resort spare, so a stream
  that stalls mid-object is replaced block by block and the read goes on with the alternate to
  the end, whatever the grid's failure detector later decides about the stalled peer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from storage.drive import Drive
from storage.erasure import Erasure
from storage.errors import FileCorrupt, FileNotFound, ReadQuorum
from storage.latency import DriveLatency, HedgeDelay, node_of
from storage.meta import ObjectMeta

READ_AHEAD = 2
#: Latency kinds: a stream's first chunk (includes opening it) and every chunk after.
FIRST_CHUNK = "first-chunk"
NEXT_CHUNK = "chunk"


@dataclass(frozen=True)
class ReadEvent:
    """One hedging decision: ``late`` (a stream missed its deadline for ``block``, and
    ``spare`` started in its place, or "" when none was left) or ``retired`` (a stream that
    missed a block was cancelled)."""

    kind: str
    endpoint: str
    block: int
    spare: str = ""
    #: For ``late``: the seconds the stream was allowed (its drive's deadline).
    allowed: float = 0.0


@dataclass
class ReadStats:
    """Counters a test or the admin API can look at."""

    #: Alternates started because a stream was late (its drive's deadline passed).
    hedges: int = 0
    #: Alternates started because a stream failed.
    replacements: int = 0
    #: Streams cancelled after they fell behind a block (a late or losing stream).
    retired: int = 0
    decodes: int = 0
    #: The deadlines the late streams were given, summed (ms): what hedging cost in waiting.
    late_wait_ms: int = 0
    #: The latest hedging decisions, newest last.
    events: deque[ReadEvent] = field(default_factory=lambda: deque(maxlen=64))

    def counters(self) -> dict[str, int]:
        """The counters as a dict (for the admin API and benchmarks)."""
        return {"hedges": self.hedges, "replacements": self.replacements,
                "retired": self.retired, "decodes": self.decodes,
                "late_wait_ms": self.late_wait_ms}  # fmt: skip


@dataclass(frozen=True)
class ShardSource:
    """A drive holding a shard of the chosen version."""

    position: int
    index: int
    drive: Drive


@dataclass(eq=False)
class _Stream:
    source: ShardSource
    start_block: int
    credits: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(READ_AHEAD))
    task: asyncio.Task[None] | None = None
    #: The block this stream reads next, and since when (loop time) it has been waiting for
    #: it; None while it waits for credit (then it owes nothing).
    next_block: int = 0
    asked_at: float | None = None
    #: A spare was started in its place for the chunk it waits for (no second one for it).
    late: bool = False


_Item = tuple[_Stream, int, bytes | Exception]


class ShardFetcher:
    """Delivers decoded blocks ``first_block..last_block`` of one object version (of one part
    of it, ``size`` bytes, for an object made by multipart upload)."""

    def __init__(
        self,
        *,
        bucket: str,
        key: str,
        meta: ObjectMeta,
        sources: list[ShardSource],
        first_block: int,
        last_block: int,
        hedge: HedgeDelay,
        stats: ReadStats,
        report: Callable[[ShardSource, str], None],
        part: int = 0,
        size: int | None = None,
        latency: DriveLatency | None = None,
    ) -> None:
        self._bucket = bucket
        self._key = key
        self._meta = meta
        #: The shard file read (a part's, for a multipart object) and the bytes it encodes.
        self._part = part
        self._size = meta.size if size is None else size
        self._erasure = Erasure(meta.erasure.data, meta.erasure.parity, meta.erasure.block_size)
        self._chunk_size = meta.erasure.shard_chunk_size()
        self._shard_size = meta.erasure.shard_size(self._size)
        self._spares = sorted(sources, key=lambda s: s.index)  # data shards first
        self._first = first_block
        self._last = last_block
        self._hedge = hedge
        self._latency = latency if latency is not None else DriveLatency(floor=hedge.floor)
        self._stats = stats
        self._report = report
        self._active: list[_Stream] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._results: asyncio.Queue[_Item] = asyncio.Queue()
        self._stash: dict[int, dict[int, tuple[_Stream, bytes]]] = {}
        self._started = False

    # --- streams ----------------------------------------------------------------------------

    def _start(self, source: ShardSource, block: int) -> None:
        stream = _Stream(source=source, start_block=block, next_block=block)
        stream.task = asyncio.create_task(self._pump(stream))
        self._tasks.add(stream.task)
        stream.task.add_done_callback(self._tasks.discard)
        self._active.append(stream)

    def _start_spare(self, block: int) -> ShardSource | None:
        """Start the best spare at ``block``: data shards first, drives (and nodes) that are
        late right now last."""
        if not self._spares:
            return None
        suspect = self._latency.suspect
        best = min(
            range(len(self._spares)),
            key=lambda i: (suspect(self._spares[i].drive.endpoint, node_of(self._spares[i].drive)),
                           i),
        )  # fmt: skip
        source = self._spares.pop(best)
        self._start(source, block)
        return source

    async def _pump(self, stream: _Stream) -> None:
        """Read one shard from ``start_block`` on, putting each chunk on the results queue."""
        loop = asyncio.get_running_loop()
        block = stream.start_block
        offset = block * self._chunk_size
        endpoint = stream.source.drive.endpoint
        try:
            chunks = stream.source.drive.read_shard(
                self._bucket,
                self._key,
                self._meta.data_dir,
                chunk_size=self._chunk_size,
                shard_size=self._shard_size,
                offset=offset,
                length=min(self._shard_size, (self._last + 1) * self._chunk_size) - offset,
                part=self._part,
            )
            try:
                while True:
                    await stream.credits.acquire()
                    stream.next_block = block
                    stream.asked_at = asked = loop.time()
                    try:
                        chunk = await anext(chunks)
                    except StopAsyncIteration:
                        return
                    stream.asked_at = None
                    stream.late = False  # it delivers again: it may be hedged again later
                    elapsed = loop.time() - asked
                    kind = FIRST_CHUNK if block == stream.start_block else NEXT_CHUNK
                    self._latency.observe(endpoint, kind, elapsed)
                    self._hedge.observe(elapsed)
                    self._results.put_nowait((stream, block, chunk))
                    block += 1
            finally:
                stream.asked_at = None
                closer = getattr(chunks, "aclose", None)
                if closer is not None:
                    await closer()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._results.put_nowait((stream, block, exc))

    def _drop(self, stream: _Stream) -> None:
        """Stop using ``stream``: its task is cancelled, and not waited for (a remote stream's
        cancel is a message queued for the peer, so a frozen peer cannot hold us here)."""
        if stream in self._active:
            self._active.remove(stream)
        if stream.task is not None and not stream.task.done():
            stream.task.cancel()

    async def close(self) -> None:
        """Cancel every stream and wait for them to finish."""
        for stream in list(self._active):
            self._drop(stream)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- deadlines --------------------------------------------------------------------------

    def _allowed(self, stream: _Stream) -> float:
        """How long ``stream`` may take for the chunk it waits for: its drive's deadline."""
        kind = FIRST_CHUNK if stream.next_block == stream.start_block else NEXT_CHUNK
        return self._latency.deadline(stream.source.drive.endpoint, kind)

    def _deadline(self, stream: _Stream) -> float | None:
        """When (loop time) ``stream`` becomes late for the chunk it is waiting for."""
        if stream.asked_at is None or stream.late:
            return None
        return stream.asked_at + self._allowed(stream)

    def _owing(self, block: int, got: dict[int, tuple[_Stream, bytes]]) -> list[_Stream]:
        """The active streams still waiting for a chunk of ``block`` (or an earlier one)."""
        have = {stream for stream, _ in got.values()}
        return [s for s in self._active if s not in have and s.next_block <= block]

    def _next_deadline(self, block: int, got: dict[int, tuple[_Stream, bytes]]) -> float | None:
        """Seconds until the first owing stream becomes late (None: nothing to watch)."""
        if not self._spares:
            return None
        deadlines = [d for s in self._owing(block, got) if (d := self._deadline(s)) is not None]
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - asyncio.get_running_loop().time())

    def _hedge_late(self, block: int, got: dict[int, tuple[_Stream, bytes]]) -> None:
        """Start one spare at ``block`` for every owing stream whose deadline has passed."""
        now = asyncio.get_running_loop().time()
        for stream in self._owing(block, got):
            deadline = self._deadline(stream)
            if deadline is None or deadline > now:
                continue
            stream.late = True
            endpoint = stream.source.drive.endpoint
            self._latency.mark_late(endpoint, node_of(stream.source.drive))
            spare = self._start_spare(block)
            if spare is not None:
                self._stats.hedges += 1
            allowed = self._allowed(stream)
            self._stats.late_wait_ms += round(1000 * allowed)
            self._stats.events.append(ReadEvent(
                "late", endpoint, block, spare.drive.endpoint if spare else "", allowed
            ))  # fmt: skip

    # --- blocks -----------------------------------------------------------------------------

    def _block_len(self, block: int) -> int:
        block_size = self._meta.erasure.block_size
        return min(block_size, self._size - block * block_size)

    async def block(self, block: int) -> bytes:
        """The decoded bytes of one block; blocks must be asked for in order."""
        need = self._erasure.data
        if not self._started:
            self._started = True
            for _ in range(need):
                self._start_spare(block)
        got = self._stash.pop(block, {})
        while len(got) < need:
            try:
                async with asyncio.timeout(self._next_deadline(block, got)):
                    stream, number, item = await self._results.get()
            except TimeoutError:
                self._hedge_late(block, got)
                continue
            if isinstance(item, Exception):
                if stream not in self._active:
                    continue  # a stream we already let go of
                self._fail(stream, item, block, len(got))
            elif number > block:
                self._stash.setdefault(number, {})[stream.source.index] = (stream, item)
            elif number == block and stream.source.index not in got:
                got[stream.source.index] = (stream, item)
            else:  # a block already assembled, or a duplicate
                stream.credits.release()
        self._retire_stragglers(block)
        shards = {index: chunk for index, (_, chunk) in got.items()}
        for stream, _ in got.values():
            stream.credits.release()
        if self._erasure.needs_decode(list(shards)):
            self._stats.decodes += 1
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                None, self._erasure.decode, shards, self._block_len(block)
            )
        return self._erasure.decode(shards, self._block_len(block))

    def _fail(self, stream: _Stream, error: Exception, block: int, have: int) -> None:
        """A stream failed: report it, and start a replacement from the block still needed."""
        self._drop(stream)
        if isinstance(error, FileNotFound | FileCorrupt):
            self._report(stream.source, "corrupt" if isinstance(error, FileCorrupt) else "missing")
        if self._start_spare(block) is not None:
            self._stats.replacements += 1
            return
        if have + len(self._active) < self._erasure.data:
            raise ReadQuorum(
                f"{self._bucket}/{self._key}: only {have + len(self._active)} of "
                f"{self._erasure.data} shards readable ({error})"
            ) from error

    def _retire_stragglers(self, block: int) -> None:
        """After a hedge, keep the ``k`` best streams and cancel the rest, keeping their drives
        as last-resort spares. Best: not late, not still owing this block, lowest shard index.
        So a stalled stream is replaced for the rest of the object, while a stream that was
        merely slow and has caught up is kept over the parity alternate that beat it (reading
        data shards needs no decoding)."""
        if len(self._active) <= self._erasure.data:
            return

        def rank(stream: _Stream) -> tuple[bool, bool, int]:
            owing = stream.asked_at is not None and stream.next_block <= block
            return stream.late, owing, stream.source.index

        ranked = sorted(self._active, key=rank)
        for stream in ranked[self._erasure.data :]:
            self._drop(stream)
            self._spares.append(stream.source)
            self._stats.retired += 1
            self._stats.events.append(ReadEvent("retired", stream.source.drive.endpoint, block))
