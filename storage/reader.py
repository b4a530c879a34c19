"""Hedged shard reads: fetch k shards per block, replacing failed and slow sources.

The fetcher starts ``k`` shard streams, data shards first, and keeps the other drives as
alternates (Tahoe's rule). Every stream reads ahead at most ``READ_AHEAD`` chunks; a chunk's
credit returns only when its block has been assembled, so memory stays bounded however far one
stream runs ahead of another.

- A stream that fails (missing or corrupt shard, drive error) is replaced at once by the next
  alternate, starting at the block still needed. Missing and corrupt shards go to the heal hook.
- When no chunk arrives within the hedge delay, one more alternate starts. The first ``k``
  chunks of a block win; after the block, the stream that fell behind is cancelled and kept as
  a spare.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

from storage.drive import Drive
from storage.erasure import Erasure
from storage.errors import FileCorrupt, FileNotFound, ReadQuorum
from storage.latency import HedgeDelay
from storage.meta import ObjectMeta

READ_AHEAD = 2


@dataclass
class ReadStats:
    """Counters a test or the admin API can look at."""

    hedges: int = 0
    replacements: int = 0
    decodes: int = 0


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
        self._stats = stats
        self._report = report
        self._active: list[_Stream] = []
        self._results: asyncio.Queue[_Item] = asyncio.Queue()
        self._stash: dict[int, dict[int, tuple[_Stream, bytes]]] = {}
        self._started = False

    # --- streams ----------------------------------------------------------------------------

    def _start(self, source: ShardSource, block: int) -> None:
        stream = _Stream(source=source, start_block=block)
        stream.task = asyncio.create_task(self._pump(stream))
        self._active.append(stream)

    def _start_spare(self, block: int) -> bool:
        if not self._spares:
            return False
        self._start(self._spares.pop(0), block)
        return True

    async def _pump(self, stream: _Stream) -> None:
        """Read one shard from ``start_block`` on, putting each chunk on the results queue."""
        loop = asyncio.get_running_loop()
        block = stream.start_block
        offset = block * self._chunk_size
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
                    asked = loop.time()
                    try:
                        chunk = await anext(chunks)
                    except StopAsyncIteration:
                        return
                    self._hedge.observe(loop.time() - asked)
                    self._results.put_nowait((stream, block, chunk))
                    block += 1
            finally:
                closer = getattr(chunks, "aclose", None)
                if closer is not None:
                    await closer()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._results.put_nowait((stream, block, exc))

    def _drop(self, stream: _Stream) -> None:
        if stream in self._active:
            self._active.remove(stream)
        if stream.task is not None and not stream.task.done():
            stream.task.cancel()

    async def close(self) -> None:
        """Cancel every stream and wait for them to finish."""
        tasks = [s.task for s in self._active if s.task is not None]
        for stream in list(self._active):
            self._drop(stream)
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

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
                async with asyncio.timeout(self._hedge.delay):
                    stream, number, item = await self._results.get()
            except TimeoutError:
                if self._start_spare(block):
                    self._stats.hedges += 1
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
        self._retire_stragglers(got)
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
        if self._start_spare(block):
            self._stats.replacements += 1
            return
        if have + len(self._active) < self._erasure.data:
            raise ReadQuorum(
                f"{self._bucket}/{self._key}: only {have + len(self._active)} of "
                f"{self._erasure.data} shards readable ({error})"
            ) from error

    def _retire_stragglers(self, got: dict[int, tuple[_Stream, bytes]]) -> None:
        """After a hedge, cancel the streams that missed this block; keep them as spares."""
        if len(self._active) <= self._erasure.data:
            return
        winners = {stream for stream, _ in got.values()}
        for stream in list(self._active):
            if stream not in winners and len(self._active) > self._erasure.data:
                self._drop(stream)
                self._spares.append(stream.source)
