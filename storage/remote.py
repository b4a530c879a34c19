"""RemoteDrive: a drive on another node, used through the grid.

Every :class:`~storage.drive.Drive` method is one grid call to the handlers that
:func:`storage.drive_service.serve_drives` registers on the node holding the drive, with the
drive's path on that node as the subroute. Shard reads and writes are grid streams.

Failures always come back as StorageError subclasses, never as grid errors:

- the handler's storage error (``[storage:Code] message``) → the same subclass, rebuilt;
- the connection is down or drops mid-call (``Disconnected``) → :class:`DriveOffline`, at once;
- the deadline passes (``DeadlineExceeded``) → :class:`DriveNotFound` saying so (the storage
  hierarchy has no timeout class);
- the grid refused the call (no such drive path on that node), the far side cancelled a
  stream, or broke the protocol → :class:`DriveNotFound`.

Every request is checked before it is sent, with the same rules the serving node applies
(:func:`storage.drive_wire.encode_request`): a bad name fails here with InvalidName or
InvalidArgument, without a round trip. The serving node checks again; it trusts no peer.

A drive that is offline (its grid connection is down, or the peer table marked it) fails every
call with DriveOffline before touching the grid, and answers ``is_online() is False`` so the
object layer skips it. RemoteDrive never logs a failed request: the peer table logs one line
per change of the peer's state instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any, Final, TypeVar, cast

import msgpack

from minigrid.connection import Connection
from minigrid.errors import (
    Cancelled,
    DeadlineExceeded,
    Disconnected,
    GridError,
    LocalProtocolError,
    RemoteError,
)
from minigrid.handlers import HandlerID
from minigrid.streams import ClientStream
from storage.drive import Buffer, DiskInfo, ListPage, ShardWriter, VolumeInfo
from storage.drive_wire import SHARD_COMMITTED, SHARD_READY, decode_error, encode_request
from storage.errors import (
    DriveNotFound,
    DriveOffline,
    InvalidArgument,
    StorageError,
)
from storage.format import FormatInfo
from storage.meta import ObjectMeta, PartInfo, UploadRecord

T = TypeVar("T")

DEFAULT_CALL_TIMEOUT: Final = 30.0
DEFAULT_DISK_INFO_TIMEOUT: Final = 2.0


def grid_error_to_storage(exc: GridError, endpoint: str) -> StorageError:
    """Translate a grid failure of a call to ``endpoint`` into the storage hierarchy."""
    if isinstance(exc, RemoteError):
        return decode_error(exc.message, endpoint)
    if isinstance(exc, Disconnected):
        return DriveOffline(f"drive {endpoint} is offline: {exc}")
    if isinstance(exc, DeadlineExceeded):
        return DriveNotFound(f"drive {endpoint} timed out: {exc}")
    if isinstance(exc, Cancelled):
        return DriveNotFound(f"drive {endpoint}: the stream was cancelled: {exc}")
    if isinstance(exc, LocalProtocolError):
        return InvalidArgument(f"drive {endpoint}: {exc}")
    return DriveNotFound(f"drive {endpoint}: grid error: {exc}")


def qualified_endpoint(host: str, path: str) -> str:
    """``http://host:port/path``: the drive's name across the cluster."""
    base = host if host.startswith(("http://", "https://")) else f"http://{host}"
    return f"{base.rstrip('/')}/{path.lstrip('/')}"


def _unpack_volumes(payload: bytes) -> list[VolumeInfo]:
    value = msgpack.unpackb(payload, raw=False)
    if not isinstance(value, list):
        raise ValueError("expected a list of volumes")
    return [VolumeInfo.from_dict(item) for item in value]


def _unpack_uploads(payload: bytes) -> list[UploadRecord]:
    value = msgpack.unpackb(payload, raw=False)
    if not isinstance(value, list):
        raise ValueError("expected a list of uploads")
    return [UploadRecord.from_dict(item) for item in value]


def _unpack_parts(payload: bytes) -> list[PartInfo]:
    value = msgpack.unpackb(payload, raw=False)
    if not isinstance(value, list):
        raise ValueError("expected a list of parts")
    return [PartInfo.from_dict(item) for item in value]


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a shared task's failure as seen: its waiters may all have left."""
    if not task.cancelled():
        task.exception()


class RemoteDrive:
    """A :class:`~storage.drive.Drive` served by another node, reached over ``conn``.

    ``endpoint`` is the drive's path on that node (the grid subroute it is served on, e.g.
    ``/data/d1``); it is kept as :attr:`path`, and :attr:`endpoint` is the cluster-wide name
    ``http://<host>/data/d1``.
    """

    def __init__(
        self,
        conn: Connection,
        endpoint: str,
        *,
        disk_info_ttl: float = 1.0,
        call_timeout: float = DEFAULT_CALL_TIMEOUT,
        disk_info_timeout: float = DEFAULT_DISK_INFO_TIMEOUT,
    ) -> None:
        self.conn = conn
        #: The drive's path on its node: the grid subroute.
        self.path = endpoint
        self._endpoint = qualified_endpoint(conn.remote, endpoint)
        self.disk_info_ttl = disk_info_ttl
        self.call_timeout = call_timeout
        self.disk_info_timeout = disk_info_timeout
        self._marked_online = True
        self._disk_info: DiskInfo | None = None
        self._disk_info_at = 0.0
        self._disk_info_task: asyncio.Task[DiskInfo] | None = None

    def __repr__(self) -> str:
        return f"RemoteDrive({self._endpoint!r})"

    # --- availability -------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return self._endpoint

    @property
    def host(self) -> str:
        """The host string of the node serving this drive."""
        return self.conn.remote

    def is_online(self) -> bool:
        """True while the grid connection is up and the peer table has not marked it offline."""
        return self._marked_online and self.conn.is_connected

    def set_online(self, online: bool) -> None:
        """Mark the drive offline or back online (the peer table calls this)."""
        self._marked_online = online
        if not online:
            self._disk_info = None

    def _check_online(self) -> None:
        if not self.is_online():
            cause = self.conn.last_cause or self.conn.state.value
            raise DriveOffline(f"drive {self._endpoint} is offline ({cause})")

    async def _call(
        self, handler_id: HandlerID, request: dict[str, Any] | None = None, timeout: float = 0.0
    ) -> bytes:
        self._check_online()
        payload = encode_request(handler_id, request or {}, self._endpoint)
        try:
            return await self.conn.call(
                handler_id,
                payload,
                subroute=self.path,
                timeout=timeout or self.call_timeout,
            )
        except GridError as exc:
            raise grid_error_to_storage(exc, self._endpoint) from exc

    def _decode(self, what: str, decode: Callable[[bytes], T], payload: bytes) -> T:
        try:
            return decode(payload)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # msgpack's errors are ValueError subclasses.
            raise DriveNotFound(f"drive {self._endpoint}: malformed {what} reply: {exc}") from exc

    # --- identity and format ------------------------------------------------------------------

    async def disk_info(self) -> DiskInfo:
        """DiskInfo, cached for ``disk_info_ttl``; concurrent callers share one grid call."""
        self._check_online()
        now = asyncio.get_running_loop().time()
        if self._disk_info is not None and now - self._disk_info_at < self.disk_info_ttl:
            return self._disk_info
        task = self._disk_info_task
        if task is None or task.done():
            task = self._disk_info_task = asyncio.create_task(self._fetch_disk_info())
            task.add_done_callback(_retrieve)
        # One caller giving up must not cancel the call the others are waiting for.
        return await asyncio.shield(task)

    async def _fetch_disk_info(self) -> DiskInfo:
        payload = await self._call(HandlerID.DISK_INFO, timeout=self.disk_info_timeout)
        info = self._decode("DiskInfo", DiskInfo.from_msgpack, payload)
        # The serving node names the drive by its local path; callers know it by this name.
        info = dataclasses.replace(info, endpoint=self._endpoint)
        self._disk_info = info
        self._disk_info_at = asyncio.get_running_loop().time()
        return info

    async def read_format(self) -> FormatInfo:
        payload = await self._call(HandlerID.READ_FORMAT)
        fmt = self._decode("format", FormatInfo.from_msgpack, payload)
        return fmt

    async def write_format(self, fmt: FormatInfo) -> None:
        await self._call(HandlerID.WRITE_FORMAT, {"format": fmt})
        self._disk_info = None  # the drive ID changed

    # --- volumes ------------------------------------------------------------------------------

    async def make_volume(self, volume: str) -> None:
        await self._call(HandlerID.MAKE_VOLUME, {"vol": volume})

    async def list_volumes(self) -> list[VolumeInfo]:
        payload = await self._call(HandlerID.LIST_VOLUMES)
        return self._decode("volume list", _unpack_volumes, payload)

    async def stat_volume(self, volume: str) -> VolumeInfo:
        payload = await self._call(HandlerID.STAT_VOLUME, {"vol": volume})
        info = self._decode("volume", VolumeInfo.from_msgpack, payload)
        return info

    async def delete_volume(self, volume: str, force: bool = False) -> None:
        await self._call(HandlerID.DELETE_VOLUME, {"vol": volume, "force": force})

    # --- metadata -----------------------------------------------------------------------------

    async def read_metadata(self, volume: str, key: str) -> ObjectMeta:
        payload = await self._call(HandlerID.READ_METADATA, {"vol": volume, "key": key})
        meta = self._decode("metadata", ObjectMeta.from_msgpack, payload)
        return meta

    async def write_metadata(self, volume: str, key: str, meta: ObjectMeta) -> None:
        await self._call(HandlerID.WRITE_METADATA, {"vol": volume, "key": key, "meta": meta})

    async def delete_object(self, volume: str, key: str) -> None:
        await self._call(HandlerID.DELETE_OBJECT, {"vol": volume, "key": key})

    # --- writing shards and committing --------------------------------------------------------

    async def create_shard(self, upload_id: str, part: int = 0) -> ShardWriter:
        """Open a CREATE_SHARD stream; returns once the remote shard file exists."""
        stream = await self.open_stream(
            HandlerID.CREATE_SHARD, {"upload": upload_id, "part": part}
        )
        writer = RemoteShardWriter(self, stream)
        try:
            await writer.wait_ready()
        except BaseException:
            stream.cancel()
            raise
        return writer

    async def rename_data(self, upload_id: str, volume: str, key: str, meta: ObjectMeta) -> None:
        await self._call(
            HandlerID.RENAME_DATA,
            {"upload": upload_id, "vol": volume, "key": key, "meta": meta},
        )

    async def commit_rename(self, upload_id: str, volume: str, key: str) -> None:
        await self._call(HandlerID.COMMIT_RENAME, {"upload": upload_id, "vol": volume, "key": key})

    async def undo_rename(self, upload_id: str, volume: str, key: str) -> None:
        await self._call(HandlerID.UNDO_RENAME, {"upload": upload_id, "vol": volume, "key": key})

    # --- reading shards -----------------------------------------------------------------------

    async def open_stream(self, handler_id: HandlerID, request: dict[str, Any]) -> ClientStream:
        self._check_online()
        payload = encode_request(handler_id, request, self._endpoint)
        try:
            return await self.conn.stream(handler_id, payload, subroute=self.path).open()
        except GridError as exc:
            raise grid_error_to_storage(exc, self._endpoint) from exc

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
        """Stream verified shard bytes over a READ_SHARD stream (see :class:`RemoteShardReader`)."""
        request = {
            "vol": volume,
            "key": key,
            "ddir": data_dir,
            "chunk": chunk_size,
            "size": shard_size,
            "part": part,
            "off": offset,
            "len": length,
        }
        return RemoteShardReader(self, request)

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
        await self._call(
            HandlerID.VERIFY_SHARD,
            {
                "vol": volume,
                "key": key,
                "ddir": data_dir,
                "chunk": chunk_size,
                "size": shard_size,
                "part": part,
                "deep": deep,
            },
        )

    # --- listing ------------------------------------------------------------------------------

    async def list_objects_page(
        self, volume: str, prefix: str, delimiter: str, start_after: str, limit: int
    ) -> ListPage:
        payload = await self._call(
            HandlerID.LIST_OBJECTS_PAGE,
            {
                "vol": volume,
                "prefix": prefix,
                "delim": delimiter,
                "after": start_after,
                "limit": limit,
            },
        )
        page = self._decode("listing", ListPage.from_msgpack, payload)
        return page

    # --- multipart uploads --------------------------------------------------------------------

    async def write_upload(self, volume: str, record: UploadRecord) -> None:
        await self._call(HandlerID.WRITE_UPLOAD, {"vol": volume, "record": record})

    async def read_upload(self, volume: str, upload_id: str) -> UploadRecord:
        payload = await self._call(HandlerID.READ_UPLOAD, {"vol": volume, "mpu": upload_id})
        return self._decode("upload record", UploadRecord.from_msgpack, payload)

    async def list_uploads(self, volume: str) -> list[UploadRecord]:
        payload = await self._call(HandlerID.LIST_UPLOADS, {"vol": volume})
        return self._decode("upload list", _unpack_uploads, payload)

    async def delete_upload(self, volume: str, upload_id: str) -> None:
        await self._call(HandlerID.DELETE_UPLOAD, {"vol": volume, "mpu": upload_id})

    async def commit_part(self, upload_id: str, volume: str, mpu: str, part: PartInfo) -> None:
        await self._call(
            HandlerID.COMMIT_PART, {"upload": upload_id, "vol": volume, "mpu": mpu, "pinfo": part}
        )

    async def list_parts(self, volume: str, mpu: str) -> list[PartInfo]:
        payload = await self._call(HandlerID.LIST_PARTS, {"vol": volume, "mpu": mpu})
        return self._decode("part list", _unpack_parts, payload)

    async def assemble_parts(
        self, upload_id: str, volume: str, mpu: str, parts: list[tuple[int, str]]
    ) -> None:
        await self._call(
            HandlerID.ASSEMBLE_PARTS,
            {"upload": upload_id, "vol": volume, "mpu": mpu, "plist": [list(p) for p in parts]},
        )


class RemoteShardReader:
    """The chunks of a READ_SHARD stream, as an async iterator.

    The stream opens on the first ``__anext__``. It is cancelled on both sides as soon as it
    ends, fails, or the consumer stops: ``aclose()`` (the object layer calls it), or dropping
    the reader without closing it.
    """

    def __init__(self, drive: RemoteDrive, request: dict[str, Any]) -> None:
        self._drive = drive
        self._request = request
        self._stream: ClientStream | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._finished = False

    def __aiter__(self) -> RemoteShardReader:
        return self

    async def __anext__(self) -> bytes:
        if self._finished:
            raise StopAsyncIteration
        try:
            if self._stream is None:
                self._loop = asyncio.get_running_loop()
                self._stream = await self._drive.open_stream(HandlerID.READ_SHARD, self._request)
            chunk = await self._stream.recv()
        except GridError as exc:
            self._close()
            raise grid_error_to_storage(exc, self._drive.endpoint) from exc
        except BaseException:
            self._close()
            raise
        if chunk is None:
            self._close()
            raise StopAsyncIteration
        return chunk

    def _close(self) -> None:
        self._finished = True
        if self._stream is not None:
            self._stream.cancel()

    async def aclose(self) -> None:
        """Stop reading: the stream is cancelled on both sides (a no-op after the end)."""
        self._close()

    def __del__(self) -> None:
        stream, loop = self._stream, self._loop
        if stream is not None and loop is not None and not stream.done:
            # Dropped unread: cancel on the loop's thread, whichever thread collects us.
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(stream.cancel)


class RemoteShardWriter:
    """A shard streamed to a remote drive over CREATE_SHARD.

    ``write`` sends one item (waiting for credit), ``commit`` closes the sending side and waits
    for the server's acknowledgement, ``abort`` cancels the stream, which makes the server
    remove the temporary file. ``abort`` after ``commit`` does nothing: the committed shard is
    cleaned up by ``commit_rename`` or ``undo_rename`` like any other.
    """

    def __init__(self, drive: RemoteDrive, stream: ClientStream) -> None:
        self._drive = drive
        self._stream = stream
        self._state = "open"  # open → committed | aborted | failed
        self._loop = asyncio.get_running_loop()

    def _failed(self, exc: GridError) -> StorageError:
        self._state = "failed"
        self._stream.cancel()
        return grid_error_to_storage(exc, self._drive.endpoint)

    async def _expect(self, wanted: bytes | None, what: str) -> None:
        try:
            item = await self._stream.recv()
        except GridError as exc:
            raise self._failed(exc) from exc
        if item != wanted:
            self._state = "failed"
            self._stream.cancel()
            raise DriveNotFound(
                f"drive {self._drive.endpoint}: expected {what} on CREATE_SHARD, got {item!r}"
            )

    async def wait_ready(self) -> None:
        """Wait until the server has created the shard file (or raise why it could not)."""
        await self._expect(SHARD_READY, "the ready message")

    async def write(self, chunk: Buffer) -> None:
        if self._state != "open":
            raise InvalidArgument(f"shard writer for {self._drive.endpoint} is {self._state}")
        if self._stream.done:
            # The server ended the upload early (a failed write): surface its error now.
            await self._expect(b"", "no end before the commit")
        try:
            # A data shard is a memoryview of the block: the frame encoder copies it into the
            # frame, so it is not copied to bytes first. The grid types items as bytes, but
            # only takes their len(), slices them and packs them (msgpack packs any buffer as
            # bin); tests/storage/test_remote_drive.py sends a memoryview through a real grid.
            await self._stream.send(cast(bytes, chunk))
        except GridError as exc:
            raise self._failed(exc) from exc

    async def commit(self) -> None:
        if self._state == "committed":
            return
        if self._state != "open":
            raise InvalidArgument(f"shard writer for {self._drive.endpoint} is {self._state}")
        try:
            await self._stream.close_send()
        except GridError as exc:
            raise self._failed(exc) from exc
        await self._expect(SHARD_COMMITTED, "the commit acknowledgement")
        await self._expect(None, "the end of stream")
        self._state = "committed"

    async def abort(self) -> None:
        if self._state == "open" or self._state == "failed":
            self._state = "aborted"
        self._stream.cancel()

    def __del__(self) -> None:
        if not self._stream.done:
            # Dropped without commit or abort: abort, so the server removes the file.
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                self._loop.call_soon_threadsafe(self._stream.cancel)


__all__ = [
    "RemoteDrive",
    "RemoteShardReader",
    "RemoteShardWriter",
    "grid_error_to_storage",
    "qualified_endpoint",
]
