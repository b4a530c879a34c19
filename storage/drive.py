"""The Drive interface: everything the object layer asks of one drive.

It is written so that a drive on another node can implement it over the grid: every method is
async and coarse enough to be one call, every argument and result is plain data (``str``,
``int``, ``bytes`` or one of the small dataclasses below, each with ``to_dict``/``from_dict``
and ``to_msgpack``/``from_msgpack``), shard data moves as streams of chunks, and every failure
is a :class:`~storage.errors.StorageError` subclass that can travel by name.

Writing an object on one drive:

1. ``writer = await drive.create_shard(upload_id)``; ``await writer.write(chunk)`` once per
   erasure block; ``await writer.commit()`` (or ``await writer.abort()``). The shard lands in
   the drive's temporary area. Objects stored inline skip this step.
2. ``await drive.rename_data(upload_id, volume, key, meta)`` moves the shard into place and
   then replaces the metadata file, keeping the previous version aside.
3. ``await drive.commit_rename(upload_id, volume, key)`` once write quorum is reached (drops
   the previous version), or ``await drive.undo_rename(upload_id, volume, key)`` to roll back.

A multipart upload is staged on the drives of the object's set, outside the temporary area
(it survives a restart): ``write_upload`` records it; each part is written with
``create_shard`` and moved into the upload by ``commit_part``; completing it links the chosen
parts' shards into a write in progress (``assemble_parts``, no copy) that ``rename_data``
installs like any other; ``delete_upload`` removes what is left (or aborts it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import msgpack

from storage.format import FormatInfo
from storage.meta import ObjectMeta, PartInfo, UploadRecord


def _pack(value: dict[str, Any]) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def _unpack(payload: bytes) -> dict[str, Any]:
    value: dict[str, Any] = msgpack.unpackb(payload, raw=False)
    return value


@dataclass(frozen=True)
class LatencyStats:
    """Recent latency of one kind of operation on a drive."""

    count: int = 0
    avg_ms: float = 0.0
    max_ms: float = 0.0
    last_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.count, "avg": self.avg_ms, "max": self.max_ms, "last": self.last_ms}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> LatencyStats:
        return cls(int(raw["n"]), float(raw["avg"]), float(raw["max"]), float(raw["last"]))


@dataclass(frozen=True)
class DiskInfo:
    """Space, identity and health of one drive."""

    total: int
    free: int
    used: int
    inodes_total: int
    inodes_free: int
    healing: bool
    drive_id: str
    endpoint: str
    latency: dict[str, LatencyStats] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "free": self.free,
            "used": self.used,
            "itotal": self.inodes_total,
            "ifree": self.inodes_free,
            "healing": self.healing,
            "id": self.drive_id,
            "endpoint": self.endpoint,
            "latency": {op: stats.to_dict() for op, stats in self.latency.items()},
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> DiskInfo:
        return cls(
            total=int(raw["total"]),
            free=int(raw["free"]),
            used=int(raw["used"]),
            inodes_total=int(raw["itotal"]),
            inodes_free=int(raw["ifree"]),
            healing=bool(raw["healing"]),
            drive_id=str(raw["id"]),
            endpoint=str(raw["endpoint"]),
            latency={op: LatencyStats.from_dict(s) for op, s in raw["latency"].items()},
        )

    def to_msgpack(self) -> bytes:
        return _pack(self.to_dict())

    @classmethod
    def from_msgpack(cls, payload: bytes) -> DiskInfo:
        return cls.from_dict(_unpack(payload))


@dataclass(frozen=True)
class VolumeInfo:
    """A volume (one bucket's directory) on a drive."""

    name: str
    created_ns: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "created": self.created_ns}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> VolumeInfo:
        return cls(str(raw["name"]), int(raw["created"]))

    def to_msgpack(self) -> bytes:
        return _pack(self.to_dict())

    @classmethod
    def from_msgpack(cls, payload: bytes) -> VolumeInfo:
        return cls.from_dict(_unpack(payload))


@dataclass(frozen=True)
class ListEntry:
    """One listing entry: an object (with its metadata, inline data stripped) or a prefix."""

    name: str
    meta: ObjectMeta | None = None  # None for a common prefix or unreadable metadata
    is_prefix: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "prefix": self.is_prefix,
            "meta": self.meta.to_dict() if self.meta is not None else None,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ListEntry:
        meta = raw.get("meta")
        return cls(
            name=str(raw["name"]),
            meta=ObjectMeta.from_dict(meta) if meta is not None else None,
            is_prefix=bool(raw["prefix"]),
        )


@dataclass(frozen=True)
class ListPage:
    """Entries in key order, after ``start_after``; ``truncated`` when more may follow."""

    entries: list[ListEntry]
    truncated: bool

    def to_dict(self) -> dict[str, Any]:
        return {"entries": [e.to_dict() for e in self.entries], "truncated": self.truncated}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ListPage:
        return cls([ListEntry.from_dict(e) for e in raw["entries"]], bool(raw["truncated"]))

    def to_msgpack(self) -> bytes:
        return _pack(self.to_dict())

    @classmethod
    def from_msgpack(cls, payload: bytes) -> ListPage:
        return cls.from_dict(_unpack(payload))


#: A chunk of shard data: bytes, or a memoryview of an erasure block (passed on without a copy).
Buffer = bytes | memoryview


class ShardWriter(Protocol):
    """A shard being streamed into a drive's temporary area."""

    async def write(self, chunk: Buffer) -> None:
        """Append one chunk (the shard of one erasure block); the drive frames it with a hash."""

    async def commit(self) -> None:
        """Finish the file so ``rename_data`` can move it into place."""

    async def abort(self) -> None:
        """Drop the partial shard; safe to call more than once, and after ``commit``."""


@runtime_checkable
class Drive(Protocol):
    """One drive, local or remote. See the module docstring for the write sequence."""

    @property
    def endpoint(self) -> str:
        """Where the drive lives, e.g. ``/data/d1`` or ``http://node2:9000/data/d1``."""

    def is_online(self) -> bool:
        """Cheap bookkeeping check; the object layer skips offline drives without calling them."""

    async def disk_info(self) -> DiskInfo:
        """Space, identity, healing flag and recent latency."""

    async def read_format(self) -> FormatInfo:
        """The drive's format; UnformattedDrive when it has none."""

    async def write_format(self, fmt: FormatInfo) -> None:
        """Write (atomically replace) the drive's format file."""

    async def make_volume(self, volume: str) -> None:
        """Create a volume; VolumeExists when it is already there."""

    async def list_volumes(self) -> list[VolumeInfo]:
        """Every volume on the drive, sorted by name."""

    async def stat_volume(self, volume: str) -> VolumeInfo:
        """One volume; VolumeNotFound when it is missing."""

    async def delete_volume(self, volume: str, force: bool = False) -> None:
        """Remove a volume; VolumeNotEmpty while it holds objects, unless ``force``."""

    async def read_metadata(self, volume: str, key: str) -> ObjectMeta:
        """The object's metadata, inline data included."""

    async def write_metadata(self, volume: str, key: str, meta: ObjectMeta) -> None:
        """Atomically replace the object's metadata file (used by healing)."""

    async def delete_object(self, volume: str, key: str) -> None:
        """Remove the object's metadata and its data directory."""

    async def create_shard(self, upload_id: str, part: int = 0) -> ShardWriter:
        """Start streaming a shard into the temporary area under ``upload_id`` (the shard file
        of ``part`` when it is not 0: a healer rebuilding a multipart object)."""

    async def rename_data(self, upload_id: str, volume: str, key: str, meta: ObjectMeta) -> None:
        """Move the uploaded shard into place, then replace the metadata (last)."""

    async def commit_rename(self, upload_id: str, volume: str, key: str) -> None:
        """Drop the version that ``rename_data`` replaced, and the temporary files."""

    async def undo_rename(self, upload_id: str, volume: str, key: str) -> None:
        """Put back the version that ``rename_data`` replaced."""

    def read_shard(
        self,
        volume: str,
        key: str,
        data_dir: str,
        *,
        chunk_size: int,
        shard_size: int,
        offset: int,
        length: int,
        part: int = 0,
    ) -> AsyncIterator[bytes]:
        """Stream verified shard bytes ``[offset, offset + length)`` (of part ``part``'s shard
        file when it is not 0).

        Chunks come out one per bitrot frame (trimmed at the ends of the range). A damaged
        frame raises FileCorrupt at that point in the stream.
        """

    async def verify_shard(
        self,
        volume: str,
        key: str,
        data_dir: str,
        *,
        chunk_size: int,
        shard_size: int,
        deep: bool = True,
        part: int = 0,
    ) -> None:
        """Check a shard (of part ``part`` when not 0): FileNotFound when it is missing,
        FileCorrupt when it is bad.

        ``deep`` checks the hash of every frame; otherwise only that the file exists with the
        right size (what the scanner's normal mode and the healer's quick check need)."""

    async def list_objects_page(
        self, volume: str, prefix: str, delimiter: str, start_after: str, limit: int
    ) -> ListPage:
        """Up to ``limit`` entries after ``start_after``, with keys collapsed at ``delimiter``."""

    async def write_upload(self, volume: str, record: UploadRecord) -> None:
        """Record a multipart upload (durably; it survives a restart)."""

    async def read_upload(self, volume: str, upload_id: str) -> UploadRecord:
        """The upload's record; FileNotFound when there is no such upload."""

    async def list_uploads(self, volume: str) -> list[UploadRecord]:
        """The uploads in progress into ``volume`` (at most 10,000)."""

    async def delete_upload(self, volume: str, upload_id: str) -> None:
        """Remove an upload and every part staged for it; FileNotFound when there is none."""

    async def commit_part(self, upload_id: str, volume: str, mpu: str, part: PartInfo) -> None:
        """Move the shard written under ``upload_id`` into upload ``mpu`` as ``part``,
        replacing an earlier upload of the same part number."""

    async def list_parts(self, volume: str, mpu: str) -> list[PartInfo]:
        """The parts staged for upload ``mpu``, in part order."""

    async def assemble_parts(
        self, upload_id: str, volume: str, mpu: str, parts: list[tuple[int, str]]
    ) -> None:
        """Link the staged parts ``(number, data dir)`` of ``mpu`` into the write in progress
        ``upload_id`` as its shard files, ready for ``rename_data``."""
