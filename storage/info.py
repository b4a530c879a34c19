"""The object layer's public records: what it says about objects, buckets and listings, and the
damage reports it hands to the healer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from storage.meta import ObjectMeta
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
