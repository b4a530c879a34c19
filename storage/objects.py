"""The object layer: buckets and objects on top of erasure sets of drives.

- ``put_object`` streams from an async byte source block by block. Encoding block N+1 runs in
  the thread pool while block N is being written, so at most a few blocks are in memory.
- The write needs write quorum (k, or k+1 when k = m). Shards go to each drive's temporary
  area; each drive then commits by rename, metadata last. Without quorum, the drives that
  committed are rolled back and the caller gets ``WriteQuorum``.
- ``get_object`` reads the metadata from every drive, keeps the version at least k agree on
  (the latest), and streams blocks through a :class:`~storage.reader.ShardFetcher`.
- Every missing, corrupt or outdated shard found on the way goes to the heal hook.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

from storage import bitrot
from storage.drive import Drive, ListEntry, ListPage, ShardWriter
from storage.erasure import DEFAULT_BLOCK_SIZE, Erasure
from storage.errors import (
    BucketExists,
    BucketNotEmpty,
    BucketNotFound,
    DriveNotFound,
    FileCorrupt,
    FileNotFound,
    IncompleteBody,
    InvalidArgument,
    InvalidRange,
    ObjectNotFound,
    ReadQuorum,
    StorageError,
    UnformattedDrive,
    VolumeExists,
    VolumeNotEmpty,
    VolumeNotFound,
    WriteQuorum,
)
from storage.format import FormatInfo, plan_format
from storage.latency import HedgeDelay
from storage.meta import ErasureInfo, ObjectMeta
from storage.names import validate_bucket, validate_object, validate_prefix
from storage.placement import (
    check_parity,
    default_parity,
    seed_from_deployment,
    set_index,
    shard_distribution,
    write_quorum,
)
from storage.reader import ReadStats, ShardFetcher, ShardSource

T = TypeVar("T")

INLINE_LIMIT = 128 * 1024
ENCODE_AHEAD = 2  # blocks encoding in the thread pool ahead of the one being written
MAX_KEYS = 1000


@dataclass(frozen=True)
class HealReport:
    """A shard or metadata copy that a read or write found missing, corrupt or outdated."""

    bucket: str
    key: str
    set_index: int
    position: int
    endpoint: str
    reason: str  # "missing", "corrupt", "outdated" or "write-missed"


HealHook = Callable[[HealReport], None]


@dataclass(frozen=True)
class ObjectInfo:
    """What ``head``, ``get`` and ``list`` say about an object."""

    bucket: str
    key: str
    size: int
    etag: str
    mod_time_ns: int
    content_type: str = "application/octet-stream"
    user_meta: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_meta(cls, bucket: str, key: str, meta: ObjectMeta) -> ObjectInfo:
        return cls(
            bucket=bucket,
            key=key,
            size=meta.size,
            etag=meta.etag,
            mod_time_ns=meta.mod_time_ns,
            content_type=meta.content_type,
            user_meta=dict(meta.user_meta),
        )


@dataclass(frozen=True)
class BucketInfo:
    name: str
    created_ns: int


@dataclass(frozen=True)
class ListResult:
    """One page of a listing. Pass ``next_token`` back as ``continuation_token``."""

    objects: list[ObjectInfo]
    prefixes: list[str]
    is_truncated: bool
    next_token: str | None


@dataclass
class LayerStats(ReadStats):
    heal_reports: int = 0
    rollbacks: int = 0


@dataclass
class ErasureSet:
    """The drives of one set, in position order, and its erasure layout."""

    index: int
    drives: list[Drive]
    data: int
    parity: int

    @property
    def write_quorum(self) -> int:
        return write_quorum(self.data, self.parity)


_MIN_STRAGGLER_WAIT = 0.2
_MAX_STRAGGLER_WAIT = 2.0


async def _attempt(coro: Awaitable[T]) -> T | StorageError:
    """Await ``coro`` and return its StorageError instead of raising it."""
    try:
        return await coro
    except StorageError as exc:
        return exc


def _token_encode(marker: str) -> str:
    return base64.urlsafe_b64encode(marker.encode()).decode()


def _token_decode(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidArgument("bad continuation token") from exc


class _BlockSource:
    """Cuts an async byte source into blocks of ``block_size``; a short block means the end."""

    def __init__(self, source: AsyncIterable[bytes], block_size: int) -> None:
        self._iter = aiter(source)
        self._block_size = block_size
        self._buffer = bytearray()
        self._done = False
        self.total = 0

    async def next(self) -> bytes | None:
        size = self._block_size
        while not self._done and len(self._buffer) < size:
            try:
                chunk = await anext(self._iter)
            except StopAsyncIteration:
                self._done = True
                break
            if not self._buffer and len(chunk) == size:
                self.total += size
                return bytes(chunk)
            self._buffer += chunk
        if not self._buffer:
            return None
        block = bytes(self._buffer[:size])
        del self._buffer[:size]
        self.total += len(block)
        return block


async def _one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


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


class ObjectLayer:
    """Buckets and objects over one or more erasure sets."""

    def __init__(
        self,
        sets: Sequence[Sequence[Drive]],
        *,
        parity: int | None = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
        heal_hook: HealHook | None = None,
        hedge_floor: float = 0.025,
        inline_limit: int = INLINE_LIMIT,
        deployment_id: str = "",
    ) -> None:
        if not sets:
            raise InvalidArgument("an object layer needs at least one erasure set")
        self.sets: list[ErasureSet] = []
        for number, drives in enumerate(sets):
            count = len(drives)
            chosen = check_parity(count, parity) if parity is not None else default_parity(count)
            self.sets.append(ErasureSet(number, list(drives), count - chosen, chosen))
        self.block_size = block_size
        self.inline_limit = inline_limit
        self.heal_hook = heal_hook
        self.hedge = HedgeDelay(floor=hedge_floor)
        self.stats = LayerStats()
        self._seed = seed_from_deployment(deployment_id) if deployment_id else 0
        self._locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}

    @classmethod
    async def open(
        cls, drives: Sequence[Drive], set_drive_count: int, **options: Any
    ) -> ObjectLayer:
        """Format blank drives, check the rest agree, and build the layer in format order."""
        found: list[FormatInfo | None] = []
        for drive in drives:
            try:
                found.append(await drive.read_format())
            except UnformattedDrive:
                found.append(None)
        formats = plan_format(found, set_drive_count)
        for drive, old, new in zip(drives, found, formats, strict=True):
            if old is None:
                await drive.write_format(new)
        by_id = {fmt.drive_id: drive for drive, fmt in zip(drives, formats, strict=True)}
        layout = formats[0].sets
        sets = [[by_id[drive_id] for drive_id in drive_ids] for drive_ids in layout]
        return cls(sets, deployment_id=formats[0].deployment_id, **options)

    # --- helpers ----------------------------------------------------------------------------

    def _set_for(self, bucket: str, key: str) -> ErasureSet:
        return self.sets[set_index(bucket, key, len(self.sets), self._seed)]

    def _report(self, eset: ErasureSet, bucket: str, key: str, position: int, reason: str) -> None:
        self.stats.heal_reports += 1
        if self.heal_hook is not None:
            endpoint = eset.drives[position].endpoint
            self.heal_hook(HealReport(bucket, key, eset.index, position, endpoint, reason))

    @contextlib.asynccontextmanager
    async def _key_lock(self, bucket: str, key: str) -> AsyncIterator[None]:
        """Serialise commits of one key within this process."""
        name = (bucket, key)
        lock, users = self._locks.get(name, (asyncio.Lock(), 0))
        self._locks[name] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[name]
            if users == 1:
                del self._locks[name]
            else:
                self._locks[name] = (lock, users - 1)

    def straggler_wait(self) -> float:
        """How long to wait for the rest once a quorum answered: 4 hedge delays, 0.2-2s."""
        return min(max(4 * self.hedge.delay, _MIN_STRAGGLER_WAIT), _MAX_STRAGGLER_WAIT)

    async def _on_drives(
        self, eset: ErasureSet, call: Callable[[Drive], Awaitable[T]]
    ) -> list[T | StorageError]:
        """Run ``call`` on every drive of a set at once; offline drives fail without a call.

        A *frozen* peer (SIGSTOP, a stalled VM) keeps its connection up and answers nothing,
        so waiting for every drive would wait for the grid's failure detector. Once a write
        quorum has answered, the rest get :meth:`straggler_wait` more; a drive still silent then
        counts as failed for this call (its call is cancelled), as if it were offline.
        """
        loop = asyncio.get_running_loop()
        missing = object()  # "no answer yet" (None is a valid answer)
        results: list[Any] = [missing] * len(eset.drives)

        async def one(position: int, drive: Drive) -> None:
            if not drive.is_online():
                results[position] = DriveNotFound(f"drive {drive.endpoint} is offline")
                return
            try:
                results[position] = await call(drive)
            except StorageError as exc:
                results[position] = exc

        tasks = [loop.create_task(one(p, d)) for p, d in enumerate(eset.drives)]
        try:
            pending = set(tasks)
            quorum_at: float | None = None
            while pending:
                timeout = None
                if quorum_at is not None:
                    timeout = max(0.0, quorum_at + self.straggler_wait() - loop.time())
                done, pending = await asyncio.wait(
                    pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    break  # the stragglers' time is up
                if quorum_at is None and len(tasks) - len(pending) >= eset.write_quorum:
                    quorum_at = loop.time()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        late = f"no answer within {self.straggler_wait():.2f}s of the quorum"
        return [
            DriveNotFound(f"drive {drive.endpoint}: {late}") if result is missing else result
            for drive, result in zip(eset.drives, results, strict=True)
        ]

    @staticmethod
    def _summary(results: Sequence[object]) -> str:
        counts = Counter(type(r).__name__ for r in results if isinstance(r, StorageError))
        return ", ".join(f"{name} x{count}" for name, count in counts.most_common()) or "none"

    # --- buckets ----------------------------------------------------------------------------

    async def make_bucket(self, bucket: str) -> None:
        """Create a bucket on every drive; BucketExists when a quorum already has it."""
        validate_bucket(bucket)
        made: list[tuple[ErasureSet, list[object]]] = []
        for eset in self.sets:
            results = await self._on_drives(eset, lambda d: d.make_volume(bucket))
            made.append((eset, list(results)))
            ok = sum(1 for r in results if not isinstance(r, StorageError))
            exists = sum(1 for r in results if isinstance(r, VolumeExists))
            if ok + exists >= eset.write_quorum and exists >= eset.write_quorum:
                raise BucketExists(f"bucket {bucket} already exists")
            if ok + exists < eset.write_quorum:
                await self._undo_make_bucket(bucket, made)
                raise WriteQuorum(
                    f"make_bucket {bucket}: {ok + exists} of {len(eset.drives)} drives in set "
                    f"{eset.index} answered, {eset.write_quorum} needed "
                    f"({self._summary(results)})"
                )

    async def _undo_make_bucket(
        self, bucket: str, made: list[tuple[ErasureSet, list[object]]]
    ) -> None:
        for eset, results in made:
            for drive, result in zip(eset.drives, results, strict=True):
                if not isinstance(result, StorageError):
                    await _attempt(drive.delete_volume(bucket, force=True))

    async def list_buckets(self) -> list[BucketInfo]:
        """Buckets that a read quorum of the first set's drives hold."""
        eset = self.sets[0]
        results = await self._on_drives(eset, lambda d: d.list_volumes())
        seen: Counter[str] = Counter()
        created: dict[str, int] = {}
        for result in results:
            if isinstance(result, StorageError):
                continue
            for volume in result:
                seen[volume.name] += 1
                created[volume.name] = min(
                    created.get(volume.name, volume.created_ns), volume.created_ns
                )
        answered = sum(1 for r in results if not isinstance(r, StorageError))
        if answered < eset.data:
            raise ReadQuorum(f"list_buckets: {answered} drives answered, {eset.data} needed")
        return [BucketInfo(name, created[name]) for name in sorted(seen) if seen[name] >= eset.data]

    async def head_bucket(self, bucket: str) -> BucketInfo:
        validate_bucket(bucket)
        eset = self.sets[0]
        results = await self._on_drives(eset, lambda d: d.stat_volume(bucket))
        found = [r for r in results if not isinstance(r, StorageError)]
        if len(found) >= eset.data:
            return BucketInfo(bucket, min(v.created_ns for v in found))
        if sum(1 for r in results if isinstance(r, VolumeNotFound)) > len(eset.drives) - eset.data:
            raise BucketNotFound(f"bucket {bucket} not found")
        raise ReadQuorum(f"head_bucket {bucket}: {self._summary(results)}")

    async def delete_bucket(self, bucket: str) -> None:
        """Delete an empty bucket; BucketNotEmpty while it holds objects."""
        await self.head_bucket(bucket)
        if (await self.list_objects(bucket, max_keys=1)).objects:
            raise BucketNotEmpty(f"bucket {bucket} is not empty")
        for eset in self.sets:
            results = await self._on_drives(eset, lambda d: d.delete_volume(bucket))
            if any(isinstance(r, VolumeNotEmpty) for r in results):
                raise BucketNotEmpty(f"bucket {bucket} is not empty on some drives")
            ok = sum(
                1
                for r in results
                if not isinstance(r, StorageError) or isinstance(r, VolumeNotFound)
            )
            if ok < eset.write_quorum:
                raise WriteQuorum(f"delete_bucket {bucket}: {self._summary(results)}")

    async def _check_bucket(self, eset: ErasureSet, bucket: str) -> None:
        results = await self._on_drives(eset, lambda d: d.stat_volume(bucket))
        ok = sum(1 for r in results if not isinstance(r, StorageError))
        if ok >= eset.write_quorum:
            return
        if sum(1 for r in results if isinstance(r, VolumeNotFound)) > len(results) - eset.data:
            raise BucketNotFound(f"bucket {bucket} not found")
        raise WriteQuorum(
            f"{bucket}: only {ok} drives of set {eset.index} are usable, "
            f"{eset.write_quorum} needed ({self._summary(results)})"
        )

    # --- put --------------------------------------------------------------------------------

    async def put_object(
        self,
        bucket: str,
        key: str,
        source: AsyncIterable[bytes] | bytes,
        *,
        size: int | None = None,
        content_type: str = "application/octet-stream",
        user_meta: dict[str, str] | None = None,
    ) -> ObjectInfo:
        """Store an object from ``source`` (bytes or an async iterable of chunks).

        When ``size`` is given, a source that ends early or runs long raises IncompleteBody
        and nothing is stored.
        """
        validate_bucket(bucket)
        validate_object(key)
        eset = self._set_for(bucket, key)
        await self._check_bucket(eset, bucket)
        blocks = _BlockSource(
            _one_chunk(source) if isinstance(source, bytes) else source, self.block_size
        )
        erasure = Erasure(eset.data, eset.parity, self.block_size)
        template = ObjectMeta(
            size=0,
            etag="",
            mod_time_ns=time.time_ns(),
            data_dir=uuid.uuid4().hex,
            erasure=ErasureInfo(
                data=eset.data,
                parity=eset.parity,
                block_size=self.block_size,
                distribution=shard_distribution(bucket, key, len(eset.drives)),
            ),
            content_type=content_type,
            user_meta=dict(user_meta or {}),
        )
        upload_id = uuid.uuid4().hex
        md5 = hashlib.md5()
        first = await blocks.next()
        if first is None or (
            len(first) < self.block_size and erasure.shard_len(len(first)) <= self.inline_limit
        ):
            inline = await self._encode_inline(erasure, template, first or b"", md5)
            writers: list[ShardWriter | None] = [None] * len(eset.drives)
        else:
            inline = None
            writers = await self._stream_shards(
                eset, erasure, template, upload_id, first, blocks, md5
            )
        if size is not None and blocks.total != size:
            await self._abort_all(writers)
            raise IncompleteBody(f"expected {size} bytes, got {blocks.total}")
        meta = ObjectMeta(
            size=blocks.total,
            etag=md5.hexdigest(),
            mod_time_ns=template.mod_time_ns,
            data_dir=template.data_dir,
            erasure=template.erasure,
            content_type=content_type,
            user_meta=template.user_meta,
        )
        await self._commit(eset, bucket, key, upload_id, meta, writers, inline)
        return ObjectInfo.from_meta(bucket, key, meta)

    async def _encode_inline(
        self, erasure: Erasure, template: ObjectMeta, data: bytes, md5: Any
    ) -> list[bytes]:
        """Encode a small object whole; each drive's framed shard goes into its metadata."""
        md5.update(data)
        if not data:
            return [b""] * erasure.total
        loop = asyncio.get_running_loop()
        shards = await loop.run_in_executor(None, erasure.encode, data)
        chunk_size = template.erasure.shard_chunk_size()
        return [bitrot.frame_all(shard, chunk_size) for shard in shards]

    async def _stream_shards(
        self,
        eset: ErasureSet,
        erasure: Erasure,
        template: ObjectMeta,
        upload_id: str,
        first: bytes,
        blocks: _BlockSource,
        md5: Any,
    ) -> list[ShardWriter | None]:
        """Encode and write every block.

        Up to ``ENCODE_AHEAD`` blocks encode in the thread pool while the previous block is
        written, so the encoder, the MD5 and the drive writes run at the same time.
        """
        opened = await self._on_drives(eset, lambda d: d.create_shard(upload_id))
        writers: list[ShardWriter | None] = [
            None if isinstance(w, StorageError) else w for w in opened
        ]
        distribution = template.erasure.distribution
        loop = asyncio.get_running_loop()
        encoding: deque[tuple[bytes, asyncio.Future[list[bytes]]]] = deque()
        writing: asyncio.Task[None] | None = None
        source_done = False

        async def refill() -> None:
            nonlocal source_done
            while not source_done and len(encoding) < ENCODE_AHEAD:
                block = await blocks.next()
                if block is None:
                    source_done = True
                    return
                encoding.append((block, loop.run_in_executor(None, erasure.encode, block)))

        try:
            self._require_writers(eset, writers, opened)
            encoding.append((first, loop.run_in_executor(None, erasure.encode, first)))
            await refill()
            while encoding:
                block, future = encoding.popleft()
                shards = await future
                writing = asyncio.create_task(
                    self._write_block(eset, writers, distribution, shards, block, md5)
                )
                await refill()
                await writing
                writing = None
        except BaseException:
            pending: list[asyncio.Future[Any]] = [f for _, f in encoding]
            if writing is not None:
                pending.append(writing)
            for future in pending:
                future.cancel()
                with contextlib.suppress(BaseException):
                    await future
            await self._abort_all(writers)
            raise
        return writers

    def _require_writers(
        self, eset: ErasureSet, writers: Sequence[ShardWriter | None], results: Sequence[object]
    ) -> None:
        live = sum(1 for w in writers if w is not None)
        if live < eset.write_quorum:
            raise WriteQuorum(
                f"only {live} of {len(writers)} drives in set {eset.index} accepted the write, "
                f"{eset.write_quorum} needed ({self._summary(results)})"
            )

    async def _write_block(
        self,
        eset: ErasureSet,
        writers: list[ShardWriter | None],
        distribution: Sequence[int],
        shards: list[bytes],
        block: bytes,
        md5: Any,
    ) -> None:
        errors: list[object] = []

        async def write_one(position: int, writer: ShardWriter) -> None:
            try:
                await writer.write(shards[distribution[position]])
            except StorageError as exc:
                errors.append(exc)
                writers[position] = None
                await _attempt(writer.abort())

        loop = asyncio.get_running_loop()
        await asyncio.gather(
            loop.run_in_executor(None, md5.update, block),
            *(write_one(pos, w) for pos, w in enumerate(writers) if w is not None),
        )
        self._require_writers(eset, writers, errors)

    async def _abort_all(self, writers: Sequence[ShardWriter | None]) -> None:
        await asyncio.gather(*(_attempt(w.abort()) for w in writers if w is not None))

    async def _commit(
        self,
        eset: ErasureSet,
        bucket: str,
        key: str,
        upload_id: str,
        meta: ObjectMeta,
        writers: list[ShardWriter | None],
        inline: list[bytes] | None,
    ) -> None:
        """Finish the shards, rename into place on each drive, and keep or roll back."""
        distribution = meta.erasure.distribution
        finished = await asyncio.gather(
            *(_attempt(w.commit()) if w is not None else _none() for w in writers)
        )
        usable = [
            inline is not None or (w is not None and not isinstance(r, StorageError))
            for w, r in zip(writers, finished, strict=True)
        ]

        def copy_for(position: int) -> ObjectMeta:
            index = distribution[position]
            return meta.for_drive(index, inline[index] if inline is not None else None)

        async def rename(position: int, drive: Drive) -> StorageError | None:
            if not usable[position]:
                return DriveNotFound("shard write failed")
            if not drive.is_online():
                return DriveNotFound(f"drive {drive.endpoint} is offline")
            return await _attempt(drive.rename_data(upload_id, bucket, key, copy_for(position)))

        async with self._key_lock(bucket, key):
            results = await asyncio.gather(
                *(rename(pos, drive) for pos, drive in enumerate(eset.drives))
            )
            done = [pos for pos, r in enumerate(results) if not isinstance(r, StorageError)]
            if len(done) < eset.write_quorum:
                self.stats.rollbacks += 1
                await asyncio.gather(
                    *(
                        _attempt(eset.drives[pos].undo_rename(upload_id, bucket, key))
                        for pos in range(len(eset.drives))
                        if eset.drives[pos].is_online()
                    )
                )
                if sum(1 for r in results if isinstance(r, VolumeNotFound)) >= eset.write_quorum:
                    raise BucketNotFound(f"bucket {bucket} not found")
                raise WriteQuorum(
                    f"put {bucket}/{key}: {len(done)} of {len(eset.drives)} drives committed, "
                    f"{eset.write_quorum} needed; rolled back ({self._summary(results)})"
                )
            await asyncio.gather(
                *(_attempt(eset.drives[pos].commit_rename(upload_id, bucket, key)) for pos in done)
            )
        for position, result in enumerate(results):
            if isinstance(result, StorageError):
                self._report(eset, bucket, key, position, "write-missed")
                if eset.drives[position].is_online():
                    await _attempt(eset.drives[position].undo_rename(upload_id, bucket, key))

    # --- metadata quorum --------------------------------------------------------------------

    async def _quorum_meta(
        self, bucket: str, key: str
    ) -> tuple[ErasureSet, ObjectMeta, list[ObjectMeta | StorageError]]:
        """Read every drive's metadata and pick the latest version k drives agree on."""
        validate_bucket(bucket)
        validate_object(key)
        eset = self._set_for(bucket, key)
        # Taking the key's lock keeps a reader in this process from seeing a version whose
        # commit is still in progress (and might yet be rolled back).
        async with self._key_lock(bucket, key):
            results = await self._on_drives(eset, lambda d: d.read_metadata(bucket, key))
        votes: Counter[tuple[Any, ...]] = Counter(
            r.version_key() for r in results if isinstance(r, ObjectMeta)
        )
        agreed = [v for v, count in votes.items() if count >= eset.data]
        if not agreed:
            absent = [r for r in results if isinstance(r, FileNotFound | VolumeNotFound)]
            if len(absent) > len(results) - eset.data:
                if sum(1 for r in absent if isinstance(r, VolumeNotFound)) > len(absent) // 2:
                    raise BucketNotFound(f"bucket {bucket} not found")
                raise ObjectNotFound(f"{bucket}/{key} not found")
            raise ReadQuorum(
                f"{bucket}/{key}: no version is held by {eset.data} drives "
                f"({self._summary(results)}; versions {sorted(votes.values(), reverse=True)})"
            )
        chosen_key = max(agreed, key=lambda v: (v[0], v[1]))
        chosen = next(
            r for r in results if isinstance(r, ObjectMeta) and r.version_key() == chosen_key
        )
        for position, result in enumerate(results):
            if isinstance(result, ObjectMeta) and result.version_key() != chosen_key:
                self._report(eset, bucket, key, position, "outdated")
            elif isinstance(result, FileNotFound | VolumeNotFound):
                self._report(eset, bucket, key, position, "missing")
            elif isinstance(result, FileCorrupt):
                self._report(eset, bucket, key, position, "corrupt")
        return eset, chosen, results

    async def head_object(self, bucket: str, key: str) -> ObjectInfo:
        """The object's metadata, as a read quorum agrees on it."""
        _, meta, _ = await self._quorum_meta(bucket, key)
        return ObjectInfo.from_meta(bucket, key, meta)

    # --- get --------------------------------------------------------------------------------

    async def get_object(
        self, bucket: str, key: str, offset: int = 0, length: int | None = None
    ) -> ObjectReader:
        """Open a streaming read of ``[offset, offset + length)`` (to the end when None).

        ``length`` is clamped to the object's end; InvalidRange when ``offset`` lies past it.
        """
        eset, meta, copies = await self._quorum_meta(bucket, key)
        if offset < 0 or (length is not None and length < 0) or offset > meta.size:
            raise InvalidRange(f"range {offset}+{length} outside {meta.size} bytes")
        length = meta.size - offset if length is None else min(length, meta.size - offset)
        info = ObjectInfo.from_meta(bucket, key, meta)
        version = meta.version_key()
        sources = [
            ShardSource(position, copy.erasure.index, eset.drives[position])
            for position, copy in enumerate(copies)
            if isinstance(copy, ObjectMeta) and copy.version_key() == version
        ]
        if length == 0:
            chunks: AsyncIterator[bytes] = _empty()
        elif meta.inline is not None:
            chunks = self._inline_chunks(eset, bucket, key, meta, copies, offset, length)
        else:
            chunks = self._stream_chunks(eset, bucket, key, meta, sources, offset, length)
        return ObjectReader(info, offset, length, chunks)

    async def _inline_chunks(
        self,
        eset: ErasureSet,
        bucket: str,
        key: str,
        meta: ObjectMeta,
        copies: Sequence[ObjectMeta | StorageError],
        offset: int,
        length: int,
    ) -> AsyncIterator[bytes]:
        erasure = Erasure(meta.erasure.data, meta.erasure.parity, meta.erasure.block_size)
        chunk_size = meta.erasure.shard_chunk_size()
        shard_size = meta.erasure.shard_size(meta.size)
        version = meta.version_key()
        shards: dict[int, bytes] = {}
        ordered = sorted(
            (c.erasure.index, position, c)
            for position, c in enumerate(copies)
            if isinstance(c, ObjectMeta) and c.version_key() == version
        )
        for index, position, copy in ordered:
            if len(shards) == erasure.data:
                break
            try:
                shards[index] = b"".join(
                    bitrot.iter_verified(copy.inline or b"", chunk_size, shard_size)
                )
            except FileCorrupt:
                self._report(eset, bucket, key, position, "corrupt")
        if len(shards) < erasure.data:
            raise ReadQuorum(f"{bucket}/{key}: only {len(shards)} inline shards are intact")
        loop = asyncio.get_running_loop()
        data = await loop.run_in_executor(None, erasure.decode, shards, meta.size)
        yield data[offset : offset + length]

    async def _stream_chunks(
        self,
        eset: ErasureSet,
        bucket: str,
        key: str,
        meta: ObjectMeta,
        sources: list[ShardSource],
        offset: int,
        length: int,
    ) -> AsyncIterator[bytes]:
        block_size = meta.erasure.block_size
        first_block = offset // block_size
        last_block = (offset + length - 1) // block_size
        fetcher = ShardFetcher(
            bucket=bucket,
            key=key,
            meta=meta,
            sources=[s for s in sources if s.drive.is_online()],
            first_block=first_block,
            last_block=last_block,
            hedge=self.hedge,
            stats=self.stats,
            report=lambda source, reason: self._report(eset, bucket, key, source.position, reason),
        )
        try:
            end = offset + length
            for number in range(first_block, last_block + 1):
                data = await fetcher.block(number)
                start = number * block_size
                lo = max(offset - start, 0)
                hi = min(end - start, len(data))
                yield data if (lo == 0 and hi == len(data)) else data[lo:hi]
        finally:
            await fetcher.close()

    # --- delete -----------------------------------------------------------------------------

    async def delete_object(self, bucket: str, key: str) -> None:
        """Delete an object; ObjectNotFound when no drive had it."""
        validate_bucket(bucket)
        validate_object(key)
        eset = self._set_for(bucket, key)
        async with self._key_lock(bucket, key):
            results = await self._on_drives(eset, lambda d: d.delete_object(bucket, key))
        deleted = sum(1 for r in results if not isinstance(r, StorageError))
        absent = sum(1 for r in results if isinstance(r, FileNotFound))
        if sum(1 for r in results if isinstance(r, VolumeNotFound)) >= eset.write_quorum:
            raise BucketNotFound(f"bucket {bucket} not found")
        if deleted + absent < eset.write_quorum:
            raise WriteQuorum(
                f"delete {bucket}/{key}: {deleted + absent} drives answered, "
                f"{eset.write_quorum} needed ({self._summary(results)})"
            )
        if deleted == 0:
            raise ObjectNotFound(f"{bucket}/{key} not found")

    # --- list -------------------------------------------------------------------------------

    async def list_objects(
        self,
        bucket: str,
        prefix: str = "",
        delimiter: str = "",
        start_after: str = "",
        max_keys: int = MAX_KEYS,
        continuation_token: str | None = None,
    ) -> ListResult:
        """One page of keys and common prefixes, in key order (S3 ListObjectsV2 semantics)."""
        validate_bucket(bucket)
        validate_prefix(prefix)
        if max_keys < 0:
            raise InvalidArgument("max_keys must not be negative")
        marker = start_after
        if continuation_token:
            marker = max(marker, _token_decode(continuation_token))
        if max_keys == 0:
            return ListResult([], [], False, None)
        per_set = await asyncio.gather(
            *(
                self._list_set(eset, bucket, prefix, delimiter, marker, max_keys + 1)
                for eset in self.sets
            )
        )
        merged = sorted(
            {e.name: e for entries in per_set for e in entries}.values(), key=lambda e: e.name
        )
        truncated = len(merged) > max_keys
        page = merged[:max_keys]
        objects = [ObjectInfo.from_meta(bucket, e.name, e.meta) for e in page if e.meta is not None]
        prefixes = [e.name for e in page if e.is_prefix]
        token = _token_encode(page[-1].name) if truncated and page else None
        return ListResult(objects, prefixes, truncated, token)

    async def _list_set(
        self, eset: ErasureSet, bucket: str, prefix: str, delimiter: str, marker: str, want: int
    ) -> list[ListEntry]:
        """Entries a read quorum of the set's drives agree on, up to ``want`` of them."""
        agreed: list[ListEntry] = []
        while len(agreed) < want:
            after = marker

            def page(drive: Drive) -> Awaitable[ListPage]:
                return drive.list_objects_page(bucket, prefix, delimiter, after, want)  # noqa: B023

            results = await self._on_drives(eset, page)
            pages = [r for r in results if not isinstance(r, StorageError)]
            if len(pages) < eset.data:
                if sum(1 for r in results if isinstance(r, VolumeNotFound)) > len(results) // 2:
                    raise BucketNotFound(f"bucket {bucket} not found")
                raise ReadQuorum(f"list {bucket}: {self._summary(results)}")
            # A truncated page only speaks for keys up to its last entry.
            bounds = [p.entries[-1].name for p in pages if p.truncated and p.entries]
            bound = min(bounds) if bounds else None
            agreed.extend(self._vote(pages, bound, eset.data))
            if bound is None:
                break
            marker = bound
        return agreed[:want]

    @staticmethod
    def _vote(pages: Sequence[Any], bound: str | None, quorum: int) -> list[ListEntry]:
        seen: dict[str, list[ListEntry]] = {}
        for page in pages:
            for entry in page.entries:
                if bound is not None and entry.name > bound:
                    break
                seen.setdefault(entry.name, []).append(entry)
        chosen: list[ListEntry] = []
        for name in sorted(seen):
            copies = seen[name]
            if len(copies) < quorum:
                continue
            if copies[0].is_prefix:
                chosen.append(copies[0])
                continue
            versions = Counter(c.meta.version_key() for c in copies if c.meta is not None)
            if not versions:
                continue
            best, count = max(versions.items(), key=lambda item: (item[1], item[0][0]))
            if count >= quorum:
                chosen.append(
                    next(c for c in copies if c.meta is not None and c.meta.version_key() == best)
                )
        return chosen


async def _none() -> None:
    return None


async def _empty() -> AsyncIterator[bytes]:
    empty: tuple[bytes, ...] = ()
    for chunk in empty:
        yield chunk


__all__ = [
    "BucketInfo",
    "ErasureSet",
    "HealHook",
    "HealReport",
    "ListResult",
    "ObjectInfo",
    "ObjectLayer",
    "ObjectReader",
]
