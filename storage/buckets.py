"""Buckets: a bucket is a volume on every drive of every set.

Creating and deleting a bucket need a write quorum in every set; reading one (head, list) needs a
read quorum of the first set, which is as good as any set since every set holds every bucket.
Every decision goes through :func:`storage.quorum.reduce_quorum`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence

from storage.drive import VolumeInfo
from storage.erasure_set import ErasureSet, Results
from storage.errors import (
    BucketExists,
    BucketNotEmpty,
    BucketNotFound,
    ReadQuorum,
    StorageError,
    VolumeExists,
    VolumeNotEmpty,
    VolumeNotFound,
    WriteQuorum,
)
from storage.info import BucketInfo
from storage.names import validate_bucket
from storage.quorum import find_agreement, reduce_quorum


async def _attempt(coro: Awaitable[object]) -> None:
    with contextlib.suppress(StorageError):
        await coro


def _write_short(what: str, eset: ErasureSet) -> Callable[[str], StorageError]:
    def short(why: str) -> StorageError:
        return WriteQuorum(f"{what}: set {eset.index} needs {eset.write_quorum} drives ({why})")

    return short


async def make_bucket(sets: Sequence[ErasureSet], bucket: str) -> None:
    """Create a bucket on every drive; BucketExists when a quorum already had it.

    Drives that already hold the volume (a half-made bucket from an earlier failure) count
    toward the quorum, unless a whole quorum had it, which means the bucket exists."""
    validate_bucket(bucket)
    made: list[tuple[ErasureSet, Results[None]]] = []
    for eset in sets:
        results = await eset.fan_out(lambda drive: drive.make_volume(bucket))
        made.append((eset, results))
        try:
            reduce_quorum(
                results,
                eset.write_quorum,
                verdicts={VolumeExists: BucketExists(f"bucket {bucket} already exists")},
                short=lambda why: WriteQuorum(why),
            )
        except BucketExists:
            raise
        except WriteQuorum:
            try:
                reduce_quorum(
                    results,
                    eset.write_quorum,
                    counts_as_ok=(VolumeExists,),
                    short=_write_short(f"make_bucket {bucket}", eset),
                )
            except WriteQuorum:
                await _undo_make(bucket, made)
                raise


async def _undo_make(bucket: str, made: list[tuple[ErasureSet, Results[None]]]) -> None:
    for eset, results in made:
        for drive, result in zip(eset.drives, results, strict=True):
            if not isinstance(result, StorageError):
                await _attempt(drive.delete_volume(bucket, force=True))


async def list_buckets(sets: Sequence[ErasureSet]) -> list[BucketInfo]:
    """Buckets that a read quorum of the first set's drives hold."""
    eset = sets[0]
    results = await eset.fan_out(lambda drive: drive.list_volumes())
    reduce_quorum(
        results,
        eset.read_quorum,
        short=lambda why: ReadQuorum(f"list_buckets: set 0 needs {eset.read_quorum} ({why})"),
    )
    names = sorted({v.name for r in results if not isinstance(r, StorageError) for v in r})
    buckets = []
    for name in names:
        held = [_volume_in(result, name) for result in results]
        agreement = find_agreement(held, eset.read_quorum)
        if agreement is not None:
            created = [v.created_ns for v in held if isinstance(v, VolumeInfo)]
            buckets.append(BucketInfo(name, min(created)))
    return buckets


def _volume_in(result: list[VolumeInfo] | StorageError, name: str) -> VolumeInfo | StorageError:
    if isinstance(result, StorageError):
        return result
    for volume in result:
        if volume.name == name:
            return volume
    return VolumeNotFound(name)


async def head_bucket(sets: Sequence[ErasureSet], bucket: str) -> BucketInfo:
    validate_bucket(bucket)
    eset = sets[0]
    results = await eset.fan_out(lambda drive: drive.stat_volume(bucket))
    reduce_quorum(
        results,
        eset.read_quorum,
        verdicts={VolumeNotFound: BucketNotFound(f"bucket {bucket} not found")},
        short=lambda why: ReadQuorum(f"head_bucket {bucket}: {why}"),
    )
    return BucketInfo(bucket, min(r.created_ns for r in results if isinstance(r, VolumeInfo)))


async def check_bucket(eset: ErasureSet, bucket: str) -> None:
    """Before a write: the bucket exists on a write quorum of the set's drives."""
    results = await eset.fan_out(lambda drive: drive.stat_volume(bucket))
    reduce_quorum(
        results,
        eset.write_quorum,
        verdicts={VolumeNotFound: BucketNotFound(f"bucket {bucket} not found")},
        short=lambda why: WriteQuorum(
            f"{bucket}: set {eset.index} needs {eset.write_quorum} usable drives ({why})"
        ),
    )


async def delete_bucket(
    sets: Sequence[ErasureSet], bucket: str, is_empty: Callable[[], Awaitable[bool]]
) -> None:
    """Delete an empty bucket; BucketNotEmpty while it holds objects.

    When a set refuses (a quorum of its drives still hold objects, or too few answered), the
    volumes already deleted are made again, so the bucket is never left half gone."""
    await head_bucket(sets, bucket)
    if not await is_empty():
        raise BucketNotEmpty(f"bucket {bucket} is not empty")
    deleted: list[tuple[ErasureSet, Results[None]]] = []
    for eset in sets:
        results = await eset.fan_out(lambda drive: drive.delete_volume(bucket))
        deleted.append((eset, results))
        try:
            reduce_quorum(
                results,
                eset.write_quorum,
                counts_as_ok=(VolumeNotFound,),
                verdicts={VolumeNotEmpty: BucketNotEmpty(f"bucket {bucket} is not empty")},
                short=_write_short(f"delete_bucket {bucket}", eset),
            )
        except StorageError:
            await _undo_delete(bucket, deleted)
            raise


async def _undo_delete(bucket: str, deleted: list[tuple[ErasureSet, Results[None]]]) -> None:
    for eset, results in deleted:
        for drive, result in zip(eset.drives, results, strict=True):
            if not isinstance(result, StorageError):
                await _attempt(drive.make_volume(bucket))
