"""Object metadata: the per-drive record of one object version, stored as msgpack with a checksum.

File layout: ``b"MGM1"`` magic, 8-byte xxh3-64 checksum of the payload, msgpack payload. A
mismatch in any part raises :class:`~storage.errors.FileCorrupt`.

Every drive of a set holds its own copy. The copies differ only in ``erasure.index`` (which
shard this drive holds) and in ``inline`` (this drive's framed shard, for small objects), so
:meth:`ObjectMeta.version_key` leaves those out when the object layer votes on a version.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import msgpack
import xxhash

from storage.errors import FileCorrupt

META_MAGIC = b"MGM1"
META_FORMAT_VERSION = 1


@dataclass(frozen=True)
class ErasureInfo:
    """How an object was erasure coded, and which shard this drive holds."""

    data: int
    parity: int
    block_size: int
    distribution: tuple[int, ...]  # distribution[drive position] = shard index on that drive
    index: int = -1  # shard index held by the drive this copy lives on

    @property
    def total(self) -> int:
        return self.data + self.parity

    def shard_chunk_size(self) -> int:
        """The shard size of one full block (the bitrot chunk size)."""
        return -(-self.block_size // self.data)

    def shard_size(self, object_size: int) -> int:
        """Total unframed shard bytes each drive holds for an object of ``object_size``."""
        full, rest = divmod(object_size, self.block_size)
        return full * self.shard_chunk_size() + -(-rest // self.data)

    def to_dict(self) -> dict[str, Any]:
        return {
            "k": self.data,
            "m": self.parity,
            "bs": self.block_size,
            "dist": list(self.distribution),
            "idx": self.index,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ErasureInfo:
        return cls(
            data=int(raw["k"]),
            parity=int(raw["m"]),
            block_size=int(raw["bs"]),
            distribution=tuple(int(x) for x in raw["dist"]),
            index=int(raw["idx"]),
        )


@dataclass(frozen=True)
class ObjectMeta:
    """One object version as recorded on one drive."""

    size: int
    etag: str
    mod_time_ns: int
    data_dir: str
    erasure: ErasureInfo
    content_type: str = "application/octet-stream"
    user_meta: dict[str, str] = field(default_factory=dict)
    inline: bytes | None = None  # this drive's framed shard when the object is small

    def version_key(self) -> tuple[Any, ...]:
        """What every drive's copy of the same version agrees on."""
        erasure = self.erasure
        return (
            self.mod_time_ns,
            self.data_dir,
            self.size,
            self.etag,
            erasure.data,
            erasure.parity,
            erasure.block_size,
            erasure.distribution,
            self.inline is not None,
        )

    def without_inline(self) -> ObjectMeta:
        return dataclasses.replace(self, inline=None)

    def for_drive(self, index: int, inline: bytes | None) -> ObjectMeta:
        """This version's copy for the drive holding shard ``index``."""
        return dataclasses.replace(
            self, erasure=dataclasses.replace(self.erasure, index=index), inline=inline
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": META_FORMAT_VERSION,
            "size": self.size,
            "etag": self.etag,
            "mtime": self.mod_time_ns,
            "ddir": self.data_dir,
            "ec": self.erasure.to_dict(),
            "ctype": self.content_type,
            "umeta": dict(self.user_meta),
            "inline": self.inline,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ObjectMeta:
        inline = raw.get("inline")
        return cls(
            size=int(raw["size"]),
            etag=str(raw["etag"]),
            mod_time_ns=int(raw["mtime"]),
            data_dir=str(raw["ddir"]),
            erasure=ErasureInfo.from_dict(raw["ec"]),
            content_type=str(raw["ctype"]),
            user_meta={str(k): str(v) for k, v in raw["umeta"].items()},
            inline=bytes(inline) if inline is not None else None,
        )

    def to_msgpack(self) -> bytes:
        packed: bytes = msgpack.packb(self.to_dict(), use_bin_type=True)
        return packed

    @classmethod
    def from_msgpack(cls, payload: bytes) -> ObjectMeta:
        return cls.from_dict(msgpack.unpackb(payload, raw=False))


def encode_meta(meta: ObjectMeta) -> bytes:
    """The bytes of a metadata file: magic, checksum, msgpack payload."""
    payload = meta.to_msgpack()
    return META_MAGIC + xxhash.xxh3_64_digest(payload) + payload


def decode_meta(blob: bytes, where: str = "") -> ObjectMeta:
    """Parse a metadata file, raising FileCorrupt on any damage."""
    suffix = f" in {where}" if where else ""
    if len(blob) < 12 or blob[:4] != META_MAGIC:
        raise FileCorrupt(f"metadata has a bad header{suffix}")
    payload = blob[12:]
    if xxhash.xxh3_64_digest(payload) != blob[4:12]:
        raise FileCorrupt(f"metadata checksum mismatch{suffix}")
    try:
        return ObjectMeta.from_msgpack(payload)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise FileCorrupt(f"metadata payload is malformed{suffix}: {exc}") from exc
