"""Listing objects across every set: each set's drives vote on each key, then the sets merge.

Every drive walks its own copy of the bucket in key order (:mod:`storage.listing`) and returns a
page. A key is listed when a read quorum of a set's drives hold the same version of it (or the
same common prefix); a key only a minority hold (a failed write, a missed delete) is left out.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Sequence

from storage.drive import ListEntry, ListPage
from storage.erasure_set import ErasureSet
from storage.errors import BucketNotFound, FileNotFound, InvalidArgument, ReadQuorum, VolumeNotFound
from storage.info import ListResult, ObjectInfo
from storage.names import validate_bucket, validate_prefix
from storage.quorum import find_agreement, reduce_quorum

MAX_KEYS = 1000


def encode_token(marker: str) -> str:
    return base64.urlsafe_b64encode(marker.encode()).decode()


def decode_token(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidArgument("bad continuation token") from exc


async def list_objects(
    sets: Sequence[ErasureSet],
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
        marker = max(marker, decode_token(continuation_token))
    if max_keys == 0:
        return ListResult([], [], False, None)
    per_set = await asyncio.gather(
        *(_list_set(eset, bucket, prefix, delimiter, marker, max_keys + 1) for eset in sets)
    )
    merged = sorted(
        {e.name: e for entries in per_set for e in entries}.values(), key=lambda e: e.name
    )
    truncated = len(merged) > max_keys
    page = merged[:max_keys]
    objects = [ObjectInfo.from_meta(bucket, e.name, e.meta) for e in page if e.meta is not None]
    prefixes = [e.name for e in page if e.is_prefix]
    token = encode_token(page[-1].name) if truncated and page else None
    return ListResult(objects, prefixes, truncated, token)


async def _list_set(
    eset: ErasureSet, bucket: str, prefix: str, delimiter: str, marker: str, want: int
) -> list[ListEntry]:
    """Entries a read quorum of the set's drives agree on, up to ``want`` of them."""
    agreed: list[ListEntry] = []
    while len(agreed) < want:
        after = marker
        results = await eset.fan_out(
            lambda drive: drive.list_objects_page(bucket, prefix, delimiter, after, want)  # noqa: B023
        )
        reduce_quorum(
            results,
            eset.read_quorum,
            verdicts={VolumeNotFound: BucketNotFound(f"bucket {bucket} not found")},
            short=lambda why: ReadQuorum(f"list {bucket}: set {eset.index} ({why})"),
        )
        pages = [r for r in results if isinstance(r, ListPage)]
        # A truncated page only speaks for keys up to its last entry.
        bounds = [p.entries[-1].name for p in pages if p.truncated and p.entries]
        bound = min(bounds) if bounds else None
        agreed.extend(vote(pages, bound, eset.read_quorum))
        if bound is None:
            break
        marker = bound
    return agreed[:want]


def _entry_version(entry: ListEntry) -> tuple[int, tuple[object, ...]]:
    # Common prefixes and object versions must compare: (0,) sorts before any object.
    return (0, ()) if entry.meta is None else (1, entry.meta.version_key())


def vote(pages: Sequence[ListPage], bound: str | None, quorum: int) -> list[ListEntry]:
    """The entries (up to ``bound``) that a quorum of pages agree on, in key order."""
    seen: dict[str, dict[int, ListEntry]] = {}
    for number, page in enumerate(pages):
        for entry in page.entries:
            if bound is not None and entry.name > bound:
                break
            seen.setdefault(entry.name, {})[number] = entry
    chosen: list[ListEntry] = []
    absent = FileNotFound("not on this drive")
    for name in sorted(seen):
        held = seen[name]
        copies = [held.get(number, absent) for number in range(len(pages))]
        agreement = find_agreement(copies, quorum, version=_entry_version)
        if agreement is not None:
            chosen.append(agreement.require())
    return chosen
