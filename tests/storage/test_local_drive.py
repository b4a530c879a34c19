"""LocalDrive: volumes, metadata, the temporary area, commit by rename, listing, disk_info."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from storage.drive import Drive
from storage.errors import (
    DriveNotFound,
    DriveOffline,
    FileNotFound,
    VolumeExists,
    VolumeNotEmpty,
    VolumeNotFound,
)
from storage.local import LocalDrive, iter_upload_ids
from storage.meta import ErasureInfo, ObjectMeta
from tests.storage.storage_helpers import hex_id

UP_ABANDONED = hex_id("abandoned")
UP = hex_id("up")
U1 = hex_id("u1")
U2 = hex_id("u2")
U3 = hex_id("u3")
U4 = hex_id("u4")
V1 = hex_id("v1")
V2 = hex_id("v2")
V3 = hex_id("v3")
V9 = hex_id("v9")
D1 = hex_id("d1")
D = hex_id("d")


def meta_for(data_dir: str, size: int = 1, inline: bytes | None = b"x") -> ObjectMeta:
    return ObjectMeta(
        size=size,
        etag="e",
        mod_time_ns=1,
        data_dir=data_dir,
        erasure=ErasureInfo(1, 0, 1 << 20, (0,), 0),
        inline=inline,
    )


def test_local_drive_satisfies_protocol(drive: LocalDrive) -> None:
    assert isinstance(drive, Drive)


@pytest.mark.asyncio
async def test_volumes(drive: LocalDrive) -> None:
    await drive.make_volume("beta")
    await drive.make_volume("alpha")
    with pytest.raises(VolumeExists):
        await drive.make_volume("alpha")
    assert [v.name for v in await drive.list_volumes()] == ["alpha", "beta"]
    assert (await drive.stat_volume("alpha")).name == "alpha"
    with pytest.raises(VolumeNotFound):
        await drive.stat_volume("gamma")
    await drive.write_metadata("alpha", "k", meta_for(D1))
    with pytest.raises(VolumeNotEmpty):
        await drive.delete_volume("alpha")
    await drive.delete_volume("alpha", force=True)
    await drive.delete_volume("beta")
    assert await drive.list_volumes() == []


@pytest.mark.asyncio
async def test_metadata_and_delete(drive: LocalDrive) -> None:
    with pytest.raises(VolumeNotFound):
        await drive.read_metadata("bkt", "k")
    await drive.make_volume("bkt")
    with pytest.raises(FileNotFound):
        await drive.read_metadata("bkt", "a/b/c")
    await drive.write_metadata("bkt", "a/b/c", meta_for(D1))
    assert await drive.read_metadata("bkt", "a/b/c") == meta_for(D1)
    await drive.delete_object("bkt", "a/b/c")
    with pytest.raises(FileNotFound):
        await drive.delete_object("bkt", "a/b/c")
    # Empty parent directories are pruned; the volume itself stays.
    assert os.listdir(os.path.join(drive.root, "bkt")) == []


@pytest.mark.asyncio
async def test_temp_area_is_emptied_on_open(tmp_path: Path) -> None:
    root = str(tmp_path / D)
    drive = await LocalDrive.open(root)
    writer = await drive.create_shard(UP_ABANDONED)
    await writer.write(b"partial")
    await writer.commit()
    assert list(iter_upload_ids(drive)) == [UP_ABANDONED]
    reopened = await LocalDrive.open(root)
    assert list(iter_upload_ids(reopened)) == []


@pytest.mark.asyncio
async def test_writer_abort_removes_partial_shard(drive: LocalDrive) -> None:
    writer = await drive.create_shard(UP)
    await writer.write(b"abc")
    await writer.abort()
    await writer.abort()
    assert list(iter_upload_ids(drive)) == []


@pytest.mark.asyncio
async def test_rename_commit_and_undo(drive: LocalDrive) -> None:
    await drive.make_volume("bkt")

    async def stage(upload: str, data_dir: str) -> None:
        writer = await drive.create_shard(upload)
        await writer.write(b"shard-" + data_dir.encode())
        await writer.commit()
        await drive.rename_data(upload, "bkt", "obj", meta_for(data_dir, 7, None))

    def data_dirs() -> list[str]:
        folder = os.path.join(drive.root, "bkt", "obj")
        return sorted(d for d in os.listdir(folder) if d.startswith("__mg.data."))

    await stage(U1, V1)
    await drive.commit_rename(U1, "bkt", "obj")
    assert (await drive.read_metadata("bkt", "obj")).data_dir == V1
    await stage(U2, V2)
    assert (await drive.read_metadata("bkt", "obj")).data_dir == V2
    await drive.undo_rename(U2, "bkt", "obj")
    assert (await drive.read_metadata("bkt", "obj")).data_dir == V1
    assert data_dirs() == ["__mg.data." + V1]
    await stage(U3, V3)
    await drive.commit_rename(U3, "bkt", "obj")
    assert (await drive.read_metadata("bkt", "obj")).data_dir == V3
    assert data_dirs() == ["__mg.data." + V3]  # the replaced version's data is gone
    # Undo of a first version removes the object entirely.
    await drive.rename_data(U4, "bkt", "fresh", meta_for(V9))
    await drive.undo_rename(U4, "bkt", "fresh")
    with pytest.raises(FileNotFound):
        await drive.read_metadata("bkt", "fresh")
    assert list(iter_upload_ids(drive)) == []


@pytest.mark.asyncio
async def test_listing_is_in_key_order(drive: LocalDrive) -> None:
    await drive.make_volume("bkt")
    keys = ["a", "a-b", "a/", "a/b", "a/b/c", "a.txt", "a0", "b", "z/y/x", "ab/c"]
    for key in keys:
        await drive.write_metadata("bkt", key, meta_for(D))
    page = await drive.list_objects_page("bkt", "", "", "", 100)
    assert [e.name for e in page.entries] == sorted(keys)
    assert not page.truncated
    page = await drive.list_objects_page("bkt", "", "/", "", 100)
    assert [(e.name, e.is_prefix) for e in page.entries] == [
        ("a", False),
        ("a-b", False),
        ("a.txt", False),
        ("a/", True),
        ("a0", False),
        ("ab/", True),
        ("b", False),
        ("z/", True),
    ]
    page = await drive.list_objects_page("bkt", "a/", "/", "", 100)
    assert [e.name for e in page.entries] == ["a/", "a/b", "a/b/"]
    page = await drive.list_objects_page("bkt", "", "", "a/b", 3)
    assert [e.name for e in page.entries] == ["a/b/c", "a0", "ab/c"] and page.truncated
    page = await drive.list_objects_page("bkt", "a", "/", "a/", 100)
    assert [e.name for e in page.entries] == ["a0", "ab/"]
    assert all(e.meta is not None for e in page.entries if not e.is_prefix)


@pytest.mark.asyncio
async def test_disk_info(drive: LocalDrive) -> None:
    await drive.make_volume("bkt")
    info = await drive.disk_info()
    assert info.total > 0 and 0 <= info.free <= info.total and info.used >= 0
    assert info.inodes_total > 0 and info.endpoint == drive.root
    assert info.healing is False
    assert info.latency["make_volume"].count == 1
    assert info.latency["make_volume"].max_ms >= 0


@pytest.mark.asyncio
async def test_offline_and_missing_drive(tmp_path: Path, drive: LocalDrive) -> None:
    drive.set_online(False)
    assert not drive.is_online()
    with pytest.raises(DriveOffline):
        await drive.disk_info()
    with pytest.raises(DriveOffline):
        await drive.read_metadata("bkt", "k")
    drive.set_online(True)
    await drive.disk_info()
    with pytest.raises(DriveNotFound):
        await LocalDrive.open(str(tmp_path / "nowhere"), create=False)
