"""Reading an object: choose the version a read quorum agrees on, then stream its blocks.

The metadata read takes the key's *read* lock, so a reader never sees a version whose commit
is still in progress in this process (and might yet be rolled back), while concurrent readers
of one key run in parallel. Small objects are decoded from the shards inlined in the metadata;
larger ones stream block by block through a :class:`~storage.reader.ShardFetcher`, which
prefers data shards, replaces failed shards at once and replaces late ones block by block
(each drive timed against its own recent latency, :attr:`ErasureSet.latency`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType

from storage import bitrot
from storage.erasure import Erasure
from storage.erasure_set import ErasureSet
from storage.errors import FileCorrupt, FileNotFound, ReadQuorum, StorageError, VolumeNotFound
from storage.info import ObjectInfo
from storage.latency import HedgeDelay
from storage.locks import KeyLocks
from storage.meta import ObjectMeta
from storage.names import validate_bucket, validate_object
from storage.reader import ReadStats, ShardFetcher, ShardSource

#: ``report(position, reason)``: tell the healer about a damaged copy.
Report = Callable[[int, str], None]


@dataclass(frozen=True)
class ChosenVersion:
    """The version a read quorum agreed on, and every drive's copy (or why it has none)."""

    meta: ObjectMeta
    copies: list[ObjectMeta | StorageError]

    def holders(self) -> list[int]:
        """Positions whose copy is of the chosen version."""
        version = self.meta.version_key()
        return [
            position
            for position, copy in enumerate(self.copies)
            if isinstance(copy, ObjectMeta) and copy.version_key() == version
        ]


async def choose_version(
    eset: ErasureSet, locks: KeyLocks, bucket: str, key: str, report: Report
) -> ChosenVersion:
    """Read every drive's metadata and pick the version a read quorum agrees on.

    Copies that are outdated, missing or corrupt are reported to the heal hook."""
    validate_bucket(bucket)
    validate_object(key)
    async with locks.read((bucket, key)):
        copies = await eset.read_metadata(bucket, key)
    chosen = eset.pick_metadata(bucket, key, copies).require()
    version = chosen.version_key()
    for position, copy in enumerate(copies):
        if isinstance(copy, ObjectMeta) and copy.version_key() != version:
            report(position, "outdated")
        elif isinstance(copy, FileNotFound | VolumeNotFound):
            report(position, "missing")
        elif isinstance(copy, FileCorrupt):
            report(position, "corrupt")
    return ChosenVersion(chosen, copies)


class ObjectReader:
    """A streaming object read. Use ``async with`` (or iterate to the end) so streams close."""

    def __init__(
        self, info: ObjectInfo, offset: int, length: int, chunks: AsyncIterator[bytes]
    ) -> None:
        self.info = info
        self.offset = offset
        self.length = length
        self._chunks = chunks

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks

    async def read_all(self) -> bytes:
        """Read the whole range into memory (for small objects and tests)."""
        parts = [chunk async for chunk in self._chunks]
        return b"".join(parts)

    async def aclose(self) -> None:
        closer = getattr(self._chunks, "aclose", None)
        if closer is not None:
            await closer()

    async def __aenter__(self) -> ObjectReader:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def open_reader(
    eset: ErasureSet,
    bucket: str,
    key: str,
    chosen: ChosenVersion,
    offset: int,
    length: int,
    *,
    hedge: HedgeDelay,
    stats: ReadStats,
    report: Report,
) -> ObjectReader:
    """A reader of ``[offset, offset + length)`` of the chosen version (already clamped)."""
    meta = chosen.meta
    info = ObjectInfo.from_meta(bucket, key, meta)
    if length == 0:
        chunks: AsyncIterator[bytes] = _empty()
    elif meta.inline is not None:
        chunks = _inline_chunks(bucket, key, chosen, offset, length, report)
    else:
        sources = [
            ShardSource(position, copy.erasure.index, eset.drives[position])
            for position in chosen.holders()
            if isinstance(copy := chosen.copies[position], ObjectMeta)
            and eset.drives[position].is_online()
        ]

        def fetcher(part: int, size: int, first: int, last: int) -> ShardFetcher:
            return ShardFetcher(
                bucket=bucket,
                key=key,
                meta=meta,
                sources=list(sources),
                first_block=first,
                last_block=last,
                hedge=hedge,
                stats=stats,
                report=lambda source, reason: report(source.position, reason),
                part=part,
                size=size,
                latency=eset.latency,
            )

        chunks = _segment_chunks(fetcher, meta, offset, length)
    return ObjectReader(info, offset, length, chunks)


FetcherFactory = Callable[[int, int, int, int], ShardFetcher]


async def _segment_chunks(
    make: FetcherFactory, meta: ObjectMeta, offset: int, length: int
) -> AsyncIterator[bytes]:
    """The bytes ``[offset, offset + length)`` of an object, across its parts: each part is
    coded on its own, so a range that crosses a part boundary reads from one fetcher per part."""
    block_size = meta.erasure.block_size
    start = 0
    end = offset + length
    for part, size in meta.segments():
        lo, hi = max(offset, start), min(end, start + size)
        if lo < hi:
            first, last = (lo - start) // block_size, (hi - start - 1) // block_size
            chunks = _stream_chunks(make(part, size, first, last), block_size, lo - start, hi - lo)
            try:
                async for chunk in chunks:
                    yield chunk
            finally:
                await chunks.aclose()  # closes the part's fetcher even when the reader stops
        start += size
        if start >= end:
            return


async def _inline_chunks(
    bucket: str, key: str, chosen: ChosenVersion, offset: int, length: int, report: Report
) -> AsyncIterator[bytes]:
    meta = chosen.meta
    erasure = Erasure(meta.erasure.data, meta.erasure.parity, meta.erasure.block_size)
    chunk_size = meta.erasure.shard_chunk_size()
    shard_size = meta.erasure.shard_size(meta.size)
    shards: dict[int, bytes] = {}
    ordered: Sequence[tuple[int, int, ObjectMeta]] = sorted(
        (copy.erasure.index, position, copy)
        for position in chosen.holders()
        if isinstance(copy := chosen.copies[position], ObjectMeta)
    )
    for index, position, copy in ordered:
        if len(shards) == erasure.data:
            break
        try:
            shards[index] = b"".join(
                bitrot.iter_verified(copy.inline or b"", chunk_size, shard_size)
            )
        except FileCorrupt:
            report(position, "corrupt")
    if len(shards) < erasure.data:
        raise ReadQuorum(f"{bucket}/{key}: only {len(shards)} inline shards are intact")
    loop = asyncio.get_running_loop()
    data = await loop.run_in_executor(None, erasure.decode, shards, meta.size)
    yield data[offset : offset + length]


async def _stream_chunks(
    fetcher: ShardFetcher, block_size: int, offset: int, length: int
) -> AsyncGenerator[bytes, None]:
    try:
        end = offset + length
        for number in range(offset // block_size, (end - 1) // block_size + 1):
            data = await fetcher.block(number)
            start = number * block_size
            lo = max(offset - start, 0)
            hi = min(end - start, len(data))
            yield data if (lo == 0 and hi == len(data)) else data[lo:hi]
    finally:
        await fetcher.close()


async def _empty() -> AsyncIterator[bytes]:
    empty: tuple[bytes, ...] = ()
    for chunk in empty:
        yield chunk
