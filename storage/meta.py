"""Object metadata: the per-drive record of one object version, stored as msgpack with a checksum.

File layout: ``b"MGM1"`` magic, 8-byte xxh3-64 checksum of the payload, msgpack payload. A
mismatch in any part raises :class:`~storage.errors.FileCorrupt`.

Every drive of a set holds its own copy. The copies differ only in ``erasure.index`` (which
shard this drive holds) and in ``inline`` (this drive's framed shard, for small objects), so
:meth:`ObjectMeta.version_key` leaves those out when the object layer votes on a version.

Metadata arrives from grid peers as well as from disk, so decoding trusts nothing: every field
must have its type and lie in its range (:meth:`ObjectMeta.check`), the data directory must be
a UUID hex (it becomes a path), and the sizes that drive allocations (block size, shard
counts, the shard distribution) are bounded, so a crafted record can neither reach outside the
drive nor make a node allocate without bound. A record that breaks a rule raises
:class:`MetaError` (a ``ValueError``); :func:`decode_meta` turns it into FileCorrupt.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import msgpack
import xxhash

from storage.errors import FileCorrupt, StorageError
from storage.names import shown, validate_data_dir, validate_object, validate_upload_id
from storage.placement import MAX_SET_DRIVES

META_MAGIC = b"MGM1"
META_FORMAT_VERSION = 1

#: S3's largest object (5 TiB).
MAX_OBJECT_SIZE = 5 << 40
#: The largest erasure block a record may name (the layer uses 1 MiB): a reader allocates
#: about one block per stream, so a crafted block size must not be able to ask for more.
MAX_BLOCK_SIZE = 64 << 20
MAX_ETAG_CHARS = 256
#: Content type and each user metadata value come from HTTP headers (aiohttp caps a header
#: at 8190 bytes); user metadata as a whole is capped well above the gateway's 2 KiB.
MAX_TEXT_BYTES = 8 << 10
MAX_USER_META_BYTES = 64 << 10
#: S3's limits: 10,000 parts of at most 5 GiB; 10 tags per object (keys 128 characters,
#: values 256).
MAX_PARTS = 10_000
MAX_PART_SIZE = 5 << 30
MAX_TAGS = 10
MAX_TAG_KEY_CHARS = 128
MAX_TAG_VALUE_CHARS = 256
#: The system metadata S3 stores with an object and returns as headers (besides Content-Type).
SYSTEM_META: frozenset[str] = frozenset(
    {"cache-control", "content-disposition", "content-encoding", "content-language", "expires"}
)
#: Whole-object checksum algorithms S3 defines (``x-amz-checksum-<algorithm>``).
CHECKSUM_ALGORITHMS: frozenset[str] = frozenset({"crc32", "crc32c", "crc64nvme", "sha1", "sha256"})
CHECKSUM_TYPES: frozenset[str] = frozenset({"", "FULL_OBJECT", "COMPOSITE"})
MAX_CHECKSUM_CHARS = 128
#: Bitrot hash bytes in front of each chunk (storage.bitrot.HASH_SIZE).
_FRAME_HASH_BYTES = 16
_INT64_MAX = (1 << 63) - 1


class MetaError(ValueError):
    """A metadata record breaks a rule: a missing field, a wrong type, a value out of range."""


def _int(value: object, field_name: str, low: int, high: int) -> int:
    # bool is an int subclass: True must never pass as a count or a size.
    if not isinstance(value, int) or isinstance(value, bool):
        raise MetaError(f"field {field_name!r} must be an integer, not {type(value).__name__}")
    if not low <= value <= high:
        raise MetaError(f"field {field_name!r} is {shown(value)}, outside {low}..{high}")
    return value


def _text(value: object, field_name: str, max_bytes: int) -> str:
    if not isinstance(value, str):
        raise MetaError(f"field {field_name!r} must be a string, not {type(value).__name__}")
    if len(value) > max_bytes or len(value.encode("utf-8", "surrogatepass")) > max_bytes:
        raise MetaError(f"field {field_name!r} is longer than {max_bytes} bytes")
    return value


def _str_map(
    value: object, field_name: str, *, max_items: int, key_bytes: int, value_bytes: int
) -> dict[str, str]:
    """A map of strings with at most ``max_items`` entries, each key and value bounded."""
    if not isinstance(value, dict):
        raise MetaError(f"field {field_name!r} must be a map")
    if len(value) > max_items:
        raise MetaError(f"field {field_name!r} holds more than {max_items} entries")
    for name, text in value.items():
        _text(name, field_name, key_bytes)
        _text(text, field_name, value_bytes)
    return value


def _checksums(value: object, field_name: str) -> dict[str, str]:
    checked = _str_map(
        value, field_name, max_items=len(CHECKSUM_ALGORITHMS), key_bytes=16,
        value_bytes=MAX_CHECKSUM_CHARS,
    )  # fmt: skip
    unknown = set(checked) - CHECKSUM_ALGORITHMS
    if unknown:
        raise MetaError(f"field {field_name!r} names unknown algorithms {sorted(unknown)[:3]}")
    return checked


def _field(raw: dict[str, Any], name: str) -> Any:
    if not isinstance(raw, dict):
        raise MetaError(f"expected a map, not {type(raw).__name__}")
    if name not in raw:
        raise MetaError(f"field {name!r} is missing")
    return raw[name]


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

    def check(self) -> ErasureInfo:
        """Raise MetaError unless every field has its type and lies in its range."""
        _int(self.data, "k", 1, MAX_SET_DRIVES)
        _int(self.parity, "m", 0, MAX_SET_DRIVES - self.data)
        _int(self.block_size, "bs", 1, MAX_BLOCK_SIZE)
        _int(self.index, "idx", -1, self.total - 1)
        dist = self.distribution
        if not isinstance(dist, tuple) or len(dist) != self.total:
            raise MetaError(f"field 'dist' must list {self.total} shard indices")
        for position, shard in enumerate(dist):
            _int(shard, f"dist[{position}]", 0, self.total - 1)
        if len(set(dist)) != self.total:
            raise MetaError("field 'dist' must name every shard index once")
        return self

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
        """Decode and :meth:`check` (MetaError on any fault)."""
        dist = _field(raw, "dist")
        if not isinstance(dist, list | tuple) or len(dist) > MAX_SET_DRIVES:
            raise MetaError(f"field 'dist' must be a list of at most {MAX_SET_DRIVES} indices")
        return cls(
            data=_field(raw, "k"),
            parity=_field(raw, "m"),
            block_size=_field(raw, "bs"),
            distribution=tuple(dist),
            index=_field(raw, "idx"),
        ).check()


@dataclass(frozen=True)
class PartInfo:
    """One part of a multipart upload: staged on the drives until the upload completes, then
    listed in the object's metadata (its shard file is ``part.<number>`` in the data dir)."""

    number: int
    size: int
    etag: str
    mod_time_ns: int
    data_dir: str  # the staged part's own name while the upload is in progress
    checksums: dict[str, str] = field(default_factory=dict)

    def version(self) -> tuple[Any, ...]:
        """What every drive's record of the same upload of this part agrees on."""
        return (self.number, self.size, self.etag, self.mod_time_ns, self.data_dir)

    def check(self) -> PartInfo:
        """Raise MetaError unless every field has its type and lies in its range."""
        _int(self.number, "n", 1, MAX_PARTS)
        _int(self.size, "size", 0, MAX_PART_SIZE)
        _text(self.etag, "etag", MAX_ETAG_CHARS)
        _int(self.mod_time_ns, "mtime", 0, _INT64_MAX)
        try:
            validate_data_dir(self.data_dir)
        except StorageError as exc:
            raise MetaError(f"field 'ddir': {exc}") from exc
        _checksums(self.checksums, "cks")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.number,
            "size": self.size,
            "etag": self.etag,
            "mtime": self.mod_time_ns,
            "ddir": self.data_dir,
            "cks": dict(self.checksums),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> PartInfo:
        """Decode and :meth:`check` (MetaError on any fault)."""
        checksums = _field(raw, "cks")
        if not isinstance(checksums, dict):
            raise MetaError("field 'cks' must be a map")
        return cls(
            number=_field(raw, "n"),
            size=_field(raw, "size"),
            etag=_field(raw, "etag"),
            mod_time_ns=_field(raw, "mtime"),
            data_dir=_field(raw, "ddir"),
            checksums=dict(checksums),
        ).check()

    def to_msgpack(self) -> bytes:
        packed: bytes = msgpack.packb(self.to_dict(), use_bin_type=True)
        return packed

    @classmethod
    def from_msgpack(cls, payload: bytes) -> PartInfo:
        return cls.from_dict(msgpack.unpackb(payload, raw=False))


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
    #: Cache-Control, Content-Disposition, ... (names from :data:`SYSTEM_META`).
    sys_meta: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    #: Whole-object checksums (algorithm -> base64), and how they were computed
    #: (``FULL_OBJECT`` or ``COMPOSITE``; "" for a single PUT).
    checksums: dict[str, str] = field(default_factory=dict)
    checksum_type: str = ""
    #: The parts of an object made by a multipart upload (empty for a single PUT): each part is
    #: erasure coded on its own, its shard file ``part.<number>`` in the data directory.
    parts: tuple[PartInfo, ...] = ()
    #: How many parts a listing's copy had before :meth:`for_listing` left them out.
    part_count: int = 0

    @property
    def is_multipart(self) -> bool:
        return bool(self.parts) or self.part_count > 0

    def segments(self) -> list[tuple[int, int]]:
        """``(part number, size)`` of each separately coded piece, in order (``0`` names the
        one shard file of an object stored by a single PUT)."""
        if not self.parts:
            return [(0, self.size)]
        return [(part.number, part.size) for part in self.parts]

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
            len(self.parts) or self.part_count,
            tuple(sorted(self.tags.items())),
        )

    def without_inline(self) -> ObjectMeta:
        return dataclasses.replace(self, inline=None)

    def for_listing(self) -> ObjectMeta:
        """This version as a listing carries it: no inline data, and the parts of a multipart
        object left out (up to 10,000 of them per object would swell a page; the part count
        still tells versions apart)."""
        if not self.parts:
            return self.without_inline()
        return dataclasses.replace(self, inline=None, parts=(), part_count=len(self.parts))

    def for_drive(self, index: int, inline: bytes | None) -> ObjectMeta:
        """This version's copy for the drive holding shard ``index``."""
        return dataclasses.replace(
            self, erasure=dataclasses.replace(self.erasure, index=index), inline=inline
        )

    def check(self) -> ObjectMeta:
        """Raise MetaError unless every field has its type and lies in its range.

        The data directory must be a UUID hex (it becomes a path on the drive), and inline data
        must fit the one short block an inline object has.
        """
        _int(self.size, "size", 0, MAX_OBJECT_SIZE)
        _text(self.etag, "etag", MAX_ETAG_CHARS)
        _int(self.mod_time_ns, "mtime", 0, _INT64_MAX)
        try:
            validate_data_dir(self.data_dir)
        except StorageError as exc:
            raise MetaError(f"field 'ddir': {exc}") from exc
        if not isinstance(self.erasure, ErasureInfo):
            raise MetaError("field 'ec' must be erasure information")
        self.erasure.check()
        _text(self.content_type, "ctype", MAX_TEXT_BYTES)
        self._check_user_meta()
        self._check_extras()
        if self.inline is not None:
            if not isinstance(self.inline, bytes):
                raise MetaError("field 'inline' must be bytes")
            if self.size >= self.erasure.block_size:
                raise MetaError("an object of a block or more cannot be stored inline")
            limit = self.erasure.shard_chunk_size() + _FRAME_HASH_BYTES
            if len(self.inline) > limit:
                raise MetaError(f"field 'inline' is {len(self.inline)} bytes, over {limit}")
        return self

    def _check_user_meta(self) -> None:
        if not isinstance(self.user_meta, dict):
            raise MetaError("field 'umeta' must be a map")
        total = 0
        for name, value in self.user_meta.items():
            total += len(_text(name, "umeta", MAX_TEXT_BYTES)) + len(
                _text(value, "umeta", MAX_TEXT_BYTES)
            )
            if total > MAX_USER_META_BYTES:
                raise MetaError(f"field 'umeta' holds more than {MAX_USER_META_BYTES} bytes")

    def _check_extras(self) -> None:
        sys_meta = _str_map(
            self.sys_meta, "smeta", max_items=len(SYSTEM_META), key_bytes=32,
            value_bytes=MAX_TEXT_BYTES,
        )  # fmt: skip
        if set(sys_meta) - SYSTEM_META:
            raise MetaError("field 'smeta' names a header that is not system metadata")
        tags = _str_map(
            self.tags, "tags", max_items=MAX_TAGS, key_bytes=4 * MAX_TAG_KEY_CHARS,
            value_bytes=4 * MAX_TAG_VALUE_CHARS,
        )  # fmt: skip
        for key, value in tags.items():
            if len(key) > MAX_TAG_KEY_CHARS or len(value) > MAX_TAG_VALUE_CHARS:
                raise MetaError("field 'tags' holds a key or value over S3's limits")
        _checksums(self.checksums, "cks")
        if self.checksum_type not in CHECKSUM_TYPES:
            raise MetaError(f"field 'ckt' is {shown(self.checksum_type)}")
        if not isinstance(self.parts, tuple) or len(self.parts) > MAX_PARTS:
            raise MetaError(f"field 'parts' must list at most {MAX_PARTS} parts")
        _int(self.part_count, "pcount", 0, MAX_PARTS)
        if self.part_count and self.parts:
            raise MetaError("field 'pcount' is only for a record whose parts are left out")
        previous = 0
        for part in self.parts:
            if not isinstance(part, PartInfo):
                raise MetaError("field 'parts' must hold parts")
            part.check()
            if part.number <= previous:
                raise MetaError("field 'parts' must be in ascending part order")
            previous = part.number
        if self.parts:
            if sum(part.size for part in self.parts) != self.size:
                raise MetaError("the parts' sizes do not add up to the object's size")
            if self.inline is not None:
                raise MetaError("a multipart object cannot be stored inline")

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
            "smeta": dict(self.sys_meta),
            "tags": dict(self.tags),
            "cks": dict(self.checksums),
            "ckt": self.checksum_type,
            "parts": [part.to_dict() for part in self.parts],
            "pcount": self.part_count,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ObjectMeta:
        """Decode a record from disk or from a peer, and :meth:`check` it (MetaError)."""
        version = _field(raw, "v")
        if version != META_FORMAT_VERSION:
            raise MetaError(f"metadata format version {shown(version)} is not supported")
        user_meta = _field(raw, "umeta")
        if not isinstance(user_meta, dict):
            raise MetaError("field 'umeta' must be a map")
        # Fields added after format 1 shipped are optional: older records lack them.
        extras: dict[str, Any] = {}
        for name in ("smeta", "tags", "cks"):
            value = raw.get(name, {})
            if not isinstance(value, dict):
                raise MetaError(f"field {name!r} must be a map")
            extras[name] = dict(value)
        parts = raw.get("parts", [])
        if not isinstance(parts, list) or len(parts) > MAX_PARTS:
            raise MetaError(f"field 'parts' must be a list of at most {MAX_PARTS} parts")
        return cls(
            size=_field(raw, "size"),
            etag=_field(raw, "etag"),
            mod_time_ns=_field(raw, "mtime"),
            data_dir=_field(raw, "ddir"),
            erasure=ErasureInfo.from_dict(_field(raw, "ec")),
            content_type=_field(raw, "ctype"),
            user_meta=dict(user_meta),
            inline=raw.get("inline"),
            sys_meta=extras["smeta"],
            tags=extras["tags"],
            checksums=extras["cks"],
            checksum_type=raw.get("ckt", ""),
            parts=tuple(PartInfo.from_dict(part) for part in parts),
            part_count=raw.get("pcount", 0),
        ).check()

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
        # MetaError and msgpack's errors are ValueErrors.
        raise FileCorrupt(f"metadata payload is malformed{suffix}: {exc}") from exc


@dataclass(frozen=True)
class UploadRecord:
    """A multipart upload in progress, as staged on each drive of the object's set.

    ``meta`` is the template of the object the upload will make: its content type, user and
    system metadata, tags, checksum algorithm and type, and erasure layout (size, ETag and
    parts are filled in when the upload completes)."""

    key: str
    upload_id: str
    initiated_ns: int
    meta: ObjectMeta

    def version(self) -> tuple[Any, ...]:
        return (self.key, self.upload_id, self.initiated_ns, self.meta.version_key())

    def check(self) -> UploadRecord:
        """Raise MetaError unless every field has its type and lies in its range."""
        try:
            validate_object(self.key)
            validate_upload_id(self.upload_id)
        except StorageError as exc:
            raise MetaError(f"upload record: {exc}") from exc
        _int(self.initiated_ns, "init", 0, _INT64_MAX)
        if not isinstance(self.meta, ObjectMeta):
            raise MetaError("field 'meta' must be object metadata")
        self.meta.check()
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "id": self.upload_id,
            "init": self.initiated_ns,
            "meta": self.meta.to_dict(),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> UploadRecord:
        """Decode and :meth:`check` (MetaError on any fault)."""
        meta = _field(raw, "meta")
        if not isinstance(meta, dict):
            raise MetaError("field 'meta' must be a map")
        return cls(
            key=_field(raw, "key"),
            upload_id=_field(raw, "id"),
            initiated_ns=_field(raw, "init"),
            meta=ObjectMeta.from_dict(meta),
        ).check()

    def to_msgpack(self) -> bytes:
        packed: bytes = msgpack.packb(self.to_dict(), use_bin_type=True)
        return packed

    @classmethod
    def from_msgpack(cls, payload: bytes) -> UploadRecord:
        return cls.from_dict(msgpack.unpackb(payload, raw=False))


def encode_record(record: UploadRecord | PartInfo) -> bytes:
    """The bytes of an upload or part record file: magic, checksum, msgpack payload."""
    payload = record.to_msgpack()
    return META_MAGIC + xxhash.xxh3_64_digest(payload) + payload


def _checked_payload(blob: bytes, where: str) -> bytes:
    suffix = f" in {where}" if where else ""
    if len(blob) < 12 or blob[:4] != META_MAGIC:
        raise FileCorrupt(f"record has a bad header{suffix}")
    payload = blob[12:]
    if xxhash.xxh3_64_digest(payload) != blob[4:12]:
        raise FileCorrupt(f"record checksum mismatch{suffix}")
    return payload


def decode_upload(blob: bytes, where: str = "") -> UploadRecord:
    """Parse an upload record file, raising FileCorrupt on any damage."""
    payload = _checked_payload(blob, where)
    try:
        return UploadRecord.from_msgpack(payload)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise FileCorrupt(f"upload record is malformed in {where}: {exc}") from exc


def decode_part(blob: bytes, where: str = "") -> PartInfo:
    """Parse a part record file, raising FileCorrupt on any damage."""
    payload = _checked_payload(blob, where)
    try:
        return PartInfo.from_msgpack(payload)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise FileCorrupt(f"part record is malformed in {where}: {exc}") from exc
