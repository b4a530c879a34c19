"""The object layer's public records: what it says about objects, buckets and listings, and the
damage reports it hands to the healer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from storage.meta import ObjectMeta, PartInfo
from storage.reader import ReadStats


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
    sys_meta: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    checksums: dict[str, str] = field(default_factory=dict)
    checksum_type: str = ""
    parts: tuple[PartInfo, ...] = ()

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
            sys_meta=dict(meta.sys_meta),
            tags=dict(meta.tags),
            checksums=dict(meta.checksums),
            checksum_type=meta.checksum_type,
            parts=meta.parts,
        )

    def part_span(self, number: int) -> tuple[int, int] | None:
        """``(offset, length)`` of the ``number``-th part, counted from 1 as GetObject's
        ``partNumber`` counts (an object stored by one PUT is one part); None past the end."""
        if not self.parts:
            return (0, self.size) if number == 1 else None
        if not 1 <= number <= len(self.parts):
            return None
        offset = sum(part.size for part in self.parts[: number - 1])
        return offset, self.parts[number - 1].size

    @property
    def parts_count(self) -> int:
        return len(self.parts)


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
