"""RemoteDrive and the drive service over a real loopback grid, against real LocalDrives.

Node 1 serves two drives (``/d0`` a plain LocalDrive, ``/d1`` wrapped in a gated drive that
counts calls and can hold them); node 0 uses them as RemoteDrives. Every test ends with no mux,
call or handler left on either side.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from minigrid import GridConfig, HandlerID, Manager, RemoteError
from minigrid.testing import LocalGrid, local_grid, loop_errors_checked
from storage import bitrot
from storage.drive import Drive
from storage.drive_service import serve_drives
from storage.drive_wire import decode_error, encode_error, pack
from storage.errors import (
    ERRORS_BY_CODE,
    DriveNotFound,
    DriveOffline,
    FileCorrupt,
    FileNotFound,
    InvalidArgument,
    InvalidName,
    StorageError,
    UnformattedDrive,
    VolumeExists,
    VolumeNotEmpty,
    VolumeNotFound,
)
from storage.format import plan_format
from storage.local import LocalDrive, iter_upload_ids
from storage.meta import ErasureInfo, ObjectMeta
from storage.remote import RemoteDrive
from storage.testing import FaultyDrive
from tests.conftest import eventually
from tests.storage.storage_helpers import flip_byte, hex_id, payload

CHUNK = 1000
FAST_RECONNECT = GridConfig(backoff_initial=0.05, backoff_cap=0.2)
DD1 = hex_id("dd1")
DD_MISSING = hex_id("dd-missing")
DD_OLD = hex_id("old")
DD_NEW = hex_id("new")
DD = hex_id("dd")
UP1 = hex_id("up-1")
UP2 = hex_id("up-2")
UP_ABORT = hex_id("up-abort")
UP_DROPPED = hex_id("up-dropped")
UP_KEPT = hex_id("up-kept")
UP_FULL = hex_id("up-full")
UP_X = hex_id("up-x")


class GatedDrive(FaultyDrive):
    """A FaultyDrive whose ``read_metadata`` can be held at an event (a slow drive)."""

    def __init__(self, inner: Drive) -> None:
        super().__init__(inner)
        self.meta_gate: asyncio.Event | None = None

    async def read_metadata(self, volume: str, key: str) -> ObjectMeta:
        if self.meta_gate is not None:
            await self.meta_gate.wait()
        return await super().read_metadata(volume, key)


@dataclass
class Pair:
    grid: LocalGrid
    local0: LocalDrive  # served as /d0 by node 1
    local1: LocalDrive  # served as /d1 by node 1, through ``gated``
    gated: GatedDrive
    remote0: RemoteDrive  # node 0's view of /d0
    remote1: RemoteDrive  # node 0's view of /d1

    @property
    def client(self) -> Manager:
        return self.grid.managers[0]

    @property
    def server(self) -> Manager:
        return self.grid.managers[1]


@contextlib.asynccontextmanager
async def served_pair(tmp_path: Path, config: GridConfig | None = None) -> AsyncIterator[Pair]:
    local0 = await LocalDrive.open(str(tmp_path / "d0"))
    local1 = await LocalDrive.open(str(tmp_path / "d1"))
    gated = GatedDrive(local1)
    served: Iterator[dict[str, Drive]] = iter([{}, {"/d0": local0, "/d1": gated}])

    def register(manager: Manager) -> None:
        serve_drives(manager, next(served))

    async with loop_errors_checked(), local_grid(2, register=register, config=config) as grid:
        conn = grid.managers[0].connection(grid.hosts[1])
        pair = Pair(grid, local0, local1, gated, RemoteDrive(conn, "/d0"), RemoteDrive(conn, "/d1"))
        yield pair
        await eventually(grid.quiet, what="no mux, call or handler left")


def meta_for(data_dir: str, size: int, inline: bytes | None = None) -> ObjectMeta:
    return ObjectMeta(
        size=size,
        etag="etag",
        mod_time_ns=1,
        data_dir=data_dir,
        erasure=ErasureInfo(data=2, parity=2, block_size=2 * CHUNK, distribution=(0, 1, 2, 3)),
        inline=inline,
    )


async def write_shard(drive: Drive, upload_id: str, data: bytes) -> None:
    """Chunks alternate between bytes and memoryviews (a put sends data shards as views of
    the block), so both cross the grid in every test that writes a shard."""
    writer = await drive.create_shard(upload_id)
    view = memoryview(data)
    for index, pos in enumerate(range(0, len(data), CHUNK)):
        chunk = view[pos : pos + CHUNK]
        await writer.write(chunk if index % 2 else bytes(chunk))
    await writer.commit()


async def read_range(drive: Drive, data_dir: str, size: int, offset: int, length: int) -> bytes:
    chunks = drive.read_shard(
        "bkt", "obj", data_dir, chunk_size=CHUNK, shard_size=size, offset=offset, length=length
    )
    return b"".join([chunk async for chunk in chunks])


async def put_shard(drive: Drive, data: bytes, data_dir: str = DD1) -> None:
    """Store ``data`` as the shard of bkt/obj through the full create/rename/commit path."""
    await write_shard(drive, UP1, data)
    await drive.rename_data(UP1, "bkt", "obj", meta_for(data_dir, len(data)))
    await drive.commit_rename(UP1, "bkt", "obj")


# --- the error encoding ---------------------------------------------------------------------


def test_every_storage_error_survives_the_wire_encoding() -> None:
    for code, cls in ERRORS_BY_CODE.items():
        text = f"{code} on /d1: a message: with colons\nand a second line [storage:Nope] "
        rebuilt = decode_error(encode_error(cls(text)), "http://h/d1")
        assert type(rebuilt) is cls
        assert str(rebuilt) == text


def test_untagged_grid_errors_become_drive_not_found() -> None:
    for text in ("unknown subroute '/d9' for handler READ_METADATA", "FileNotFound: x", ""):
        rebuilt = decode_error(text, "http://h/d9")
        assert type(rebuilt) is DriveNotFound
        assert "http://h/d9" in str(rebuilt)
    unknown = decode_error("[storage:NoSuchError] what", "e")
    assert type(unknown) is StorageError and "NoSuchError" in str(unknown)


def test_serve_drives_refuses_a_path_too_long_for_a_subroute() -> None:
    manager = Manager("127.0.0.1:1", [], "secret")
    with pytest.raises(ValueError, match="drive path"):
        serve_drives(manager, {"/" + "x" * 300: FaultyDrive(LocalDrive("/nonexistent"))})


# --- single calls ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_format_disk_info_and_volumes_round_trip(tmp_path: Path) -> None:
    async with served_pair(tmp_path) as pair:
        drive = pair.remote0
        assert drive.is_online()
        assert drive.endpoint == f"http://{pair.grid.hosts[1]}/d0"
        with pytest.raises(UnformattedDrive):
            await drive.read_format()
        fmt = plan_format([None] * 4, 4)[0]
        await drive.write_format(fmt)
        assert await drive.read_format() == fmt
        assert await pair.local0.read_format() == fmt

        info = await drive.disk_info()
        assert info.drive_id == fmt.drive_id and info.endpoint == drive.endpoint
        assert info.total > 0 and info.free > 0

        await drive.make_volume("bkt")
        with pytest.raises(VolumeExists):
            await drive.make_volume("bkt")
        await drive.make_volume("other")
        assert [v.name for v in await drive.list_volumes()] == ["bkt", "other"]
        assert (await drive.stat_volume("bkt")) == (await pair.local0.stat_volume("bkt"))
        with pytest.raises(VolumeNotFound):
            await drive.stat_volume("missing")
        with pytest.raises(InvalidName):
            await drive.make_volume("../escape")

        await drive.write_metadata("other", "k", meta_for(DD, 0, inline=b""))
        with pytest.raises(VolumeNotEmpty):
            await drive.delete_volume("other")
        await drive.delete_volume("other", force=True)
        with pytest.raises(VolumeNotFound):
            await drive.delete_volume("other")
        assert [v.name for v in await drive.list_volumes()] == ["bkt"]


@pytest.mark.asyncio
async def test_disk_info_is_cached_and_shared(tmp_path: Path) -> None:
    async with served_pair(tmp_path) as pair:
        drive = RemoteDrive(pair.remote1.conn, "/d1", disk_info_ttl=60.0)
        first, second = await asyncio.gather(drive.disk_info(), drive.disk_info())
        assert first is second
        assert await drive.disk_info() is first
        assert pair.gated.calls["disk_info"] == 1
        expiring = RemoteDrive(pair.remote1.conn, "/d1", disk_info_ttl=0.0)
        await expiring.disk_info()
        await expiring.disk_info()
        assert pair.gated.calls["disk_info"] == 3


@pytest.mark.asyncio
async def test_metadata_round_trip_and_typed_errors(tmp_path: Path) -> None:
    async with served_pair(tmp_path) as pair:
        drive = pair.remote0
        await drive.make_volume("bkt")
        meta = meta_for(DD, 5, inline=b"\x00\xffinline bytes")
        meta = ObjectMeta(**{**meta.__dict__, "user_meta": {"x-amz-meta-a": "ü"}})
        await drive.write_metadata("bkt", "dir/obj", meta)
        assert await drive.read_metadata("bkt", "dir/obj") == meta
        assert await pair.local0.read_metadata("bkt", "dir/obj") == meta

        with pytest.raises(FileNotFound):
            await drive.read_metadata("bkt", "nope")
        with pytest.raises(VolumeNotFound):
            await drive.read_metadata("nobucket", "obj")
        for key in ("../../etc/passwd", "a/../../b", "/abs"):
            with pytest.raises(InvalidName):
                await drive.read_metadata("bkt", key)
        with pytest.raises(InvalidName):
            await drive.write_metadata("bkt", "../escape", meta)
        assert not (tmp_path / "escape").exists()

        page = await drive.list_objects_page("bkt", "", "/", "", 10)
        assert page == await pair.local0.list_objects_page("bkt", "", "/", "", 10)
        assert [e.name for e in page.entries] == ["dir/"]
        page = await drive.list_objects_page("bkt", "dir/", "", "", 10)
        assert [e.name for e in page.entries] == ["dir/obj"] and not page.truncated
        with pytest.raises(InvalidArgument):
            await drive.list_objects_page("bkt", "", "", "", 0)

        await drive.delete_object("bkt", "dir/obj")
        with pytest.raises(FileNotFound):
            await drive.delete_object("bkt", "dir/obj")


@pytest.mark.asyncio
async def test_unknown_drive_path_and_bad_requests(tmp_path: Path) -> None:
    async with served_pair(tmp_path) as pair:
        missing = RemoteDrive(pair.remote0.conn, "/no-such-drive")
        with pytest.raises(DriveNotFound, match="no-such-drive"):
            await missing.read_format()
        with pytest.raises(DriveNotFound):
            await anext(
                aiter(
                    missing.read_shard(
                        "bkt", "k", DD1, chunk_size=1, shard_size=1, offset=0, length=1
                    )
                )
            )
        # A malformed request is refused with a typed error, not a crash on the server.
        conn = pair.remote0.conn
        for raw in (b"\xc1", pack([1, 2]), pack({"vol": 3})):
            with pytest.raises(RemoteError) as caught:
                await conn.call(HandlerID.STAT_VOLUME, raw, subroute="/d0")
            assert type(decode_error(str(caught.value))) is InvalidArgument


# --- shards ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_shard_write_commit_rename_and_ranged_reads(tmp_path: Path) -> None:
    async with served_pair(tmp_path) as pair:
        drive = pair.remote0
        await drive.make_volume("bkt")
        data = payload(3 * CHUNK + 123, seed=1)
        await put_shard(drive, data)
        assert list(iter_upload_ids(pair.local0)) == []
        await drive.verify_shard("bkt", "obj", DD1, chunk_size=CHUNK, shard_size=len(data))
        size = len(data)
        ranges = [(0, size), (0, 0), (5, 10), (CHUNK - 1, 2), (999, 2100), (size - 1, 1)]
        for offset, length in ranges:
            expected = data[offset : offset + length]
            assert await read_range(drive, DD1, size, offset, length) == expected
            assert await read_range(pair.local0, DD1, size, offset, length) == expected
        # One item per bitrot frame, trimmed at the ends of the range, as LocalDrive does.
        chunks = drive.read_shard(
            "bkt", "obj", DD1, chunk_size=CHUNK, shard_size=size, offset=500, length=2000
        )
        assert [len(c) async for c in chunks] == [500, 1000, 500]
        with pytest.raises(InvalidArgument):
            await read_range(drive, DD1, size, size - 1, 2)
        with pytest.raises(FileNotFound):
            await read_range(drive, DD_MISSING, size, 0, 1)
        with pytest.raises(FileNotFound):
            await drive.verify_shard("bkt", "obj", DD_MISSING, chunk_size=CHUNK, shard_size=size)


@pytest.mark.asyncio
async def test_undo_rename_restores_the_previous_version(tmp_path: Path) -> None:
    async with served_pair(tmp_path) as pair:
        drive = pair.remote0
        await drive.make_volume("bkt")
        await put_shard(drive, payload(CHUNK, seed=2), data_dir=DD_OLD)
        await write_shard(drive, UP2, payload(CHUNK, seed=3))
        await drive.rename_data(UP2, "bkt", "obj", meta_for(DD_NEW, CHUNK))
        assert (await drive.read_metadata("bkt", "obj")).data_dir == DD_NEW
        await drive.undo_rename(UP2, "bkt", "obj")
        assert (await drive.read_metadata("bkt", "obj")).data_dir == DD_OLD
        assert await read_range(drive, DD_OLD, CHUNK, 0, CHUNK) == payload(CHUNK, seed=2)


@pytest.mark.asyncio
async def test_a_flipped_byte_in_a_remote_shard_is_file_corrupt(tmp_path: Path) -> None:
    async with served_pair(tmp_path) as pair:
        drive = pair.remote0
        await drive.make_volume("bkt")
        data = payload(3 * CHUNK, seed=4)
        await put_shard(drive, data)
        shard = tmp_path / "d0" / "bkt" / "obj" / f"__mg.data.{DD1}" / "shard"
        # Damage the second frame's chunk: the first chunk still arrives, then the error.
        flip_byte(str(shard), CHUNK + bitrot.HASH_SIZE + bitrot.HASH_SIZE + 7)
        with pytest.raises(FileCorrupt):
            await drive.verify_shard("bkt", "obj", DD1, chunk_size=CHUNK, shard_size=len(data))
        chunks = drive.read_shard(
            "bkt", "obj", DD1, chunk_size=CHUNK, shard_size=len(data), offset=0, length=len(data)
        )
        assert await anext(chunks) == data[:CHUNK]
        with pytest.raises(FileCorrupt):
            await anext(chunks)
        assert await read_range(drive, DD1, len(data), 2 * CHUNK, CHUNK) == data[2 * CHUNK :]


@pytest.mark.asyncio
async def test_early_exit_from_a_shard_read_closes_the_stream_on_both_sides(
    tmp_path: Path,
) -> None:
    async with served_pair(tmp_path) as pair:
        drive = pair.remote0
        await drive.make_volume("bkt")
        data = payload(40 * CHUNK, seed=5)
        await put_shard(drive, data)

        def streams() -> int:
            return sum(s.inflight_streams for m in pair.grid.managers for s in m.stats().values())

        def reader() -> AsyncIterator[bytes]:
            return drive.read_shard(
                "bkt",
                "obj",
                DD1,
                chunk_size=CHUNK,
                shard_size=len(data),
                offset=0,
                length=len(data),
            )

        # aclose() after one chunk, as the object layer does.
        chunks = reader()
        assert await anext(chunks) == data[:CHUNK]
        assert streams() == 2  # the client's end and the server's end
        await chunks.aclose()  # type: ignore[attr-defined]
        await eventually(lambda: streams() == 0, what="the stream closed on both sides")

        # ``break`` out of async for, then drop the reader without closing it.
        async for _chunk in reader():
            break
        gc.collect()
        await eventually(lambda: streams() == 0, what="a dropped reader's stream closed")

        # Reading to the end leaves nothing behind either.
        assert await read_range(drive, DD1, len(data), 0, len(data)) == data
        await eventually(lambda: streams() == 0, what="a finished stream closed")


@pytest.mark.asyncio
async def test_shard_abort_removes_the_temporary_file(tmp_path: Path) -> None:
    async with served_pair(tmp_path) as pair:
        writer = await pair.remote0.create_shard(UP_ABORT)
        await writer.write(b"x" * CHUNK)
        await writer.write(b"y" * CHUNK)
        assert list(iter_upload_ids(pair.local0)) == [UP_ABORT]
        await writer.abort()
        await writer.abort()  # safe twice
        await eventually(
            lambda: list(iter_upload_ids(pair.local0)) == [], what="the upload removed"
        )
        with pytest.raises(InvalidArgument):
            await writer.write(b"z")

        # A writer dropped without commit or abort is aborted too.
        dropped = await pair.remote0.create_shard(UP_DROPPED)
        await dropped.write(b"d" * CHUNK)
        del dropped
        gc.collect()
        await eventually(
            lambda: list(iter_upload_ids(pair.local0)) == [], what="the dropped upload removed"
        )

        # Commit, then abort: the abort is a no-op, the shard stays for rename_data.
        writer = await pair.remote0.create_shard(UP_KEPT)
        await writer.write(b"z" * CHUNK)
        await writer.commit()
        await writer.abort()
        assert list(iter_upload_ids(pair.local0)) == [UP_KEPT]


@pytest.mark.asyncio
async def test_shard_writer_errors_are_typed(tmp_path: Path) -> None:
    async with served_pair(tmp_path) as pair:
        with pytest.raises(InvalidName, match="upload id"):
            await pair.remote0.create_shard("../../escape")
        # A write failing on the server (injected DriveFull after one chunk) reaches the client
        # by the commit at the latest, and the partial file is removed.
        pair.gated.fail_writes_after = 1
        writer = await pair.remote1.create_shard(UP_FULL)
        with pytest.raises(StorageError) as caught:
            for _ in range(20):
                await writer.write(b"w" * CHUNK)
            await writer.commit()
        assert caught.value.code == "DriveFull"
        await eventually(lambda: list(iter_upload_ids(pair.local1)) == [], what="cleanup")


# --- availability ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_deadline_maps_to_drive_not_found_and_cancels_the_handler(tmp_path: Path) -> None:
    async with served_pair(tmp_path) as pair:
        await pair.remote1.make_volume("bkt")
        pair.gated.meta_gate = asyncio.Event()
        slow = RemoteDrive(pair.remote1.conn, "/d1", call_timeout=0.2)
        with pytest.raises(DriveNotFound, match="timed out") as caught:
            await slow.read_metadata("bkt", "obj")
        assert not isinstance(caught.value, DriveOffline)
        pair.gated.meta_gate.set()


@pytest.mark.asyncio
async def test_a_drop_fails_calls_and_streams_in_flight_with_drive_offline(
    tmp_path: Path,
) -> None:
    async with served_pair(tmp_path, FAST_RECONNECT) as pair:
        drive = pair.remote1
        await drive.make_volume("bkt")
        await put_shard(drive, payload(10 * CHUNK, seed=6))
        pair.gated.meta_gate = asyncio.Event()
        pair.gated.read_gate = asyncio.Event()
        call = asyncio.create_task(drive.read_metadata("bkt", "obj"))
        chunks = drive.read_shard(
            "bkt",
            "obj",
            DD1,
            chunk_size=CHUNK,
            shard_size=10 * CHUNK,
            offset=0,
            length=10 * CHUNK,
        )
        read = asyncio.ensure_future(anext(chunks))
        await eventually(lambda: pair.gated.reads_waiting == 1, what="the read held")
        conn = drive.conn
        conn.drop()
        with pytest.raises(DriveOffline):
            await call
        with pytest.raises(DriveOffline):
            await read
        assert not drive.is_online()
        with pytest.raises(DriveOffline):
            await drive.disk_info()
        with pytest.raises(DriveOffline):
            await drive.create_shard(UP_X)
        pair.gated.meta_gate.set()
        pair.gated.read_gate.set()
        await pair.client.wait_connected()
        assert drive.is_online()
        assert (await drive.read_metadata("bkt", "obj")).data_dir == DD1
