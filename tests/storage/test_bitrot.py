"""Bitrot framing: every chunk carries a hash, and every read checks it."""

from __future__ import annotations

import pytest
from storage_helpers import flip_byte, hex_id, payload, shard_files

from storage import bitrot
from storage.errors import FileCorrupt
from storage.local import LocalDrive
from storage.meta import ErasureInfo, ObjectMeta

DD1 = hex_id("dd1")
UP1 = hex_id("up1")


def test_frame_round_trip() -> None:
    shard = payload(10_000)
    framed = bitrot.frame_all(shard, 4096)
    assert len(framed) == bitrot.framed_size(len(shard), 4096) == 10_000 + 3 * 16
    assert b"".join(bitrot.iter_verified(framed, 4096, len(shard))) == shard


@pytest.mark.parametrize("position", [0, 15, 16, 4111, 4112 + 20, 10_047])
def test_flipping_any_byte_is_detected(position: int) -> None:
    shard = payload(10_000, seed=1)
    framed = bytearray(bitrot.frame_all(shard, 4096))
    framed[position] ^= 0x01
    with pytest.raises(FileCorrupt):
        list(bitrot.iter_verified(bytes(framed), 4096, len(shard)))


def test_truncated_frame_is_corrupt() -> None:
    framed = bitrot.frame_all(payload(5000), 4096)
    with pytest.raises(FileCorrupt):
        list(bitrot.iter_verified(framed[:-1], 4096, 5000))


def test_chunk_span() -> None:
    assert bitrot.chunk_span(0, 10, 4) == (0, 3)
    assert bitrot.chunk_span(5, 2, 4) == (1, 1)
    assert bitrot.chunk_span(3, 2, 4) == (0, 2)
    assert bitrot.chunk_span(8, 0, 4) == (2, 0)


async def _write_shard(drive: LocalDrive, data: bytes, chunk: int) -> ObjectMeta:
    await drive.make_volume("bkt")
    writer = await drive.create_shard(UP1)
    for pos in range(0, len(data), chunk):
        await writer.write(data[pos : pos + chunk])
    await writer.commit()
    meta = ObjectMeta(
        size=len(data),
        etag="x",
        mod_time_ns=1,
        data_dir=DD1,
        erasure=ErasureInfo(1, 0, chunk, (0,), 0),
    )
    await drive.rename_data(UP1, "bkt", "obj", meta)
    await drive.commit_rename(UP1, "bkt", "obj")
    return meta


@pytest.mark.asyncio
async def test_drive_read_detects_one_flipped_byte(drive: LocalDrive) -> None:
    data = payload(3 * 4096 + 100, seed=2)
    await _write_shard(drive, data, 4096)
    args = {"chunk_size": 4096, "shard_size": len(data)}
    whole = b"".join(
        [c async for c in drive.read_shard("bkt", "obj", DD1, offset=0, length=len(data), **args)]
    )
    assert whole == data
    part = b"".join(
        [c async for c in drive.read_shard("bkt", "obj", DD1, offset=4000, length=5000, **args)]
    )
    assert part == data[4000:9000]
    (path,) = shard_files(drive.root)
    flip_byte(path, 2 * (4096 + 16) + 16 + 7)  # inside the third chunk
    with pytest.raises(FileCorrupt):
        await drive.verify_shard("bkt", "obj", DD1, **args)
    received = []
    with pytest.raises(FileCorrupt):
        async for chunk in drive.read_shard("bkt", "obj", DD1, offset=0, length=len(data), **args):
            received.append(chunk)
    assert b"".join(received) == data[: 2 * 4096]  # good chunks before the bad one
    # A range that avoids the damaged chunk still reads.
    head = [c async for c in drive.read_shard("bkt", "obj", DD1, offset=0, length=4096, **args)]
    assert b"".join(head) == data[:4096]
