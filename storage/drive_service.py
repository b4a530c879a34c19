"""Serve this node's drives over the grid, so that other nodes can use them as RemoteDrives.

:func:`serve_drives` registers one grid handler per :class:`~storage.drive.Drive` method for
every local drive, with the grid **subroute = the drive's path on this node** (for example
``/data/d1``), so one handler ID serves every drive and an unknown path is refused by the grid
itself. The requests, their checks and the error codec are the wire schema in
:mod:`storage.drive_wire`, shared with the client (:mod:`storage.remote`).

- ``READ_SHARD`` is a stream: the initial payload holds the shard's coordinates and byte range;
  the server sends one verified chunk per bitrot frame, then EOF. A damaged frame ends the
  stream with FileCorrupt at that point.
- ``CREATE_SHARD`` is a stream: the initial payload holds the upload ID. The server creates the
  shard file and sends :data:`~storage.drive_wire.SHARD_READY`; the client sends one item per
  chunk and then closes its sending side, which means *commit*; the server commits and sends
  :data:`~storage.drive_wire.SHARD_COMMITTED`, then EOF. A client that cancels the stream (or
  vanishes) aborts the upload and the server removes the temporary file.
- **Nothing a peer sends is trusted**: every request is checked against the schema before the
  drive is called, and the LocalDrive checks every name again where it builds a path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from minigrid.handlers import HandlerID
from minigrid.manager import Manager
from minigrid.protocol import MAX_SUBROUTE
from minigrid.streams import ServerStream
from storage.drive import Drive, ShardWriter
from storage.drive_wire import (
    SCHEMA,
    SHARD_COMMITTED,
    SHARD_READY,
    Request,
    encode_error,
    pack,
)
from storage.errors import StorageError

log = logging.getLogger("storage.drive_service")

T = TypeVar("T")

#: Items the server may queue ahead of a READ_SHARD reader (a few chunks of read-ahead).
READ_SHARD_OUT_CAPACITY: Final = 4
#: Chunks a CREATE_SHARD writer may have in flight before the server takes one.
CREATE_SHARD_IN_CAPACITY: Final = 4


class _WireError(Exception):
    """Raised from a handler so that the grid sends the encoded storage error as its text."""

    def __init__(self, error: StorageError) -> None:
        super().__init__(encode_error(error))


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
        part=req["part"],
    )
    return b""


async def _list_objects_page(drive: Drive, req: Request) -> bytes:
    page = await drive.list_objects_page(
        req["vol"], req["prefix"], req["delim"], req["after"], req["limit"]
    )
    return page.to_msgpack()


async def _write_upload(drive: Drive, req: Request) -> bytes:
    await drive.write_upload(req["vol"], req["record"])
    return b""


async def _read_upload(drive: Drive, req: Request) -> bytes:
    return (await drive.read_upload(req["vol"], req["mpu"])).to_msgpack()


async def _list_uploads(drive: Drive, req: Request) -> bytes:
    return pack([record.to_dict() for record in await drive.list_uploads(req["vol"])])


async def _delete_upload(drive: Drive, req: Request) -> bytes:
    await drive.delete_upload(req["vol"], req["mpu"])
    return b""


async def _commit_part(drive: Drive, req: Request) -> bytes:
    await drive.commit_part(req["upload"], req["vol"], req["mpu"], req["pinfo"])
    return b""


async def _list_parts(drive: Drive, req: Request) -> bytes:
    return pack([part.to_dict() for part in await drive.list_parts(req["vol"], req["mpu"])])


async def _assemble_parts(drive: Drive, req: Request) -> bytes:
    await drive.assemble_parts(req["upload"], req["vol"], req["mpu"], req["plist"])
    return b""


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
            return await op(drive, Request(payload, what, SCHEMA[handler_id]))
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
        part=req["part"],
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
    writer = await drive.create_shard(req["upload"], req["part"])
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
            await body(drive, Request(stream.payload, what, SCHEMA[handler_id]), stream)
        except StorageError as exc:
            raise _WireError(exc) from exc
        except Exception as exc:
            raise _WireError(_unexpected(what, exc)) from exc

    return handle


@dataclass(frozen=True)
class DriveHandler:
    """One drive handler's body: a single call or a stream, and a stream's capacities."""

    call: _Op | None = None
    stream: _StreamOp | None = None
    in_capacity: int = 1
    out_capacity: int = 1


#: Every handler the drive service registers, with its body; the fields of each request are
#: declared once, in :data:`storage.drive_wire.SCHEMA`, for both ends.
DRIVE_HANDLERS: Final[dict[HandlerID, DriveHandler]] = {
    HandlerID.DISK_INFO: DriveHandler(call=_disk_info),
    HandlerID.READ_FORMAT: DriveHandler(call=_read_format),
    HandlerID.WRITE_FORMAT: DriveHandler(call=_write_format),
    HandlerID.MAKE_VOLUME: DriveHandler(call=_make_volume),
    HandlerID.LIST_VOLUMES: DriveHandler(call=_list_volumes),
    HandlerID.STAT_VOLUME: DriveHandler(call=_stat_volume),
    HandlerID.DELETE_VOLUME: DriveHandler(call=_delete_volume),
    HandlerID.READ_METADATA: DriveHandler(call=_read_metadata),
    HandlerID.WRITE_METADATA: DriveHandler(call=_write_metadata),
    HandlerID.DELETE_OBJECT: DriveHandler(call=_delete_object),
    HandlerID.RENAME_DATA: DriveHandler(call=_rename_data),
    HandlerID.COMMIT_RENAME: DriveHandler(call=_commit_rename),
    HandlerID.UNDO_RENAME: DriveHandler(call=_undo_rename),
    HandlerID.VERIFY_SHARD: DriveHandler(call=_verify_shard),
    HandlerID.LIST_OBJECTS_PAGE: DriveHandler(call=_list_objects_page),
    HandlerID.WRITE_UPLOAD: DriveHandler(call=_write_upload),
    HandlerID.READ_UPLOAD: DriveHandler(call=_read_upload),
    HandlerID.LIST_UPLOADS: DriveHandler(call=_list_uploads),
    HandlerID.DELETE_UPLOAD: DriveHandler(call=_delete_upload),
    HandlerID.COMMIT_PART: DriveHandler(call=_commit_part),
    HandlerID.LIST_PARTS: DriveHandler(call=_list_parts),
    HandlerID.ASSEMBLE_PARTS: DriveHandler(call=_assemble_parts),
    HandlerID.READ_SHARD: DriveHandler(stream=_read_shard, out_capacity=READ_SHARD_OUT_CAPACITY),
    HandlerID.CREATE_SHARD: DriveHandler(
        stream=_create_shard, in_capacity=CREATE_SHARD_IN_CAPACITY, out_capacity=2
    ),
}
assert set(DRIVE_HANDLERS) == set(SCHEMA), "every operation in the schema has a body, and back"


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
    "READ_SHARD_OUT_CAPACITY",
    "DriveHandler",
    "serve_drives",
]
