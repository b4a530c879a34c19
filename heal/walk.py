"""Walking every object of an erasure set, including objects only some drives hold.

A listing for S3 shows what a read quorum agrees on; the healer needs the opposite: every name
*any* drive holds, so that a partial object (a write that missed drives, a dangling leftover)
is found and judged. :func:`walk_set` merges the drives' pages as a union, in key order, with
the same rule as the quorum listing for truncated pages: a page only speaks for names up to
its last entry.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from storage.drive import ListPage
from storage.erasure_set import ErasureSet
from storage.errors import ReadQuorum, StorageError, VolumeNotFound
from storage.info import ObjectInfo

PAGE = 500


async def set_buckets(eset: ErasureSet) -> list[str]:
    """Every bucket a read quorum of the set's drives hold (what S3 would list)."""
    results = await eset.fan_out(lambda drive: drive.list_volumes())
    answered = [r for r in results if not isinstance(r, StorageError)]
    if len(answered) < eset.read_quorum:
        raise ReadQuorum(f"set {eset.index}: {len(answered)} drives listed their buckets")
    seen: dict[str, int] = {}
    for volumes in answered:
        for volume in volumes:
            seen[volume.name] = seen.get(volume.name, 0) + 1
    return sorted(name for name, count in seen.items() if count >= eset.read_quorum)


async def walk_set(
    eset: ErasureSet, bucket: str, start_after: str = "", page: int = PAGE, prefix: str = ""
) -> AsyncIterator[ObjectInfo]:
    """Every object name any online drive of the set holds, in key order, after ``start_after``.

    The ``ObjectInfo`` comes from the first drive that listed the name (its size is that
    drive's version's; the healer reads every drive's metadata itself)."""
    marker = start_after
    while True:
        after = marker
        results = await eset.fan_out(
            lambda drive: drive.list_objects_page(bucket, prefix, "", after, page)  # noqa: B023
        )
        pages = [r for r in results if isinstance(r, ListPage)]
        if not pages:
            if all(isinstance(r, VolumeNotFound) for r in results):
                return
            raise ReadQuorum(f"walk {bucket}: no drive of set {eset.index} answered")
        bounds = [p.entries[-1].name for p in pages if p.truncated and p.entries]
        bound = min(bounds) if bounds else None
        names: dict[str, ObjectInfo] = {}
        for listed in pages:
            for entry in listed.entries:
                if bound is not None and entry.name > bound:
                    break
                if entry.meta is not None and entry.name not in names:
                    names[entry.name] = ObjectInfo.from_meta(bucket, entry.name, entry.meta)
                elif entry.meta is None and not entry.is_prefix:
                    names.setdefault(entry.name, ObjectInfo(bucket, entry.name, 0, "", 0))
        for name in sorted(names):
            yield names[name]
        if bound is None:
            return
        marker = bound
