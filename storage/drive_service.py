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
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Coroutine, Mapping
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
from storage.format import FormatInfo
from storage.meta import ObjectMeta

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


class Request:
    """A request map read from the wire; a missing or mistyped field is InvalidArgument."""

    def __init__(self, payload: bytes, what: str) -> None:
        self.what = what
        try:
            value = msgpack.unpackb(payload, raw=False) if payload else {}
        except Exception as exc:  # msgpack raises several unrelated types on bad input
            raise InvalidArgument(f"{what}: malformed request: {exc}") from exc
        if not isinstance(value, dict):
            raise InvalidArgument(f"{what}: the request is not a map")
        self._fields: dict[Any, Any] = value

    def _get(self, name: str, kind: type[T]) -> T:
        value = self._fields.get(name)
        # bool is an int subclass; never let True pass as an offset or a size.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise InvalidArgument(f"{self.what}: field {name!r} must be {kind.__name__}")
        return value

    def text(self, name: str) -> str:
        return self._get(name, str)

    def integer(self, name: str) -> int:
        return self._get(name, int)

    def flag(self, name: str) -> bool:
        return self._get(name, bool)

    def mapping(self, name: str) -> dict[str, Any]:
        return self._get(name, dict)

    def meta(self) -> ObjectMeta:
        try:
            return ObjectMeta.from_dict(self.mapping("meta"))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidArgument(f"{self.what}: malformed object metadata: {exc}") from exc


# --- single calls ---------------------------------------------------------------------------

_Op = Callable[[Drive, Request], Awaitable[bytes]]


async def _disk_info(drive: Drive, _req: Request) -> bytes:
    return (await drive.disk_info()).to_msgpack()


async def _read_format(drive: Drive, _req: Request) -> bytes:
    return (await drive.read_format()).to_msgpack()


async def _write_format(drive: Drive, req: Request) -> bytes:
    try:
        fmt = FormatInfo.from_dict(req.mapping("format"))
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidArgument(f"{req.what}: malformed format: {exc}") from exc
    await drive.write_format(fmt)
    return b""


async def _make_volume(drive: Drive, req: Request) -> bytes:
    await drive.make_volume(req.text("vol"))
    return b""


async def _list_volumes(drive: Drive, _req: Request) -> bytes:
    return pack([volume.to_dict() for volume in await drive.list_volumes()])


async def _stat_volume(drive: Drive, req: Request) -> bytes:
    return (await drive.stat_volume(req.text("vol"))).to_msgpack()


async def _delete_volume(drive: Drive, req: Request) -> bytes:
    await drive.delete_volume(req.text("vol"), req.flag("force"))
    return b""


async def _read_metadata(drive: Drive, req: Request) -> bytes:
    return (await drive.read_metadata(req.text("vol"), req.text("key"))).to_msgpack()


async def _write_metadata(drive: Drive, req: Request) -> bytes:
    await drive.write_metadata(req.text("vol"), req.text("key"), req.meta())
    return b""


async def _delete_object(drive: Drive, req: Request) -> bytes:
    await drive.delete_object(req.text("vol"), req.text("key"))
    return b""


async def _rename_data(drive: Drive, req: Request) -> bytes:
    await drive.rename_data(req.text("upload"), req.text("vol"), req.text("key"), req.meta())
    return b""


async def _commit_rename(drive: Drive, req: Request) -> bytes:
    await drive.commit_rename(req.text("upload"), req.text("vol"), req.text("key"))
    return b""


async def _undo_rename(drive: Drive, req: Request) -> bytes:
    await drive.undo_rename(req.text("upload"), req.text("vol"), req.text("key"))
    return b""


async def _verify_shard(drive: Drive, req: Request) -> bytes:
    await drive.verify_shard(
        req.text("vol"),
        req.text("key"),
        req.text("ddir"),
        chunk_size=req.integer("chunk"),
        shard_size=req.integer("size"),
        deep=req.flag("deep"),
    )
    return b""


async def _list_objects_page(drive: Drive, req: Request) -> bytes:
    page = await drive.list_objects_page(
        req.text("vol"),
        req.text("prefix"),
        req.text("delim"),
        req.text("after"),
        req.integer("limit"),
    )
    return page.to_msgpack()


SINGLE_OPS: Final[dict[HandlerID, _Op]] = {
    HandlerID.DISK_INFO: _disk_info,
    HandlerID.READ_FORMAT: _read_format,
    HandlerID.WRITE_FORMAT: _write_format,
    HandlerID.MAKE_VOLUME: _make_volume,
    HandlerID.LIST_VOLUMES: _list_volumes,
    HandlerID.STAT_VOLUME: _stat_volume,
    HandlerID.DELETE_VOLUME: _delete_volume,
    HandlerID.READ_METADATA: _read_metadata,
    HandlerID.WRITE_METADATA: _write_metadata,
    HandlerID.DELETE_OBJECT: _delete_object,
    HandlerID.RENAME_DATA: _rename_data,
    HandlerID.COMMIT_RENAME: _commit_rename,
    HandlerID.UNDO_RENAME: _undo_rename,
    HandlerID.VERIFY_SHARD: _verify_shard,
    HandlerID.LIST_OBJECTS_PAGE: _list_objects_page,
}


def _unexpected(what: str, exc: Exception) -> StorageError:
    """A non-storage exception inside a drive is a bug: log it here, send a plain error."""
    log.error("%s failed unexpectedly", what, exc_info=exc)
    return StorageError(f"{what}: unexpected {exc.__class__.__name__}: {exc}")


def _single_handler(
    drive: Drive, path: str, handler_id: HandlerID, op: _Op
) -> Callable[[bytes], Awaitable[bytes]]:
    what = f"{handler_id.name} {path}"

    async def handle(payload: bytes) -> bytes:
        try:
            return await op(drive, Request(payload, what))
        except StorageError as exc:
            raise _WireError(exc) from exc
        except Exception as exc:
            raise _WireError(_unexpected(what, exc)) from exc

    return handle


# --- streams --------------------------------------------------------------------------------


async def _read_shard(drive: Drive, stream: ServerStream) -> None:
    req = Request(stream.payload, f"READ_SHARD {stream.subroute}")
    chunks = drive.read_shard(
        req.text("vol"),
        req.text("key"),
        req.text("ddir"),
        chunk_size=req.integer("chunk"),
        shard_size=req.integer("size"),
        offset=req.integer("off"),
        length=req.integer("len"),
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


async def _create_shard(drive: Drive, stream: ServerStream) -> None:
    where = f"CREATE_SHARD {stream.subroute}"
    req = Request(stream.payload, where)
    writer = await drive.create_shard(req.text("upload"))
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


def _stream_handler(
    drive: Drive, path: str, handler_id: HandlerID, body: Callable[[Drive, ServerStream], Any]
) -> Callable[[ServerStream], Awaitable[None]]:
    what = f"{handler_id.name} {path}"

    async def handle(stream: ServerStream) -> None:
        try:
            await body(drive, stream)
        except StorageError as exc:
            raise _WireError(exc) from exc
        except Exception as exc:
            raise _WireError(_unexpected(what, exc)) from exc

    return handle


def serve_drives(manager: Manager, drives: Mapping[str, Drive]) -> None:
    """Serve every drive in ``drives`` (drive path on this node → drive) over the grid.

    Call it before ``manager.start()``. The path is the grid subroute that a
    :class:`~storage.remote.RemoteDrive` on another node names, e.g. ``/data/d1``.
    """
    for path, drive in drives.items():
        if not path or len(path.encode()) > MAX_SUBROUTE:
            raise ValueError(f"drive path {path!r} must be 1-{MAX_SUBROUTE} bytes")
        for handler_id, op in SINGLE_OPS.items():
            manager.register_single(
                handler_id, _single_handler(drive, path, handler_id, op), subroute=path
            )
        manager.register_stream(
            HandlerID.READ_SHARD,
            _stream_handler(drive, path, HandlerID.READ_SHARD, _read_shard),
            subroute=path,
            out_capacity=READ_SHARD_OUT_CAPACITY,
        )
        manager.register_stream(
            HandlerID.CREATE_SHARD,
            _stream_handler(drive, path, HandlerID.CREATE_SHARD, _create_shard),
            subroute=path,
            in_capacity=CREATE_SHARD_IN_CAPACITY,
            out_capacity=2,
        )


__all__ = [
    "CREATE_SHARD_IN_CAPACITY",
    "READ_SHARD_OUT_CAPACITY",
    "SHARD_COMMITTED",
    "SHARD_READY",
    "decode_error",
    "encode_error",
    "pack",
    "serve_drives",
]
