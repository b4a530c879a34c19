"""Serve this node's drives over the grid, so that other nodes can use them as RemoteDrives.

:func:`serve_drives` registers one grid handler per :class:`~storage.drive.Drive` method for
every local drive, with the grid **subroute = the drive's path on this node** (for example
``/data/d1``), so one handler ID serves every drive and an unknown path is refused by the grid
itself.

Wire format (the client side is :mod:`storage.remote`):

- A single call carries a msgpack map of named arguments (``vol``, ``key``, ``upload``, ...)
  and answers with the result's ``to_msgpack()`` bytes, or ``b""`` for ``None``.
- ``READ_SHARD`` is a stream: the initial payload holds the shard's coordinates and byte range;
  the server sends one verified chunk per bitrot frame, then EOF. A damaged frame ends the
  stream with FileCorrupt at that point.
- ``CREATE_SHARD`` is a stream: the initial payload holds the upload ID. The server creates the
  shard file and sends :data:`SHARD_READY`; the client sends one item per chunk and then
  closes its sending side, which means *commit*; the server commits and sends
  :data:`SHARD_COMMITTED`, then EOF. A client that cancels the stream (or vanishes) aborts
  the upload and the server removes the temporary file.
- A storage error travels as the grid's error text ``[storage:<Code>] <message>``
  (:func:`encode_error`). The client rebuilds the same StorageError subclass with
  :func:`decode_error`; an error text without the tag comes from the grid itself (unknown
  drive path, handler deadline) and becomes DriveNotFound.

**Nothing a peer sends is trusted.** :data:`DRIVE_HANDLERS` lists, for every handler, the
fields its request holds; :data:`FIELDS` says how each field is checked (volume → bucket name,
key → object key, upload ID and data dir → UUID hex, listing strings → bounded and NUL-free,
sizes and offsets → ranges, metadata and format → decoded and checked field by field). A
request with a missing, unknown or invalid field is refused with InvalidName or
InvalidArgument naming the field, before the drive is called. The LocalDrive checks every
name again where it builds a path. :class:`~storage.remote.RemoteDrive` runs the same checks
before sending, so a bad name fails without a round trip.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import msgpack

from minigrid.handlers import HandlerID
from minigrid.manager import Manager
from minigrid.protocol import MAX_SUBROUTE
from minigrid.streams import ServerStream
from storage.drive import Drive, ShardWriter
from storage.errors import (
    DriveNotFound,
    InvalidArgument,
    StorageError,
    error_from_code,
)
from storage.format import FORMAT_VERSION, FormatInfo
from storage.meta import MAX_BLOCK_SIZE, ObjectMeta
from storage.names import (
    shown,
    validate_bucket,
    validate_data_dir,
    validate_list_text,
    validate_object,
    validate_upload_id,
)
from storage.placement import MAX_SET_DRIVES, MIN_SET_DRIVES

log = logging.getLogger("storage.drive_service")

T = TypeVar("T")

#: Items the server may queue ahead of a READ_SHARD reader (a few chunks of read-ahead).
READ_SHARD_OUT_CAPACITY: Final = 4
#: Chunks a CREATE_SHARD writer may have in flight before the server takes one.
CREATE_SHARD_IN_CAPACITY: Final = 4
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


class _WireError(Exception):
    """Raised from a handler so that the grid sends the encoded storage error as its text."""

    def __init__(self, error: StorageError) -> None:
        super().__init__(encode_error(error))


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


# --- single calls ---------------------------------------------------------------------------

_Op = Callable[[Drive, Request], Awaitable[bytes]]


async def _disk_info(drive: Drive, _req: Request) -> bytes:
    return (await drive.disk_info()).to_msgpack()


async def _read_format(drive: Drive, _req: Request) -> bytes:
    return (await drive.read_format()).to_msgpack()


async def _write_format(drive: Drive, req: Request) -> bytes:
    await drive.write_format(req["format"])
    return b""


async def _make_volume(drive: Drive, req: Request) -> bytes:
    await drive.make_volume(req["vol"])
    return b""


async def _list_volumes(drive: Drive, _req: Request) -> bytes:
    return pack([volume.to_dict() for volume in await drive.list_volumes()])


async def _stat_volume(drive: Drive, req: Request) -> bytes:
    return (await drive.stat_volume(req["vol"])).to_msgpack()


async def _delete_volume(drive: Drive, req: Request) -> bytes:
    await drive.delete_volume(req["vol"], req["force"])
    return b""


async def _read_metadata(drive: Drive, req: Request) -> bytes:
    return (await drive.read_metadata(req["vol"], req["key"])).to_msgpack()


async def _write_metadata(drive: Drive, req: Request) -> bytes:
    await drive.write_metadata(req["vol"], req["key"], req["meta"])
    return b""


async def _delete_object(drive: Drive, req: Request) -> bytes:
    await drive.delete_object(req["vol"], req["key"])
    return b""


async def _rename_data(drive: Drive, req: Request) -> bytes:
    await drive.rename_data(req["upload"], req["vol"], req["key"], req["meta"])
    return b""


async def _commit_rename(drive: Drive, req: Request) -> bytes:
    await drive.commit_rename(req["upload"], req["vol"], req["key"])
    return b""


async def _undo_rename(drive: Drive, req: Request) -> bytes:
    await drive.undo_rename(req["upload"], req["vol"], req["key"])
    return b""


async def _verify_shard(drive: Drive, req: Request) -> bytes:
    await drive.verify_shard(
        req["vol"],
        req["key"],
        req["ddir"],
        chunk_size=req["chunk"],
        shard_size=req["size"],
        deep=req["deep"],
    )
    return b""


async def _list_objects_page(drive: Drive, req: Request) -> bytes:
    page = await drive.list_objects_page(
        req["vol"], req["prefix"], req["delim"], req["after"], req["limit"]
    )
    return page.to_msgpack()


def _unexpected(what: str, exc: Exception) -> StorageError:
    """A non-storage exception inside a drive is a bug: log it here, send a plain error."""
    log.error("%s failed unexpectedly", what, exc_info=exc)
    return StorageError(f"{what}: unexpected {exc.__class__.__name__}: {exc}")


def _single_handler(
    drive: Drive, path: str, handler_id: HandlerID, spec: DriveHandler
) -> Callable[[bytes], Awaitable[bytes]]:
    what = f"{handler_id.name} {path}"
    op = spec.call
    assert op is not None

    async def handle(payload: bytes) -> bytes:
        try:
            return await op(drive, Request(payload, what, spec.fields))
        except StorageError as exc:
            raise _WireError(exc) from exc
        except Exception as exc:
            raise _WireError(_unexpected(what, exc)) from exc

    return handle


# --- streams --------------------------------------------------------------------------------


async def _read_shard(drive: Drive, req: Request, stream: ServerStream) -> None:
    chunks = drive.read_shard(
        req["vol"],
        req["key"],
        req["ddir"],
        chunk_size=req["chunk"],
        shard_size=req["size"],
        offset=req["off"],
        length=req["len"],
    )
    try:
        async for chunk in chunks:
            await stream.send(chunk)
    finally:
        closer = getattr(chunks, "aclose", None)
        if closer is not None:
            await closer()


# Cleanup tasks that must outlive a cancelled handler; held here so they are not collected.
_cleanups: set[asyncio.Task[None]] = set()


async def _to_completion(work: Coroutine[Any, Any, T]) -> T:
    """Await ``work``; if cancelled meanwhile, let it finish before the cancellation goes on.

    A shard write runs in a thread: removing the file under it would race with the write.
    """
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait({task})
        if not task.cancelled():
            task.exception()  # retrieved: the caller is leaving and no longer cares
        raise


async def _abort_quietly(writer: ShardWriter, where: str) -> None:
    try:
        await writer.abort()
    except Exception:
        log.warning("%s: aborting the upload failed", where, exc_info=True)


async def _abort_shielded(writer: ShardWriter, where: str) -> None:
    """Abort the upload in a task of its own, so a second cancellation cannot stop it."""
    task = asyncio.create_task(_abort_quietly(writer, where))
    _cleanups.add(task)
    task.add_done_callback(_cleanups.discard)
    await asyncio.shield(task)


async def _create_shard(drive: Drive, req: Request, stream: ServerStream) -> None:
    where = req.what
    writer = await drive.create_shard(req["upload"])
    acknowledged = False
    try:
        await stream.send(SHARD_READY)
        async for chunk in stream:  # ends normally when the client closes its side: commit
            await _to_completion(writer.write(chunk))
        await _to_completion(writer.commit())
        await stream.send(SHARD_COMMITTED)
        acknowledged = True
    finally:
        if not acknowledged:  # cancelled, failed, or the client left: drop the temporary file
            await _abort_shielded(writer, where)


_StreamOp = Callable[[Drive, Request, ServerStream], Awaitable[None]]


def _stream_handler(
    drive: Drive, path: str, handler_id: HandlerID, spec: DriveHandler
) -> Callable[[ServerStream], Awaitable[None]]:
    what = f"{handler_id.name} {path}"
    body = spec.stream
    assert body is not None

    async def handle(stream: ServerStream) -> None:
        try:
            await body(drive, Request(stream.payload, what, spec.fields), stream)
        except StorageError as exc:
            raise _WireError(exc) from exc
        except Exception as exc:
            raise _WireError(_unexpected(what, exc)) from exc

    return handle


@dataclass(frozen=True)
class DriveHandler:
    """One drive handler: the request fields it takes, and its body (a call or a stream)."""

    fields: tuple[str, ...]
    call: _Op | None = None
    stream: _StreamOp | None = None
    in_capacity: int = 1
    out_capacity: int = 1


_SHARD_AT: Final = ("vol", "key", "ddir", "chunk", "size")
_COMMIT: Final = ("upload", "vol", "key")

#: Every handler the drive service registers, with the fields of its request. A field name
#: means the same thing in every handler, and :data:`FIELDS` checks it.
DRIVE_HANDLERS: Final[dict[HandlerID, DriveHandler]] = {
    HandlerID.DISK_INFO: DriveHandler((), call=_disk_info),
    HandlerID.READ_FORMAT: DriveHandler((), call=_read_format),
    HandlerID.WRITE_FORMAT: DriveHandler(("format",), call=_write_format),
    HandlerID.MAKE_VOLUME: DriveHandler(("vol",), call=_make_volume),
    HandlerID.LIST_VOLUMES: DriveHandler((), call=_list_volumes),
    HandlerID.STAT_VOLUME: DriveHandler(("vol",), call=_stat_volume),
    HandlerID.DELETE_VOLUME: DriveHandler(("vol", "force"), call=_delete_volume),
    HandlerID.READ_METADATA: DriveHandler(("vol", "key"), call=_read_metadata),
    HandlerID.WRITE_METADATA: DriveHandler(("vol", "key", "meta"), call=_write_metadata),
    HandlerID.DELETE_OBJECT: DriveHandler(("vol", "key"), call=_delete_object),
    HandlerID.RENAME_DATA: DriveHandler((*_COMMIT, "meta"), call=_rename_data),
    HandlerID.COMMIT_RENAME: DriveHandler(_COMMIT, call=_commit_rename),
    HandlerID.UNDO_RENAME: DriveHandler(_COMMIT, call=_undo_rename),
    HandlerID.VERIFY_SHARD: DriveHandler((*_SHARD_AT, "deep"), call=_verify_shard),
    HandlerID.LIST_OBJECTS_PAGE: DriveHandler(
        ("vol", "prefix", "delim", "after", "limit"), call=_list_objects_page
    ),
    HandlerID.READ_SHARD: DriveHandler(
        (*_SHARD_AT, "off", "len"), stream=_read_shard, out_capacity=READ_SHARD_OUT_CAPACITY
    ),
    HandlerID.CREATE_SHARD: DriveHandler(
        ("upload",), stream=_create_shard, in_capacity=CREATE_SHARD_IN_CAPACITY, out_capacity=2
    ),
}


def encode_request(handler_id: HandlerID, fields: Mapping[str, Any], endpoint: str) -> bytes:
    """The request payload for ``handler_id``, after the same checks the server makes.

    ``meta`` and ``format`` may be given as the objects themselves.
    """
    spec = DRIVE_HANDLERS[handler_id]
    check_fields(fields, spec.fields, f"{handler_id.name} {endpoint}")
    wire = {
        name: value.to_dict() if isinstance(value, ObjectMeta | FormatInfo) else value
        for name, value in fields.items()
    }
    return pack(wire) if wire else b""


def serve_drives(manager: Manager, drives: Mapping[str, Drive]) -> None:
    """Serve every drive in ``drives`` (drive path on this node → drive) over the grid.

    Call it before ``manager.start()``. The path is the grid subroute that a
    :class:`~storage.remote.RemoteDrive` on another node names, e.g. ``/data/d1``.
    """
    for path, drive in drives.items():
        if not path or len(path.encode()) > MAX_SUBROUTE:
            raise ValueError(f"drive path {path!r} must be 1-{MAX_SUBROUTE} bytes")
        for handler_id, spec in DRIVE_HANDLERS.items():
            if spec.call is not None:
                manager.register_single(
                    handler_id, _single_handler(drive, path, handler_id, spec), subroute=path
                )
            else:
                manager.register_stream(
                    handler_id,
                    _stream_handler(drive, path, handler_id, spec),
                    subroute=path,
                    in_capacity=spec.in_capacity,
                    out_capacity=spec.out_capacity,
                )


__all__ = [
    "CREATE_SHARD_IN_CAPACITY",
    "DRIVE_HANDLERS",
    "FIELDS",
    "READ_SHARD_OUT_CAPACITY",
    "SHARD_COMMITTED",
    "SHARD_READY",
    "DriveHandler",
    "check_fields",
    "check_format",
    "decode_error",
    "encode_error",
    "encode_request",
    "pack",
    "serve_drives",
]
