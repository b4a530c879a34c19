"""Writing an object: encode block by block, stream shards to every drive, commit by quorum.

1. Check that a write quorum of the set's drives holds the bucket.
2. Cut the source into blocks. A small object (one short block whose shards fit
   ``inline_limit``) is encoded whole and each drive's framed shard goes into its metadata.
   Otherwise every drive gets a shard writer in its temporary area, and up to ``ENCODE_AHEAD``
   blocks encode in the thread pool while the previous block is written (all local drives in
   one pool job), and the object's MD5 takes each block on a thread of its own as it is read,
   so the encoder, the MD5 and the drive writes run at the same time.
3. Commit under the key's write lock: each drive renames the data into place, metadata last.
   Without a write quorum of renames, the drives that renamed are rolled back. Drives that
   missed the write are reported to the heal hook.

:class:`ShardWriters` (one writer per drive position) is public for the healer, which streams
rebuilt shards to the drives that need them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import time
import uuid
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from storage import bitrot
from storage.buckets import check_bucket
from storage.drive import Buffer, ShardWriter
from storage.erasure import Erasure
from storage.erasure_set import ErasureSet, Results
from storage.errors import (
    BucketNotFound,
    DriveNotFound,
    FileNotFound,
    IncompleteBody,
    ObjectNotFound,
    StorageError,
    VolumeNotFound,
    WriteQuorum,
)
from storage.local import LocalShardWriter, write_local_shards
from storage.locks import KeyLocks
from storage.meta import ErasureInfo, ObjectMeta
from storage.names import validate_bucket, validate_object
from storage.placement import shard_distribution
from storage.quorum import reduce_quorum

INLINE_LIMIT = 128 * 1024
ENCODE_AHEAD = 2  # blocks encoding in the thread pool ahead of the one being written

#: ``report(position, reason)``: tell the healer about a drive that missed a write.
Report = Callable[[int, str], None]
#: Checked under the key's write lock just before the commit, with the version a read quorum
#: holds now (None when there is none): raises (PreconditionFailed) to refuse the write.
Precondition = Callable[[ObjectMeta | None], None]


@dataclasses.dataclass(frozen=True)
class PutOptions:
    """What a put stores besides the data and the content type.

    ``checksums`` is called once the source has ended (a checksum sent in a trailer is known
    only then); ``precondition`` makes the put conditional (see :data:`Precondition`)."""

    sys_meta: dict[str, str] = dataclasses.field(default_factory=dict)
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    checksums: Callable[[], dict[str, str]] | None = None
    checksum_type: str = ""
    precondition: Precondition | None = None


async def _attempt(coro: Awaitable[object]) -> StorageError | None:
    try:
        await coro
    except StorageError as exc:
        return exc
    return None


class BlockSource:
    """Cuts an async byte source into blocks of ``block_size``; a short block means the end.

    Each block is copied once: the pieces that make it up are kept as they arrived (the piece
    that crosses a block boundary as two memoryviews of itself) and joined when the block is
    complete. A piece that is exactly one block is passed on as it is, without a copy. Blocks
    are immutable ``bytes``, so the encoder, the MD5 and the shard writers can share views of
    one block safely."""

    def __init__(self, source: AsyncIterable[bytes], block_size: int) -> None:
        self._iter = aiter(source)
        self._block_size = block_size
        self._pieces: list[bytes | memoryview] = []
        self._buffered = 0
        self._done = False
        self.total = 0

    async def next(self) -> bytes | None:
        size = self._block_size
        while not self._done and self._buffered < size:
            try:
                chunk = await anext(self._iter)
            except StopAsyncIteration:
                self._done = True
                break
            if not chunk:
                continue
            if type(chunk) is not bytes:  # a buffer its producer may reuse: keep a copy
                chunk = bytes(chunk)
            if not self._pieces and len(chunk) == size:
                self.total += size
                return chunk
            self._pieces.append(chunk)
            self._buffered += len(chunk)
        if not self._buffered:
            return None
        block = self._take(min(size, self._buffered))
        self.total += len(block)
        return block

    def _take(self, size: int) -> bytes:
        """Join the first ``size`` buffered bytes into one block (the one copy)."""
        pieces, taken, rest = self._pieces, 0, 0
        count = 0
        for piece in pieces:
            count += 1
            taken += len(piece)
            if taken >= size:
                rest = taken - size
                break
        head = pieces[:count]
        if rest:
            last = memoryview(head[-1])
            head[-1] = last[: len(last) - rest]
            self._pieces = [last[len(last) - rest :], *pieces[count:]]
        else:
            self._pieces = pieces[count:]
        self._buffered -= size
        return head[0] if len(head) == 1 and isinstance(head[0], bytes) else b"".join(head)


async def one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


class ShardWriters:
    """One shard writer per drive position (None where a drive failed or was not asked)."""

    def __init__(self, eset: ErasureSet, writers: list[ShardWriter | None]) -> None:
        self.eset = eset
        self.writers = writers
        self.errors: list[StorageError] = []

    @classmethod
    async def open(cls, eset: ErasureSet, upload_id: str) -> ShardWriters:
        """A writer on every drive of the set; WriteQuorum when too few accept."""
        opened = await eset.fan_out(lambda drive: drive.create_shard(upload_id))
        writers = cls(eset, [None if isinstance(w, StorageError) else w for w in opened])
        writers.errors = [r for r in opened if isinstance(r, StorageError)]
        try:
            writers.require_quorum()
        except WriteQuorum:
            await writers.abort_all()
            raise
        return writers

    @property
    def live(self) -> int:
        return sum(1 for w in self.writers if w is not None)

    def require_quorum(self) -> None:
        results: list[object] = [w if w is not None else DriveNotFound() for w in self.writers]
        reduce_quorum(
            results,
            self.eset.write_quorum,
            short=lambda why: WriteQuorum(
                f"only {self.live} of {len(self.writers)} drives in set {self.eset.index} "
                f"accepted the write, {self.eset.write_quorum} needed "
                f"({', '.join(type(e).__name__ for e in self.errors) or why})"
            ),
        )

    async def write(self, shards: Sequence[Buffer], distribution: Sequence[int]) -> None:
        """Write each live drive its shard of one block; a failing drive is dropped.

        The shards for local drives are written in one thread-pool job (see
        :func:`~storage.local.write_local_shards`); other drives are written concurrently."""

        async def write_one(position: int, writer: ShardWriter) -> None:
            try:
                await writer.write(shards[distribution[position]])
            except StorageError as exc:
                await self._drop(position, writer, exc)

        async def write_local(batch: list[tuple[int, LocalShardWriter]]) -> None:
            jobs = [(w, shards[distribution[pos]]) for pos, w in batch]
            failures = await write_local_shards(jobs)
            for (position, writer), exc in zip(batch, failures, strict=True):
                if exc is not None:
                    await self._drop(position, writer, exc)

        local: list[tuple[int, LocalShardWriter]] = []
        others: list[Awaitable[None]] = []
        for position, writer in enumerate(self.writers):
            if isinstance(writer, LocalShardWriter) and writer.batchable:
                local.append((position, writer))
            elif writer is not None:
                others.append(write_one(position, writer))
        if local:
            others.append(write_local(local))
        await asyncio.gather(*others)

    async def _drop(self, position: int, writer: ShardWriter, exc: StorageError) -> None:
        self.errors.append(exc)
        self.writers[position] = None
        await _attempt(writer.abort())

    async def finish(self) -> list[bool]:
        """Close every writer; which positions now hold a complete shard."""
        finished = await asyncio.gather(
            *(_attempt(w.commit()) if w is not None else _none() for w in self.writers)
        )
        return [
            w is not None and not isinstance(r, StorageError)
            for w, r in zip(self.writers, finished, strict=True)
        ]

    async def abort_all(self) -> None:
        await asyncio.gather(*(_attempt(w.abort()) for w in self.writers if w is not None))


async def _none() -> None:
    return None


async def put_object(
    eset: ErasureSet,
    locks: KeyLocks,
    bucket: str,
    key: str,
    source: AsyncIterable[bytes] | bytes,
    *,
    size: int | None,
    content_type: str,
    user_meta: dict[str, str] | None,
    block_size: int,
    inline_limit: int,
    report: Report,
    on_rollback: Callable[[], None],
    options: PutOptions | None = None,
) -> ObjectMeta:
    """Store an object in ``eset`` and return its metadata (see the module docstring)."""
    validate_bucket(bucket)
    validate_object(key)
    options = options or PutOptions()
    await check_bucket(eset, bucket)
    blocks = BlockSource(one_chunk(source) if isinstance(source, bytes) else source, block_size)
    erasure = Erasure(eset.data, eset.parity, block_size)
    template = ObjectMeta(
        size=0,
        etag="",
        mod_time_ns=time.time_ns(),
        data_dir=uuid.uuid4().hex,
        erasure=ErasureInfo(
            data=eset.data,
            parity=eset.parity,
            block_size=block_size,
            distribution=shard_distribution(bucket, key, len(eset.drives)),
        ),
        content_type=content_type,
        user_meta=dict(user_meta or {}),
        sys_meta=dict(options.sys_meta),
        tags=dict(options.tags),
        checksum_type=options.checksum_type,
    )
    upload_id = uuid.uuid4().hex
    md5 = hashlib.md5()
    first = await blocks.next()
    writers: ShardWriters | None = None
    inline: list[bytes] | None = None
    if first is None or (len(first) < block_size and erasure.shard_len(len(first)) <= inline_limit):
        inline = await _encode_inline(erasure, template, first or b"", md5)
    else:
        writers = await stream_shards(
            eset, erasure, template.erasure.distribution, upload_id, first, blocks, md5
        )
    try:
        if size is not None and blocks.total != size:
            raise IncompleteBody(f"expected {size} bytes, got {blocks.total}")
        checksums = options.checksums() if options.checksums is not None else {}
    except BaseException:
        if writers is not None:
            await writers.abort_all()
        raise
    meta = dataclasses.replace(
        template, size=blocks.total, etag=md5.hexdigest(), checksums=dict(checksums)
    )
    usable = [True] * len(eset.drives) if writers is None else await writers.finish()
    await commit(
        eset, locks, bucket, key, upload_id, meta, usable, inline, report, on_rollback,
        precondition=options.precondition,
    )  # fmt: skip
    return meta


async def _encode_inline(
    erasure: Erasure, template: ObjectMeta, data: bytes, md5: Any
) -> list[bytes]:
    """Encode a small object whole; each drive's framed shard goes into its metadata."""
    md5.update(data)
    if not data:
        return [b""] * erasure.total
    loop = asyncio.get_running_loop()
    shards = await loop.run_in_executor(None, erasure.encode, data)
    chunk_size = template.erasure.shard_chunk_size()
    return [bitrot.frame_all(shard, chunk_size) for shard in shards]


async def stream_shards(
    eset: ErasureSet,
    erasure: Erasure,
    distribution: Sequence[int],
    upload_id: str,
    first: bytes | None,
    blocks: BlockSource,
    md5: Any,
) -> ShardWriters:
    """Encode and write every block, ``ENCODE_AHEAD`` blocks encoding ahead of the writes.

    ``first`` is the first block, already taken from ``blocks`` (None: the source is empty,
    and every drive gets an empty shard)."""
    writers = await ShardWriters.open(eset, upload_id)
    loop = asyncio.get_running_loop()
    # The object's MD5 takes the blocks in order, on a thread of its own, from the moment each
    # block is read: it overlaps the encoding and the writes instead of waiting for them.
    md5_lane = ThreadPoolExecutor(max_workers=1, thread_name_prefix="put-md5")
    encoding: deque[tuple[asyncio.Future[list[Buffer]], asyncio.Future[None]]] = deque()
    writing: asyncio.Future[Any] | None = None
    source_done = False

    def start(block: bytes) -> None:
        encoding.append(
            (
                loop.run_in_executor(None, erasure.encode_views, block),
                loop.run_in_executor(md5_lane, md5.update, block),
            )
        )

    async def refill() -> None:
        nonlocal source_done
        while not source_done and len(encoding) < ENCODE_AHEAD:
            block = await blocks.next()
            if block is None:
                source_done = True
                return
            start(block)

    try:
        if first is not None:
            start(first)
            await refill()
        while encoding:
            encoded, hashed = encoding[0]
            shards = await encoded
            writing = asyncio.ensure_future(writers.write(shards, distribution))
            await refill()
            await writing
            writing = None
            # The block leaves the pipeline once hashed too: at most ENCODE_AHEAD + 1 blocks
            # are held, however far the MD5 falls behind.
            await hashed
            encoding.popleft()
            writers.require_quorum()
    except BaseException:
        pending: list[asyncio.Future[Any]] = [f for pair in encoding for f in pair]
        if writing is not None:
            pending.append(writing)
        for future in pending:
            future.cancel()
            with contextlib.suppress(BaseException):
                await future
        await writers.abort_all()
        raise
    finally:
        md5_lane.shutdown(wait=False)
    return writers


async def commit(
    eset: ErasureSet,
    locks: KeyLocks,
    bucket: str,
    key: str,
    upload_id: str,
    meta: ObjectMeta,
    usable: Sequence[bool],
    inline: list[bytes] | None,
    report: Report,
    on_rollback: Callable[[], None],
    *,
    precondition: Precondition | None = None,
) -> None:
    """Rename the staged data into place on each usable drive; keep it or roll it back.

    ``precondition`` is checked under the key's write lock before anything is renamed; when it
    raises, the staged data is dropped and nothing changes."""
    distribution = meta.erasure.distribution

    async def rename(position: int) -> None:
        drive = eset.drives[position]
        if not usable[position]:
            raise DriveNotFound("shard write failed")
        if not drive.is_online():
            raise DriveNotFound(f"drive {drive.endpoint} is offline")
        index = distribution[position]
        copy = meta.for_drive(index, inline[index] if inline is not None else None)
        await drive.rename_data(upload_id, bucket, key, copy)

    async with locks.write((bucket, key)):
        if precondition is not None:
            try:
                precondition(await current_version(eset, bucket, key))
            except BaseException:
                await _undo(eset, upload_id, bucket, key, range(len(eset.drives)))
                raise
        results: Results[None] = list(
            await asyncio.gather(*(_attempt(rename(p)) for p in range(len(eset.drives))))
        )
        try:
            agreement = reduce_quorum(
                results,
                eset.write_quorum,
                verdicts={VolumeNotFound: BucketNotFound(f"bucket {bucket} not found")},
                short=lambda why: WriteQuorum(
                    f"put {bucket}/{key}: set {eset.index} needs {eset.write_quorum} drives to "
                    f"commit; rolled back ({why})"
                ),
            )
        except StorageError:
            on_rollback()
            await _undo(eset, upload_id, bucket, key, range(len(eset.drives)))
            raise
        await asyncio.gather(
            *(
                _attempt(eset.drives[pos].commit_rename(upload_id, bucket, key))
                for pos in agreement.positions
            )
        )
    missed = [pos for pos, r in enumerate(results) if isinstance(r, StorageError)]
    for position in missed:
        report(position, "write-missed")
    await _undo(eset, upload_id, bucket, key, missed)


async def current_version(eset: ErasureSet, bucket: str, key: str) -> ObjectMeta | None:
    """The version a read quorum holds now, or None when there is none (no lock taken: the
    caller holds the key's write lock)."""
    copies = await eset.read_metadata(bucket, key)
    try:
        return eset.pick_metadata(bucket, key, copies).require()
    except (ObjectNotFound, FileNotFound):
        return None


async def _undo(
    eset: ErasureSet, upload_id: str, bucket: str, key: str, positions: Sequence[int]
) -> None:
    await asyncio.gather(
        *(
            _attempt(eset.drives[pos].undo_rename(upload_id, bucket, key))
            for pos in positions
            if eset.drives[pos].is_online()
        )
    )
