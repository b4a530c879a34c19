"""Test helpers that ship with the library: a fault-injecting drive wrapper and set builders.

:class:`FaultyDrive` wraps any :class:`~storage.drive.Drive` and can take it offline, fail its
writes or commits, or hold its shard reads at an :class:`asyncio.Event` (a "slow" drive whose
slowness a test controls exactly, with no sleeps). :meth:`FaultyDrive.hold` holds any method
the same way, and counts the calls waiting.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from storage.drive import Buffer, DiskInfo, Drive, ListPage, ShardWriter, VolumeInfo
from storage.errors import DriveFull, DriveOffline, StorageError
from storage.format import FormatInfo
from storage.local import LocalDrive
from storage.meta import ObjectMeta, PartInfo, UploadRecord
from storage.objects import ObjectLayer


class _FailingWriter:
    def __init__(self, inner: ShardWriter, after: int) -> None:
        self._inner = inner
        self._left = after

    async def write(self, chunk: Buffer) -> None:
        if self._left <= 0:
            raise DriveFull("injected write failure")
        self._left -= 1
        await self._inner.write(chunk)

    async def commit(self) -> None:
        await self._inner.commit()

    async def abort(self) -> None:
        await self._inner.abort()


class FaultyDrive:
    """A Drive wrapper with switchable faults. ``calls`` counts every method called."""

    def __init__(self, inner: Drive) -> None:
        self.inner = inner
        self.offline = False
        self.fail_writes_after: int | None = None  # shard chunks accepted before failing
        self.fail_rename = False
        self.read_gate: Any = None  # an asyncio.Event; shard reads wait for it when set
        #: Chunks each shard read passes before it waits at ``read_gate`` (a mid-object stall).
        self.read_gate_after = 0
        self.reads_waiting = 0
        self.calls: Counter[str] = Counter()
        self.holds: dict[str, asyncio.Event] = {}
        #: Calls waiting at a :meth:`hold` right now, by method name.
        self.held: Counter[str] = Counter()

    def hold(self, method: str) -> asyncio.Event:
        """Make calls of ``method`` wait (after counting them) until the returned event is set."""
        event = self.holds[method] = asyncio.Event()
        return event

    async def _enter(self, name: str) -> None:
        self.calls[name] += 1
        if self.offline:
            raise DriveOffline(f"drive {self.inner.endpoint} is offline (injected)")
        event = self.holds.get(name)
        if event is not None and not event.is_set():
            self.held[name] += 1
            try:
                await event.wait()
            finally:
                self.held[name] -= 1

    @property
    def endpoint(self) -> str:
        return self.inner.endpoint

    def is_online(self) -> bool:
        return not self.offline and self.inner.is_online()

    async def disk_info(self) -> DiskInfo:
        await self._enter("disk_info")
        return await self.inner.disk_info()

    async def read_format(self) -> FormatInfo:
        await self._enter("read_format")
        return await self.inner.read_format()

    async def write_format(self, fmt: FormatInfo) -> None:
        await self._enter("write_format")
        await self.inner.write_format(fmt)

    async def make_volume(self, volume: str) -> None:
        await self._enter("make_volume")
        await self.inner.make_volume(volume)

    async def list_volumes(self) -> list[VolumeInfo]:
        await self._enter("list_volumes")
        return await self.inner.list_volumes()

    async def stat_volume(self, volume: str) -> VolumeInfo:
        await self._enter("stat_volume")
        return await self.inner.stat_volume(volume)

    async def delete_volume(self, volume: str, force: bool = False) -> None:
        await self._enter("delete_volume")
        await self.inner.delete_volume(volume, force)

    async def read_metadata(self, volume: str, key: str) -> ObjectMeta:
        await self._enter("read_metadata")
        return await self.inner.read_metadata(volume, key)

    async def write_metadata(self, volume: str, key: str, meta: ObjectMeta) -> None:
        await self._enter("write_metadata")
        await self.inner.write_metadata(volume, key, meta)

    async def delete_object(self, volume: str, key: str) -> None:
        await self._enter("delete_object")
        await self.inner.delete_object(volume, key)

    async def create_shard(self, upload_id: str, part: int = 0) -> ShardWriter:
        await self._enter("create_shard")
        writer = await self.inner.create_shard(upload_id, part)
        if self.fail_writes_after is not None:
            return _FailingWriter(writer, self.fail_writes_after)
        return writer

    async def rename_data(self, upload_id: str, volume: str, key: str, meta: ObjectMeta) -> None:
        await self._enter("rename_data")
        if self.fail_rename:
            raise StorageError("injected rename failure")
        await self.inner.rename_data(upload_id, volume, key, meta)

    async def commit_rename(self, upload_id: str, volume: str, key: str) -> None:
        await self._enter("commit_rename")
        await self.inner.commit_rename(upload_id, volume, key)

    async def undo_rename(self, upload_id: str, volume: str, key: str) -> None:
        await self._enter("undo_rename")
        await self.inner.undo_rename(upload_id, volume, key)

    async def read_shard(
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
        await self._enter("read_shard")
        chunks = self.inner.read_shard(
            volume,
            key,
            data_dir,
            chunk_size=chunk_size,
            shard_size=shard_size,
            offset=offset,
            length=length,
            part=part,
        )
        passed = 0
        try:
            async for chunk in chunks:
                passed += 1
                gated = passed > self.read_gate_after
                if gated and self.read_gate is not None and not self.read_gate.is_set():
                    self.reads_waiting += 1
                    await self.read_gate.wait()
                yield chunk
        finally:
            closer = getattr(chunks, "aclose", None)
            if closer is not None:
                await closer()

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
        await self._enter("verify_shard")
        await self.inner.verify_shard(
            volume, key, data_dir, chunk_size=chunk_size, shard_size=shard_size, deep=deep,
            part=part,
        )  # fmt: skip

    async def list_objects_page(
        self, volume: str, prefix: str, delimiter: str, start_after: str, limit: int
    ) -> ListPage:
        await self._enter("list_objects_page")
        return await self.inner.list_objects_page(volume, prefix, delimiter, start_after, limit)

    async def write_upload(self, volume: str, record: UploadRecord) -> None:
        await self._enter("write_upload")
        await self.inner.write_upload(volume, record)

    async def read_upload(self, volume: str, upload_id: str) -> UploadRecord:
        await self._enter("read_upload")
        return await self.inner.read_upload(volume, upload_id)

    async def list_uploads(self, volume: str) -> list[UploadRecord]:
        await self._enter("list_uploads")
        return await self.inner.list_uploads(volume)

    async def delete_upload(self, volume: str, upload_id: str) -> None:
        await self._enter("delete_upload")
        await self.inner.delete_upload(volume, upload_id)

    async def commit_part(self, upload_id: str, volume: str, mpu: str, part: PartInfo) -> None:
        await self._enter("commit_part")
        await self.inner.commit_part(upload_id, volume, mpu, part)

    async def list_parts(self, volume: str, mpu: str) -> list[PartInfo]:
        await self._enter("list_parts")
        return await self.inner.list_parts(volume, mpu)

    async def assemble_parts(
        self, upload_id: str, volume: str, mpu: str, parts: list[tuple[int, str]]
    ) -> None:
        await self._enter("assemble_parts")
        await self.inner.assemble_parts(upload_id, volume, mpu, parts)


async def open_local_drives(root: str, count: int) -> list[LocalDrive]:
    """``count`` local drives in ``root/d0`` .. ``root/d{count-1}``."""
    return [await LocalDrive.open(os.path.join(root, f"d{i}")) for i in range(count)]


async def local_layer(
    root: str, count: int, *, faulty: bool = False, **options: Any
) -> tuple[ObjectLayer, list[Any]]:
    """An object layer over one set of ``count`` local drives (wrapped in FaultyDrive when
    ``faulty``). Returns the layer and the drives in set position order."""
    drives: list[Any] = await open_local_drives(root, count)
    if faulty:
        drives = [FaultyDrive(d) for d in drives]
    layer = await ObjectLayer.open(drives, count, **options)
    return layer, list(layer.sets[0].drives)


MIB = 1 << 20


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic random bytes (no period that could hide an offset bug)."""
    return random.Random(seed).randbytes(size)


async def read_all(layer: ObjectLayer, bucket: str, key: str, *args: int) -> bytes:
    """Read a whole object (or a range: ``offset, length``) into memory."""
    async with await layer.get_object(bucket, key, *args) as reader:
        return await reader.read_all()


def shard_files(drive_root: str) -> list[str]:
    """Every shard file on a local drive, outside its system area."""
    found: list[str] = []
    for folder, _dirs, files in os.walk(drive_root):
        if ".minigrid.sys" in folder:
            continue
        found.extend(os.path.join(folder, f) for f in files if f == "shard")
    return sorted(found)


def flip_byte(path: str, position: int) -> None:
    """Invert one byte of a file; a negative position counts from the end."""
    whence = os.SEEK_END if position < 0 else os.SEEK_SET
    with open(path, "r+b") as handle:
        handle.seek(position, whence)
        value = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([value[0] ^ 0xFF]))


def wipe_drive(root: str) -> None:
    """Remove everything on a local drive, its format included (a replaced disk)."""
    for name in os.listdir(root):
        path = os.path.join(root, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
