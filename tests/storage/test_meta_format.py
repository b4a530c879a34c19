"""Metadata and format files: checksums, msgpack round trips, format planning."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from storage.drive import DiskInfo, LatencyStats, ListEntry, ListPage, VolumeInfo
from storage.errors import (
    ERRORS_BY_CODE,
    DriveOffline,
    FileCorrupt,
    FormatMismatch,
    InvalidArgument,
    StorageError,
    UnformattedDrive,
    error_from_code,
)
from storage.format import FormatInfo, decode_format, encode_format, plan_format
from storage.local import LocalDrive
from storage.meta import ErasureInfo, ObjectMeta, decode_meta, encode_meta
from storage.objects import ObjectLayer
from storage.testing import open_local_drives

META = ObjectMeta(
    size=5_000_000,
    etag="d41d8cd98f00b204e9800998ecf8427e",
    mod_time_ns=1_700_000_000_000_000_000,
    data_dir="0123abcd" * 4,
    erasure=ErasureInfo(4, 4, 1 << 20, (3, 4, 5, 6, 7, 0, 1, 2), 5),
    content_type="text/plain",
    user_meta={"x-amz-meta-colour": "blue"},
    inline=None,
)


def test_meta_round_trip() -> None:
    assert decode_meta(encode_meta(META)) == META
    with_inline = dataclasses.replace(META, size=10, inline=b"\x00" * 19)
    assert decode_meta(encode_meta(with_inline)) == with_inline
    assert ObjectMeta.from_msgpack(META.to_msgpack()) == META


def test_meta_checksum_catches_every_flip() -> None:
    blob = encode_meta(META)
    for position in range(0, len(blob), 7):
        damaged = bytearray(blob)
        damaged[position] ^= 0x40
        with pytest.raises(FileCorrupt):
            decode_meta(bytes(damaged))
    with pytest.raises(FileCorrupt):
        decode_meta(blob[:-3])
    with pytest.raises(FileCorrupt):
        decode_meta(b"")


def test_version_key_ignores_per_drive_fields() -> None:
    other = META.for_drive(1, None)
    assert other.erasure.index == 1
    assert other.version_key() == META.version_key()
    assert dataclasses.replace(META, mod_time_ns=1).version_key() != META.version_key()


def test_shard_sizes() -> None:
    erasure = ErasureInfo(4, 2, 1 << 20, tuple(range(6)))
    assert erasure.shard_chunk_size() == 1 << 18
    assert erasure.shard_size(0) == 0
    assert erasure.shard_size(1) == 1
    assert erasure.shard_size((1 << 20) + 5) == (1 << 18) + 2


def test_wire_dataclasses_round_trip() -> None:
    info = DiskInfo(10, 4, 6, 100, 50, False, "id", "/d", {"read": LatencyStats(3, 1.5, 2.0, 1)})
    assert DiskInfo.from_msgpack(info.to_msgpack()) == info
    volume = VolumeInfo("bkt", 123)
    assert VolumeInfo.from_msgpack(volume.to_msgpack()) == volume
    page = ListPage([ListEntry("a", META), ListEntry("b/", None, True)], True)
    assert ListPage.from_msgpack(page.to_msgpack()) == page
    fmt = FormatInfo("dep", "d1", (("d1", "d2", "d3", "d4"),))
    assert FormatInfo.from_msgpack(fmt.to_msgpack()) == fmt


def test_errors_travel_by_name() -> None:
    assert set(ERRORS_BY_CODE) >= {"DriveNotFound", "FileCorrupt", "WriteQuorum", "ReadQuorum"}
    error = error_from_code(DriveOffline("x").code, "gone")
    assert isinstance(error, DriveOffline) and str(error) == "gone"
    unknown = error_from_code("NoSuchThing", "msg")
    assert type(unknown) is StorageError and "NoSuchThing" in str(unknown)


def test_format_file_round_trip_and_damage() -> None:
    fmt = FormatInfo("dep", "d2", (("d1", "d2", "d3", "d4"),))
    assert decode_format(encode_format(fmt)) == fmt
    assert fmt.position() == (0, 1)
    damaged = bytearray(encode_format(fmt))
    damaged[-1] ^= 1
    with pytest.raises(FileCorrupt):
        decode_format(bytes(damaged))


def test_plan_format_fresh_and_replacement() -> None:
    fresh = plan_format([None] * 8, 4, deployment_id="dep")
    assert len({f.drive_id for f in fresh}) == 8
    assert all(f.deployment_id == "dep" and len(f.sets) == 2 for f in fresh)
    assert [f.position() for f in fresh[:5]] == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0)]
    replaced = plan_format([*fresh[:3], None, *fresh[4:]], 4)
    assert replaced[3].drive_id == fresh[3].drive_id
    with pytest.raises(FormatMismatch):
        plan_format([*fresh[:7], dataclasses.replace(fresh[7], deployment_id="other")], 4)
    with pytest.raises(InvalidArgument):
        plan_format([None] * 6, 4)
    with pytest.raises(InvalidArgument):
        plan_format([None] * 3, 3)


@pytest.mark.asyncio
async def test_drive_format_and_layer_reopen(tmp_path: Path) -> None:
    drive = await LocalDrive.open(str(tmp_path / "lone"))
    with pytest.raises(UnformattedDrive):
        await drive.read_format()
    drives = await open_local_drives(str(tmp_path / "set"), 4)
    layer = await ObjectLayer.open(drives, 4)
    formats = [await d.read_format() for d in drives]
    assert len({f.deployment_id for f in formats}) == 1
    assert (await drives[2].disk_info()).drive_id == formats[2].drive_id
    await layer.make_bucket("bkt")
    await layer.put_object("bkt", "k", b"hello")
    # Reopen with the drives given in another order: the format decides the positions.
    again = await ObjectLayer.open(list(reversed(drives)), 4)
    assert [d.endpoint for d in again.sets[0].drives] == [d.endpoint for d in drives]
    async with await again.get_object("bkt", "k") as reader:
        assert await reader.read_all() == b"hello"
