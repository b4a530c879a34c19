"""The drive service's wire schema, shared by both ends: the fields of every drive operation,
how each field is checked, request encoding, and storage errors on the wire.

- A single call carries a msgpack map of named arguments (``vol``, ``key``, ``upload``, ...)
  and answers with the result's ``to_msgpack()`` bytes, or ``b""`` for ``None``.
- A storage error travels as the grid's error text ``[storage:<Code>] <message>``
  (:func:`encode_error`); the client rebuilds the same StorageError subclass with
  :func:`decode_error`. An error text without the tag comes from the grid itself (unknown
  drive path, handler deadline) and becomes DriveNotFound.
- **Nothing a peer sends is trusted.** :data:`SCHEMA` lists the fields of every operation and
  :data:`FIELDS` how each is checked (volume -> bucket name, key -> object key, upload ID and
  data dir -> UUID hex, listing strings -> bounded and NUL-free, sizes and offsets -> ranges,
  metadata and format -> decoded and checked field by field). The server refuses a request with
  a missing, unknown or invalid field before calling the drive; the client runs the same checks
  before sending, so a bad name fails without a round trip.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Final

import msgpack

from minigrid.handlers import HandlerID
from storage.errors import (
    DriveNotFound,
    InvalidArgument,
    StorageError,
    error_from_code,
)
from storage.format import FORMAT_VERSION, FormatInfo
from storage.meta import MAX_BLOCK_SIZE, MAX_PARTS, ObjectMeta, PartInfo, UploadRecord
from storage.names import (
    shown,
    validate_bucket,
    validate_data_dir,
    validate_list_text,
    validate_object,
    validate_upload_id,
)
from storage.placement import MAX_SET_DRIVES, MIN_SET_DRIVES

#: The CREATE_SHARD server's two messages: the shard file exists; the shard is committed.
SHARD_READY: Final = b"ready"
SHARD_COMMITTED: Final = b"ok"

_ERROR_TAG = re.compile(r"\[storage:([A-Za-z][A-Za-z0-9_]{0,63})\] ", re.ASCII)


# --- errors on the wire ---------------------------------------------------------------------


def encode_error(exc: StorageError) -> str:
    """The grid error text that carries ``exc``: ``[storage:<Code>] <message>``."""
    return f"[storage:{exc.code}] {exc}"


def decode_error(text: str, endpoint: str = "") -> StorageError:
    """Rebuild the StorageError that :func:`encode_error` carried.

    Text without the tag did not come from a drive but from the grid (no handler for that drive
    path, a handler deadline, a broken stream), so it becomes DriveNotFound naming ``endpoint``.
    """
    tagged = _ERROR_TAG.match(text)
    if tagged is None:
        where = f"drive {endpoint}" if endpoint else "remote drive"
        return DriveNotFound(f"{where}: {text}")
    return error_from_code(tagged.group(1), text[tagged.end() :])


# --- requests -------------------------------------------------------------------------------


def pack(value: object) -> bytes:
    """msgpack with binary strings kept apart from text, as the Drive dataclasses use it."""
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


# --- fields -------------------------------------------------------------------------------

#: The largest shard size or offset a request may name (far beyond any real shard).
MAX_SHARD_BYTES: Final = 1 << 60
#: A format may describe at most this many erasure sets.
MAX_FORMAT_SETS: Final = 1024
MAX_DEPLOYMENT_ID_CHARS: Final = 256


def _integer(value: object, name: str, low: int, high: int) -> int:
    # bool is an int subclass; never let True pass as an offset or a size.
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgument(f"field {name!r} must be an integer")
    if not low <= value <= high:
        raise InvalidArgument(f"field {name!r} is {shown(value)}, outside {low}..{high}")
    return value


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgument("field 'force' must be true or false")
    return value


def _meta(value: object) -> ObjectMeta:
    if isinstance(value, ObjectMeta):  # the client side checks the object it is sending
        value = value.to_dict()
    if not isinstance(value, dict):
        raise InvalidArgument("field 'meta' must be a map")
    try:
        return ObjectMeta.from_dict(value)  # checks every field (MetaError is a ValueError)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidArgument(f"malformed object metadata: {exc}") from exc


def _record(value: object) -> UploadRecord:
    if isinstance(value, UploadRecord):
        value = value.to_dict()
    if not isinstance(value, dict):
        raise InvalidArgument("field 'record' must be a map")
    try:
        return UploadRecord.from_dict(value)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidArgument(f"malformed upload record: {exc}") from exc


def _part_info(value: object) -> PartInfo:
    if isinstance(value, PartInfo):
        value = value.to_dict()
    if not isinstance(value, dict):
        raise InvalidArgument("field 'pinfo' must be a map")
    try:
        return PartInfo.from_dict(value)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidArgument(f"malformed part record: {exc}") from exc


def _part_list(value: object) -> list[tuple[int, str]]:
    """``[[number, data dir], ...]``: ascending part numbers, each data dir a UUID hex."""
    if not isinstance(value, list | tuple) or not 1 <= len(value) <= MAX_PARTS:
        raise InvalidArgument(f"field 'plist' must list 1-{MAX_PARTS} parts")
    parts: list[tuple[int, str]] = []
    previous = 0
    for item in value:
        if not isinstance(item, list | tuple) or len(item) != 2:
            raise InvalidArgument("field 'plist' must hold [number, data dir] pairs")
        number = _integer(item[0], "plist", 1, MAX_PARTS)
        if number <= previous:
            raise InvalidArgument("field 'plist' must be in ascending part order")
        previous = number
        parts.append((number, _string(validate_data_dir)(item[1])))
    return parts


def _drive_uuid(value: object, what: str) -> str:
    """A drive ID: a UUID in its canonical text form, as plan_format and the node write it."""
    try:
        if isinstance(value, str) and str(uuid.UUID(value)) == value:
            return value
    except ValueError:
        pass
    raise InvalidArgument(f"{what} {shown(value)} is not a UUID")


def check_format(fmt: FormatInfo) -> FormatInfo:
    """Refuse a format that no node would write: wrong version, IDs or set shapes."""
    if fmt.version != FORMAT_VERSION:
        raise InvalidArgument(f"format version {shown(fmt.version)} is not {FORMAT_VERSION}")
    deployment = fmt.deployment_id
    if not deployment or len(deployment) > MAX_DEPLOYMENT_ID_CHARS or not deployment.isprintable():
        raise InvalidArgument(
            f"deployment id {shown(deployment)} must be 1-{MAX_DEPLOYMENT_ID_CHARS} "
            "printable characters"
        )
    _drive_uuid(fmt.drive_id, "drive id")
    if not 1 <= len(fmt.sets) <= MAX_FORMAT_SETS:
        raise InvalidArgument(f"a format holds 1-{MAX_FORMAT_SETS} sets, not {len(fmt.sets)}")
    for members in fmt.sets:
        if not MIN_SET_DRIVES <= len(members) <= MAX_SET_DRIVES:
            raise InvalidArgument(f"a set holds 4-16 drives, not {len(members)}")
        for member in members:
            _drive_uuid(member, "drive id in the set layout")
    fmt.position()  # FormatMismatch unless the drive is in its own layout
    return fmt


def _format(value: object) -> FormatInfo:
    if isinstance(value, FormatInfo):
        value = value.to_dict()
    if not isinstance(value, dict):
        raise InvalidArgument("field 'format' must be a map")
    sets = value.get("sets")
    # Bound the shape before building tuples from it.
    if not isinstance(sets, list) or len(sets) > MAX_FORMAT_SETS:
        raise InvalidArgument(f"format sets must be a list of at most {MAX_FORMAT_SETS} sets")
    if any(not isinstance(s, list) or len(s) > MAX_SET_DRIVES for s in sets):
        raise InvalidArgument(f"each format set must list at most {MAX_SET_DRIVES} drive ids")
    try:
        fmt = FormatInfo.from_dict(value)
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidArgument(f"malformed format: {exc}") from exc
    if fmt.to_dict() != value:  # from_dict converts; the wire must carry the exact types
        raise InvalidArgument("format fields have the wrong types")
    return check_format(fmt)


def _string(check: Callable[[str], str]) -> Callable[[object], str]:
    """A name field: a string (else InvalidArgument), then ``check`` (InvalidName)."""

    def checked(value: object) -> str:
        if not isinstance(value, str):
            raise InvalidArgument(f"must be a string, not {type(value).__name__}")
        return check(value)

    return checked


#: How every request field is checked. A checker raises InvalidName or InvalidArgument.
FIELDS: Final[dict[str, Callable[[Any], Any]]] = {
    "vol": _string(validate_bucket),
    "key": _string(validate_object),
    "upload": _string(validate_upload_id),
    "mpu": _string(validate_upload_id),
    "part": lambda value: _integer(value, "part", 0, MAX_PARTS),
    "record": _record,
    "pinfo": _part_info,
    "plist": _part_list,
    "ddir": _string(validate_data_dir),
    "prefix": _string(lambda value: validate_list_text(value, "listing prefix")),
    "delim": _string(lambda value: validate_list_text(value, "listing delimiter")),
    "after": _string(lambda value: validate_list_text(value, "listing marker")),
    "limit": lambda value: _integer(value, "limit", 1, MAX_SHARD_BYTES),
    "chunk": lambda value: _integer(value, "chunk", 1, MAX_BLOCK_SIZE),
    "size": lambda value: _integer(value, "size", 0, MAX_SHARD_BYTES),
    "off": lambda value: _integer(value, "off", 0, MAX_SHARD_BYTES),
    "len": lambda value: _integer(value, "len", 0, MAX_SHARD_BYTES),
    "force": _flag,
    "deep": _flag,
    "meta": _meta,
    "format": _format,
}


def check_fields(fields: Mapping[Any, Any], names: tuple[str, ...], what: str) -> dict[str, Any]:
    """Check a request's fields against the names its handler takes; return the checked values.

    A missing or unexpected field, or one that fails its check, raises InvalidName or
    InvalidArgument saying which field and why.
    """
    unexpected = [name for name in fields if name not in names]
    if unexpected:
        listed = ", ".join(shown(name) for name in unexpected[:5])
        raise InvalidArgument(f"{what}: unexpected field(s) {listed}")
    checked: dict[str, Any] = {}
    for name in names:
        if name not in fields:
            raise InvalidArgument(f"{what}: field {name!r} is missing")
        try:
            checked[name] = FIELDS[name](fields[name])
        except StorageError as exc:
            raise type(exc)(f"{what}: field {name!r}: {exc}") from exc
    return checked


class Request:
    """A request map read from the wire, every field checked (see :func:`check_fields`)."""

    def __init__(self, payload: bytes, what: str, names: tuple[str, ...]) -> None:
        self.what = what
        try:
            value = msgpack.unpackb(payload, raw=False) if payload else {}
        except Exception as exc:  # msgpack raises several unrelated types on bad input
            raise InvalidArgument(f"{what}: malformed request: {exc}") from exc
        if not isinstance(value, dict):
            raise InvalidArgument(f"{what}: the request is not a map")
        self._fields = check_fields(value, names, what)

    def __getitem__(self, name: str) -> Any:
        return self._fields[name]


# --- the schema -----------------------------------------------------------------------------

_SHARD_AT: Final = ("vol", "key", "ddir", "chunk", "size", "part")
_COMMIT: Final = ("upload", "vol", "key")

#: Every drive operation on the grid and the fields of its request, declared once for both
#: ends: :mod:`storage.remote` builds requests with :func:`encode_request`, which refuses any
#: other field set, and :mod:`storage.drive_service` reads them with :class:`Request`. A field
#: name means the same thing in every operation, and :data:`FIELDS` checks it.
SCHEMA: Final[dict[HandlerID, tuple[str, ...]]] = {
    HandlerID.DISK_INFO: (),
    HandlerID.READ_FORMAT: (),
    HandlerID.WRITE_FORMAT: ("format",),
    HandlerID.MAKE_VOLUME: ("vol",),
    HandlerID.LIST_VOLUMES: (),
    HandlerID.STAT_VOLUME: ("vol",),
    HandlerID.DELETE_VOLUME: ("vol", "force"),
    HandlerID.READ_METADATA: ("vol", "key"),
    HandlerID.WRITE_METADATA: ("vol", "key", "meta"),
    HandlerID.DELETE_OBJECT: ("vol", "key"),
    HandlerID.RENAME_DATA: (*_COMMIT, "meta"),
    HandlerID.COMMIT_RENAME: _COMMIT,
    HandlerID.UNDO_RENAME: _COMMIT,
    HandlerID.VERIFY_SHARD: (*_SHARD_AT, "deep"),
    HandlerID.LIST_OBJECTS_PAGE: ("vol", "prefix", "delim", "after", "limit"),
    HandlerID.READ_SHARD: (*_SHARD_AT, "off", "len"),
    HandlerID.CREATE_SHARD: ("upload", "part"),
    HandlerID.WRITE_UPLOAD: ("vol", "record"),
    HandlerID.READ_UPLOAD: ("vol", "mpu"),
    HandlerID.LIST_UPLOADS: ("vol",),
    HandlerID.DELETE_UPLOAD: ("vol", "mpu"),
    HandlerID.COMMIT_PART: ("upload", "vol", "mpu", "pinfo"),
    HandlerID.LIST_PARTS: ("vol", "mpu"),
    HandlerID.ASSEMBLE_PARTS: ("upload", "vol", "mpu", "plist"),
}


def encode_request(handler_id: HandlerID, fields: Mapping[str, Any], endpoint: str) -> bytes:
    """The request payload for ``handler_id``, after the same checks the server makes.

    ``meta`` and ``format`` may be given as the objects themselves.
    """
    check_fields(fields, SCHEMA[handler_id], f"{handler_id.name} {endpoint}")
    wire = {
        name: value.to_dict()
        if isinstance(value, ObjectMeta | FormatInfo | UploadRecord | PartInfo)
        else value
        for name, value in fields.items()
    }
    return pack(wire) if wire else b""


__all__ = [
    "FIELDS",
    "SCHEMA",
    "SHARD_COMMITTED",
    "SHARD_READY",
    "Request",
    "check_fields",
    "check_format",
    "decode_error",
    "encode_error",
    "encode_request",
    "pack",
]
