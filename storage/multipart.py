"""Multipart uploads: staged part by part on the drives of the object's set, then assembled.

- **Create** records the upload (its key, and the template of the object it will make: content
  type, metadata, tags, checksum algorithm, erasure layout) on every drive of the set, by write
  quorum. The record lives outside the drives' temporary areas, so an upload survives a restart.
- **Upload part** erasure codes the part as it arrives, exactly as a put codes an object, into
  each drive's temporary area, then ``commit_part`` moves it into the upload (replacing an
  earlier upload of the same part number) by write quorum.
- **Complete** takes, for each part the client names, the version a read quorum of drives
  agrees on, checks the ETags, the order and the sizes, links those parts' shards into a write
  in progress on each drive (a hard link: no data is copied) and commits the object's metadata
  (listing every part) exactly as a put commits. The upload is then deleted.
- **Abort** deletes the upload and its parts on every drive.

Every decision goes through :func:`storage.quorum.reduce_quorum` or
:func:`~storage.quorum.find_agreement`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
import uuid
from collections.abc import AsyncIterable, Callable, Sequence

from storage.buckets import check_bucket
from storage.erasure import Erasure
from storage.erasure_set import ErasureSet
from storage.errors import (
    BucketNotFound,
    DriveNotFound,
    FileNotFound,
    IncompleteBody,
    InvalidArgument,
    InvalidPart,
    InvalidPartOrder,
    PartTooSmall,
    ReadQuorum,
    StorageError,
    UploadNotFound,
    VolumeNotFound,
    WriteQuorum,
)
from storage.locks import KeyLocks
from storage.meta import MAX_OBJECT_SIZE, MAX_PARTS, ObjectMeta, PartInfo, UploadRecord
from storage.names import validate_bucket, validate_object, validate_upload_id
from storage.put import BlockSource, Precondition, Report, commit, stream_shards
from storage.quorum import find_agreement, reduce_quorum

#: S3's smallest part, except the last.
MIN_PART_SIZE = 5 << 20

#: ``finish(parts)`` -> the object's checksums, once the parts are known (may raise).
Finish = Callable[[Sequence[PartInfo]], dict[str, str]]


def _not_found(bucket: str, upload_id: str) -> UploadNotFound:
    return UploadNotFound(f"upload {upload_id} of bucket {bucket} not found")


async def create_upload(eset: ErasureSet, bucket: str, key: str, template: ObjectMeta) -> str:
    """Record a new upload on a write quorum of the set's drives; returns its upload ID."""
    validate_bucket(bucket)
    validate_object(key)
    await check_bucket(eset, bucket)
    upload_id = uuid.uuid4().hex
    record = UploadRecord(key, upload_id, time.time_ns(), template)
    # Every drive is waited for: one cut off here would refuse every part of the upload.
    results = await eset.every_drive(
        lambda position: eset.drives[position].write_upload(bucket, record)
    )
    try:
        reduce_quorum(
            results,
            eset.write_quorum,
            verdicts={VolumeNotFound: BucketNotFound(f"bucket {bucket} not found")},
            short=lambda why: WriteQuorum(
                f"create upload {bucket}/{key}: set {eset.index} needs {eset.write_quorum} ({why})"
            ),
        )
    except StorageError:
        await _delete_everywhere(eset, bucket, upload_id)
        raise
    return upload_id


async def read_upload(eset: ErasureSet, bucket: str, key: str, upload_id: str) -> UploadRecord:
    """The upload's record as a read quorum agrees on it; UploadNotFound when there is none
    (or it is an upload of another key)."""
    validate_bucket(bucket)
    validate_object(key)
    try:
        validate_upload_id(upload_id)
    except StorageError as exc:
        raise _not_found(bucket, upload_id) from exc
    results = await eset.fan_out(lambda drive: drive.read_upload(bucket, upload_id))
    agreement = reduce_quorum(
        results,
        eset.read_quorum,
        version=UploadRecord.version,
        verdicts={
            VolumeNotFound: BucketNotFound(f"bucket {bucket} not found"),
            (FileNotFound, VolumeNotFound): _not_found(bucket, upload_id),
        },
        short=lambda why: ReadQuorum(f"upload {upload_id}: set {eset.index} ({why})"),
    )
    record = agreement.require()
    if record.key != key:
        raise _not_found(bucket, upload_id)
    return record


async def upload_part(
    eset: ErasureSet,
    bucket: str,
    key: str,
    upload_id: str,
    number: int,
    source: AsyncIterable[bytes],
    *,
    size: int | None,
    checksums: Callable[[], dict[str, str]] | None = None,
) -> PartInfo:
    """Erasure code one part into the upload (replacing an earlier upload of ``number``)."""
    if not 1 <= number <= MAX_PARTS:
        raise InvalidArgument(f"part number {number} is outside 1..{MAX_PARTS}")
    record = await read_upload(eset, bucket, key, upload_id)
    info = record.meta.erasure
    erasure = Erasure(info.data, info.parity, info.block_size)
    blocks = BlockSource(source, info.block_size)
    md5 = hashlib.md5()
    write_id = uuid.uuid4().hex
    first = await blocks.next()
    writers = await stream_shards(eset, erasure, info.distribution, write_id, first, blocks, md5)
    try:
        if size is not None and blocks.total != size:
            raise IncompleteBody(f"expected {size} bytes, got {blocks.total}")
        values = checksums() if checksums is not None else {}
    except BaseException:
        await writers.abort_all()
        raise
    part = PartInfo(number, blocks.total, md5.hexdigest(), time.time_ns(), uuid.uuid4().hex,
                    dict(values))  # fmt: skip
    usable = await writers.finish()

    async def commit_one(position: int) -> None:
        if not usable[position]:
            raise DriveNotFound("the part's shard was not written")
        await eset.drives[position].commit_part(write_id, bucket, upload_id, part)

    # Every drive is waited for (as a put's commit is): a drive cut off as a straggler would
    # miss this part, and could then not take the object when the upload completes.
    results = await eset.every_drive(commit_one)
    reduce_quorum(
        results,
        eset.write_quorum,
        verdicts={FileNotFound: _not_found(bucket, upload_id)},
        short=lambda why: WriteQuorum(
            f"part {number} of {bucket}/{key}: set {eset.index} needs {eset.write_quorum} ({why})"
        ),
    )
    return part


async def _part_lists(
    eset: ErasureSet, bucket: str, upload_id: str, *, every: bool = False
) -> list[list[PartInfo] | StorageError]:
    """Every drive's staged parts; ``every`` waits for every drive (to complete the upload,
    each drive's answer decides whether it can take the object)."""
    if every:
        results = await eset.every_drive(
            lambda position: eset.drives[position].list_parts(bucket, upload_id)
        )
    else:
        results = await eset.fan_out(lambda drive: drive.list_parts(bucket, upload_id))
    reduce_quorum(
        results,
        eset.read_quorum,
        verdicts={(FileNotFound, VolumeNotFound): _not_found(bucket, upload_id)},
        short=lambda why: ReadQuorum(f"parts of upload {upload_id}: set {eset.index} ({why})"),
    )
    return results


def agreed_parts(lists: Sequence[list[PartInfo] | StorageError], quorum: int) -> list[PartInfo]:
    """For each part number, the upload of it that ``quorum`` drives hold (others left out)."""
    numbers = sorted(
        {part.number for parts in lists if not isinstance(parts, StorageError) for part in parts}
    )
    chosen: list[PartInfo] = []
    for number in numbers:
        copies: list[PartInfo | StorageError] = []
        for parts in lists:
            if isinstance(parts, StorageError):
                copies.append(parts)
                continue
            held = next((p for p in parts if p.number == number), None)
            copies.append(held if held is not None else FileNotFound(f"part {number}"))
        agreement = find_agreement(copies, quorum, version=PartInfo.version)
        if agreement is not None:
            chosen.append(agreement.require())
    return chosen


async def list_parts(
    eset: ErasureSet, bucket: str, key: str, upload_id: str
) -> tuple[UploadRecord, list[PartInfo]]:
    """The upload's record and the parts a read quorum holds, in part order."""
    record = await read_upload(eset, bucket, key, upload_id)
    lists = await _part_lists(eset, bucket, upload_id)
    return record, agreed_parts(lists, eset.read_quorum)


def choose_parts(
    available: Sequence[PartInfo], wanted: Sequence[tuple[int, str]], min_part_size: int
) -> list[PartInfo]:
    """The parts to complete with: each ``(number, etag)`` the client named, checked.

    InvalidPartOrder unless the numbers ascend; InvalidPart for a part not uploaded or whose
    ETag differs; PartTooSmall for a part other than the last under ``min_part_size``."""
    if not wanted:
        raise InvalidArgument("completing an upload needs at least one part")
    by_number = {part.number: part for part in available}
    chosen: list[PartInfo] = []
    previous = 0
    for number, etag in wanted:
        if number <= previous:
            raise InvalidPartOrder(
                "The list of parts was not in ascending order. Parts must be ordered by part "
                "number."
            )
        previous = number
        part = by_number.get(number)
        if part is None or part.etag != etag.strip('"'):
            raise InvalidPart(
                f"part {number} was not uploaded, or its ETag {etag[:80]!r} does not match "
                "the part's"
            )
        chosen.append(part)
    for part in chosen[:-1]:
        if part.size < min_part_size:
            raise PartTooSmall(
                f"part {part.number} is {part.size} bytes; every part but the last must be at "
                f"least {min_part_size} bytes"
            )
    return chosen


def multipart_etag(parts: Sequence[PartInfo]) -> str:
    """S3's ETag of a multipart object: the MD5 of the parts' binary MD5s, then ``-N``."""
    digest = hashlib.md5(b"".join(bytes.fromhex(part.etag) for part in parts))
    return f"{digest.hexdigest()}-{len(parts)}"


async def complete_upload(
    eset: ErasureSet,
    locks: KeyLocks,
    bucket: str,
    key: str,
    upload_id: str,
    wanted: Sequence[tuple[int, str]],
    *,
    report: Report,
    on_rollback: Callable[[], None],
    finish: Finish | None = None,
    precondition: Precondition | None = None,
    min_part_size: int = MIN_PART_SIZE,
) -> ObjectMeta:
    """Make the object from the parts named in ``wanted`` (see the module docstring).

    Completions of one upload run one at a time in this process: a client that retried while
    the first was still assembling gets ``UploadNotFound`` once it is done, instead of two
    assemblies taking the same part files from each other."""
    async with locks.write(("upload", upload_id)):
        return await _complete(
            eset, locks, bucket, key, upload_id, wanted, report=report,
            on_rollback=on_rollback, finish=finish, precondition=precondition,
            min_part_size=min_part_size,
        )  # fmt: skip


async def _complete(
    eset: ErasureSet,
    locks: KeyLocks,
    bucket: str,
    key: str,
    upload_id: str,
    wanted: Sequence[tuple[int, str]],
    *,
    report: Report,
    on_rollback: Callable[[], None],
    finish: Finish | None,
    precondition: Precondition | None,
    min_part_size: int,
) -> ObjectMeta:
    record = await read_upload(eset, bucket, key, upload_id)
    lists = await _part_lists(eset, bucket, upload_id, every=True)
    parts = choose_parts(agreed_parts(lists, eset.read_quorum), wanted, min_part_size)
    size = sum(part.size for part in parts)
    if size > MAX_OBJECT_SIZE:
        raise InvalidArgument(f"the object would be {size} bytes, over {MAX_OBJECT_SIZE}")
    checksums = finish(parts) if finish is not None else {}
    meta = dataclasses.replace(
        record.meta,
        size=size,
        etag=multipart_etag(parts),
        mod_time_ns=time.time_ns(),
        data_dir=uuid.uuid4().hex,
        checksums=checksums,
        parts=tuple(parts),
    )
    write_id = uuid.uuid4().hex
    plist = [(part.number, part.data_dir) for part in parts]

    async def assemble(position: int) -> None:
        copy = lists[position]
        if isinstance(copy, StorageError):
            raise copy
        held = {(p.number, p.data_dir) for p in copy}
        if not all(item in held for item in plist):
            raise FileNotFound("this drive misses a chosen part")  # healed after the commit
        await eset.drives[position].assemble_parts(write_id, bucket, upload_id, plist)

    assembled = await eset.every_drive(assemble)
    usable = [not isinstance(result, StorageError) for result in assembled]
    await commit(
        eset, locks, bucket, key, write_id, meta, usable, None, report, on_rollback,
        precondition=precondition,
    )  # fmt: skip
    await _delete_everywhere(eset, bucket, upload_id)
    return meta


async def abort_upload(eset: ErasureSet, bucket: str, key: str, upload_id: str) -> None:
    """Delete the upload and every part of it; UploadNotFound when there is none."""
    await read_upload(eset, bucket, key, upload_id)
    results = await eset.every_drive(
        lambda position: eset.drives[position].delete_upload(bucket, upload_id)
    )
    reduce_quorum(
        results,
        eset.write_quorum,
        counts_as_ok=(FileNotFound,),
        short=lambda why: WriteQuorum(
            f"abort upload {upload_id}: set {eset.index} needs {eset.write_quorum} ({why})"
        ),
    )


async def _delete_everywhere(eset: ErasureSet, bucket: str, upload_id: str) -> None:
    async def delete(position: int) -> None:
        await eset.drives[position].delete_upload(bucket, upload_id)

    await eset.every_drive(delete)


async def list_uploads(sets: Sequence[ErasureSet], bucket: str) -> list[UploadRecord]:
    """Every upload in progress into ``bucket`` that a read quorum of its set holds, ordered by
    key, then by when it was started."""
    validate_bucket(bucket)
    per_set = await asyncio.gather(*(_set_uploads(eset, bucket) for eset in sets))
    records = [record for found in per_set for record in found]
    return sorted(records, key=lambda r: (r.key, r.initiated_ns, r.upload_id))


async def _set_uploads(eset: ErasureSet, bucket: str) -> list[UploadRecord]:
    results = await eset.fan_out(lambda drive: drive.list_uploads(bucket))
    reduce_quorum(
        results,
        eset.read_quorum,
        verdicts={VolumeNotFound: BucketNotFound(f"bucket {bucket} not found")},
        short=lambda why: ReadQuorum(f"list uploads {bucket}: set {eset.index} ({why})"),
    )
    ids = sorted(
        {r.upload_id for found in results if not isinstance(found, StorageError) for r in found}
    )
    chosen: list[UploadRecord] = []
    for upload_id in ids:
        copies: list[UploadRecord | StorageError] = []
        for found in results:
            if isinstance(found, StorageError):
                copies.append(found)
                continue
            held = next((r for r in found if r.upload_id == upload_id), None)
            copies.append(held if held is not None else FileNotFound(upload_id))
        agreement = find_agreement(copies, eset.read_quorum, version=UploadRecord.version)
        if agreement is not None:
            chosen.append(agreement.require())
    return chosen


async def remove_stale(eset: ErasureSet, bucket: str, older_than_ns: int) -> list[UploadRecord]:
    """Abort every upload into ``bucket`` in this set started before ``older_than_ns``; returns
    those removed. A record any drive holds counts (a half-created upload is stale too)."""
    results = await eset.fan_out(lambda drive: drive.list_uploads(bucket))
    stale: dict[str, UploadRecord] = {}
    for found in results:
        if isinstance(found, StorageError):
            continue
        for record in found:
            if record.initiated_ns < older_than_ns:
                stale.setdefault(record.upload_id, record)
    for upload_id in stale:
        await _delete_everywhere(eset, bucket, upload_id)
    return list(stale.values())


__all__ = [
    "MIN_PART_SIZE",
    "abort_upload",
    "agreed_parts",
    "choose_parts",
    "complete_upload",
    "create_upload",
    "list_parts",
    "list_uploads",
    "multipart_etag",
    "read_upload",
    "remove_stale",
    "upload_part",
]
