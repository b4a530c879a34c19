"""The object layer: buckets and objects on top of erasure sets of drives.

:class:`ObjectLayer` is the facade the S3 gateway, the CLI tests and the healer use. Each job
lives in its own module:

- :mod:`storage.erasure_set`: one set's drives, the fan-out with its straggler cut-off, and
  the metadata quorum;
- :mod:`storage.quorum`: the one rule that turns per-drive results into a value or an error;
- :mod:`storage.buckets`, :mod:`storage.put`, :mod:`storage.get`,
  :mod:`storage.list_objects`, :mod:`storage.multipart`: the operations;
- :mod:`storage.locks`: per-key read/write locks (readers share, a commit excludes).

Every missing, corrupt or outdated shard found on the way goes to the heal hook.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterable, Callable, Sequence
from typing import Any

from storage import buckets, list_objects, multipart
from storage.drive import Drive
from storage.erasure import DEFAULT_BLOCK_SIZE
from storage.erasure_set import ErasureSet, Rejoin
from storage.errors import (
    BucketNotFound,
    FileNotFound,
    InvalidArgument,
    InvalidRange,
    ObjectNotFound,
    StorageError,
    UnformattedDrive,
    VolumeNotFound,
    WriteQuorum,
)
from storage.format import FormatInfo, plan_format
from storage.get import ObjectReader, choose_version, open_reader
from storage.info import BucketInfo, HealHook, HealReport, LayerStats, ListResult, ObjectInfo
from storage.latency import DriveLatency, HedgeDelay
from storage.list_objects import MAX_KEYS
from storage.locks import KeyLocks
from storage.meta import ErasureInfo, ObjectMeta, PartInfo, UploadRecord
from storage.multipart import MIN_PART_SIZE, Finish
from storage.names import validate_bucket, validate_object
from storage.placement import (
    check_parity,
    default_parity,
    seed_from_deployment,
    set_index,
    shard_distribution,
)
from storage.put import INLINE_LIMIT, Precondition, PutOptions, one_chunk, put_object
from storage.quorum import count_ok, reduce_quorum


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
        min_part_size: int = MIN_PART_SIZE,
        rejoin: Rejoin | None = None,
    ) -> None:
        if not sets:
            raise InvalidArgument("an object layer needs at least one erasure set")
        self.hedge = HedgeDelay(floor=hedge_floor)
        #: Per-drive latency percentiles: when a shard read is late, and how long a metadata
        #: read waits for a drive after the quorum answered.
        self.latency = DriveLatency(floor=hedge_floor)
        self.sets: list[ErasureSet] = []
        for number, drives in enumerate(sets):
            count = len(drives)
            chosen = check_parity(count, parity) if parity is not None else default_parity(count)
            self.sets.append(
                ErasureSet(
                    number, list(drives), count - chosen, chosen, self.hedge, self.latency, rejoin
                )
            )
        self.block_size = block_size
        self.inline_limit = inline_limit
        self.heal_hook = heal_hook
        self.stats = LayerStats()
        self.locks = KeyLocks()
        #: The smallest part a multipart upload may have, except its last (S3: 5 MiB).
        self.min_part_size = min_part_size
        self._seed = seed_from_deployment(deployment_id) if deployment_id else 0

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

    def set_for(self, bucket: str, key: str) -> ErasureSet:
        """The erasure set that holds ``bucket/key``."""
        return self.sets[set_index(bucket, key, len(self.sets), self._seed)]

    def report(self, eset: ErasureSet, bucket: str, key: str, position: int, reason: str) -> None:
        """Hand a damaged copy to the heal hook."""
        self.stats.heal_reports += 1
        if self.heal_hook is not None:
            endpoint = eset.drives[position].endpoint
            self.heal_hook(HealReport(bucket, key, eset.index, position, endpoint, reason))

    def straggler_wait(self) -> float:
        """How long to wait for the rest once a quorum answered (see ErasureSet.fan_out)."""
        return self.sets[0].straggler_wait()

    def _reporter(self, eset: ErasureSet, bucket: str, key: str) -> Any:
        return lambda position, reason: self.report(eset, bucket, key, position, reason)

    def _rolled_back(self) -> None:
        self.stats.rollbacks += 1

    # --- buckets ----------------------------------------------------------------------------

    async def make_bucket(self, bucket: str) -> None:
        """Create a bucket on every drive; BucketExists when a quorum already has it."""
        await buckets.make_bucket(self.sets, bucket)

    async def list_buckets(self) -> list[BucketInfo]:
        """Buckets that a read quorum of the first set's drives hold."""
        return await buckets.list_buckets(self.sets)

    async def head_bucket(self, bucket: str) -> BucketInfo:
        return await buckets.head_bucket(self.sets, bucket)

    async def delete_bucket(self, bucket: str) -> None:
        """Delete an empty bucket; BucketNotEmpty while it holds objects."""

        async def is_empty() -> bool:
            return not (await self.list_objects(bucket, max_keys=1)).objects

        await buckets.delete_bucket(self.sets, bucket, is_empty)

    # --- objects ----------------------------------------------------------------------------

    async def put_object(
        self,
        bucket: str,
        key: str,
        source: AsyncIterable[bytes] | bytes,
        *,
        size: int | None = None,
        content_type: str = "application/octet-stream",
        user_meta: dict[str, str] | None = None,
        options: PutOptions | None = None,
    ) -> ObjectInfo:
        """Store an object from ``source`` (bytes or an async iterable of chunks).

        When ``size`` is given, a source that ends early or runs long raises IncompleteBody
        and nothing is stored. ``options`` carries system metadata, tags, checksums and a
        precondition (see :class:`~storage.put.PutOptions`).
        """
        validate_bucket(bucket)
        validate_object(key)
        eset = self.set_for(bucket, key)
        meta = await put_object(
            eset,
            self.locks,
            bucket,
            key,
            source,
            size=size,
            content_type=content_type,
            user_meta=user_meta,
            block_size=self.block_size,
            inline_limit=self.inline_limit,
            report=self._reporter(eset, bucket, key),
            on_rollback=self._rolled_back,
            options=options,
        )
        return ObjectInfo.from_meta(bucket, key, meta)

    async def head_object(self, bucket: str, key: str) -> ObjectInfo:
        """The object's metadata, as a read quorum agrees on it."""
        eset = self.set_for(validate_bucket(bucket), validate_object(key))
        chosen = await choose_version(
            eset, self.locks, bucket, key, self._reporter(eset, bucket, key)
        )
        return ObjectInfo.from_meta(bucket, key, chosen.meta)

    async def get_object(
        self,
        bucket: str,
        key: str,
        offset: int = 0,
        length: int | None = None,
        *,
        choose: Callable[[ObjectInfo], tuple[int, int | None]] | None = None,
    ) -> ObjectReader:
        """Open a streaming read of ``[offset, offset + length)`` (to the end when None).

        ``length`` is clamped to the object's end; InvalidRange when ``offset`` lies past it.
        ``choose``, when given, is called with the version chosen and returns the
        ``(offset, length)`` to read instead (it may raise, e.g. for a failed precondition),
        so a caller can decide from the object's metadata without reading it twice.
        """
        eset = self.set_for(validate_bucket(bucket), validate_object(key))
        report = self._reporter(eset, bucket, key)
        chosen = await choose_version(eset, self.locks, bucket, key, report)
        if choose is not None:
            offset, length = choose(ObjectInfo.from_meta(bucket, key, chosen.meta))
        size = chosen.meta.size
        if offset < 0 or (length is not None and length < 0) or offset > size:
            raise InvalidRange(f"range {offset}+{length} outside {size} bytes")
        length = size - offset if length is None else min(length, size - offset)
        return open_reader(
            eset, bucket, key, chosen, offset, length, hedge=self.hedge, stats=self.stats,
            report=report,
        )  # fmt: skip

    async def delete_object(self, bucket: str, key: str) -> None:
        """Delete an object; ObjectNotFound when no drive had it."""
        eset = self.set_for(validate_bucket(bucket), validate_object(key))
        async with self.locks.write((bucket, key)):
            results = await eset.fan_out(lambda drive: drive.delete_object(bucket, key))
        reduce_quorum(
            results,
            eset.write_quorum,
            counts_as_ok=(FileNotFound,),
            verdicts={VolumeNotFound: BucketNotFound(f"bucket {bucket} not found")},
            short=lambda why: WriteQuorum(
                f"delete {bucket}/{key}: set {eset.index} needs {eset.write_quorum} ({why})"
            ),
        )
        if count_ok(results) == 0:  # every drive that answered said "not found"
            raise ObjectNotFound(f"{bucket}/{key} not found")

    async def put_tags(self, bucket: str, key: str, tags: dict[str, str]) -> ObjectInfo:
        """Replace an object's tags (its data, ETag and Last-Modified stay as they are).

        Every drive holding the current version gets its own copy rewritten; a write quorum
        must take it, and a drive that missed it is outdated until healed."""
        eset = self.set_for(validate_bucket(bucket), validate_object(key))
        report = self._reporter(eset, bucket, key)
        async with self.locks.write((bucket, key)):
            copies = await eset.read_metadata(bucket, key)
            chosen = eset.pick_metadata(bucket, key, copies).require()
            version = chosen.version_key()

            async def rewrite(position: int) -> None:
                copy = copies[position]
                if not isinstance(copy, ObjectMeta) or copy.version_key() != version:
                    raise FileNotFound("this drive does not hold the current version")
                updated = dataclasses.replace(copy, tags=dict(tags))
                await eset.drives[position].write_metadata(bucket, key, updated)

            results = await eset.fan_out_positions(rewrite)
        reduce_quorum(
            results,
            eset.write_quorum,
            short=lambda why: WriteQuorum(
                f"tag {bucket}/{key}: set {eset.index} needs {eset.write_quorum} ({why})"
            ),
        )
        for position, result in enumerate(results):
            if isinstance(result, StorageError):
                report(position, "outdated")
        return ObjectInfo.from_meta(bucket, key, dataclasses.replace(chosen, tags=dict(tags)))

    # --- multipart uploads --------------------------------------------------------------------

    async def create_multipart(
        self,
        bucket: str,
        key: str,
        *,
        content_type: str = "application/octet-stream",
        user_meta: dict[str, str] | None = None,
        options: PutOptions | None = None,
        checksum_algorithm: str = "",
    ) -> str:
        """Start a multipart upload; returns its upload ID. ``options`` gives the system
        metadata, tags and checksum type the object will have; ``checksum_algorithm`` the
        algorithm its parts carry."""
        eset = self.set_for(validate_bucket(bucket), validate_object(key))
        options = options or PutOptions()
        template = ObjectMeta(
            size=0,
            etag="",
            mod_time_ns=0,
            data_dir=uuid.uuid4().hex,
            erasure=ErasureInfo(
                data=eset.data,
                parity=eset.parity,
                block_size=self.block_size,
                distribution=shard_distribution(bucket, key, len(eset.drives)),
            ),
            content_type=content_type,
            user_meta=dict(user_meta or {}),
            sys_meta=dict(options.sys_meta),
            tags=dict(options.tags),
            checksums={checksum_algorithm: ""} if checksum_algorithm else {},
            checksum_type=options.checksum_type,
        )
        return await multipart.create_upload(eset, bucket, key, template)

    async def get_multipart(self, bucket: str, key: str, upload_id: str) -> UploadRecord:
        """The upload's record; UploadNotFound when there is no such upload of this key."""
        return await multipart.read_upload(self.set_for(bucket, key), bucket, key, upload_id)

    async def upload_part(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        number: int,
        source: AsyncIterable[bytes] | bytes,
        *,
        size: int | None = None,
        checksums: Callable[[], dict[str, str]] | None = None,
    ) -> PartInfo:
        """Store part ``number`` of an upload (an earlier upload of that number is replaced)."""
        eset = self.set_for(validate_bucket(bucket), validate_object(key))
        chunks = one_chunk(source) if isinstance(source, bytes) else source
        return await multipart.upload_part(
            eset, bucket, key, upload_id, number, chunks, size=size, checksums=checksums
        )

    async def list_parts(
        self, bucket: str, key: str, upload_id: str
    ) -> tuple[UploadRecord, list[PartInfo]]:
        """The upload's record and its parts, in part order."""
        eset = self.set_for(validate_bucket(bucket), validate_object(key))
        return await multipart.list_parts(eset, bucket, key, upload_id)

    async def complete_multipart(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        parts: Sequence[tuple[int, str]],
        *,
        finish: Finish | None = None,
        precondition: Precondition | None = None,
    ) -> ObjectInfo:
        """Make the object from the ``(part number, ETag)`` list; the upload is then gone."""
        eset = self.set_for(validate_bucket(bucket), validate_object(key))
        # One completion of an upload at a time in this process: a client that retried while
        # the first was still assembling gets UploadNotFound once it is done, instead of two
        # assemblies taking the same part files from each other.
        async with self.locks.write(("upload", upload_id)):
            meta = await multipart.complete_upload(
                eset, self.locks, bucket, key, upload_id, parts,
                report=self._reporter(eset, bucket, key), on_rollback=self._rolled_back,
                finish=finish, precondition=precondition, min_part_size=self.min_part_size,
            )  # fmt: skip
        return ObjectInfo.from_meta(bucket, key, meta)

    async def abort_multipart(self, bucket: str, key: str, upload_id: str) -> None:
        """Delete an upload and all its parts; UploadNotFound when there is none."""
        eset = self.set_for(validate_bucket(bucket), validate_object(key))
        await multipart.abort_upload(eset, bucket, key, upload_id)

    async def list_multipart_uploads(self, bucket: str) -> list[UploadRecord]:
        """Uploads in progress into ``bucket``, by key and then by start time."""
        await self.head_bucket(bucket)
        return await multipart.list_uploads(self.sets, bucket)

    async def remove_stale_uploads(
        self, older_than_ns: int, *, sets: Sequence[ErasureSet] | None = None
    ) -> list[UploadRecord]:
        """Abort every upload (of every bucket) started before ``older_than_ns``, in ``sets``
        (every set when None)."""
        removed: list[UploadRecord] = []
        for bucket in await self.list_buckets():
            found = await asyncio.gather(
                *(multipart.remove_stale(eset, bucket.name, older_than_ns)
                  for eset in (self.sets if sets is None else sets))
            )  # fmt: skip
            removed.extend(record for records in found for record in records)
        return removed

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
        return await list_objects.list_objects(
            self.sets, bucket, prefix, delimiter, start_after, max_keys, continuation_token
        )


__all__ = [
    "MAX_KEYS",
    "BucketInfo",
    "ErasureSet",
    "HealHook",
    "HealReport",
    "ListResult",
    "ObjectInfo",
    "ObjectLayer",
    "ObjectReader",
    "PartInfo",
    "PutOptions",
    "UploadRecord",
]
