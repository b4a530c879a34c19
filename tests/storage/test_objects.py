"""The object layer: buckets, put/get/head/delete and listing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from storage_helpers import MIB, chunks_of, payload, read_all, shard_files

from storage.errors import (
    BucketExists,
    BucketNotEmpty,
    BucketNotFound,
    IncompleteBody,
    InvalidName,
    InvalidRange,
    ObjectNotFound,
)
from storage.objects import ObjectLayer
from storage.testing import local_layer, open_local_drives


@pytest.mark.asyncio
async def test_buckets(tmp_path: Path) -> None:
    layer, _ = await local_layer(str(tmp_path), 4)
    await layer.make_bucket("one")
    await layer.make_bucket("two")
    with pytest.raises(BucketExists):
        await layer.make_bucket("one")
    with pytest.raises(InvalidName):
        await layer.make_bucket("Bad_Name")
    assert [b.name for b in await layer.list_buckets()] == ["one", "two"]
    await layer.put_object("one", "k", b"v")
    with pytest.raises(BucketNotEmpty):
        await layer.delete_bucket("one")
    await layer.delete_object("one", "k")
    await layer.delete_bucket("one")
    with pytest.raises(BucketNotFound):
        await layer.head_bucket("one")
    with pytest.raises(BucketNotFound):
        await layer.put_object("one", "k", b"v")
    assert [b.name for b in await layer.list_buckets()] == ["two"]


@pytest.mark.asyncio
async def test_put_get_head_delete(tmp_path: Path) -> None:
    layer, drives = await local_layer(str(tmp_path), 6)
    await layer.make_bucket("bkt")
    data = payload(3 * MIB + 12345, seed=3)
    info = await layer.put_object(
        "bkt",
        "dir/obj",
        chunks_of(data, 100_000),
        size=len(data),
        content_type="text/plain",
        user_meta={"colour": "blue"},
    )
    assert info.etag == hashlib.md5(data).hexdigest()
    head = await layer.head_object("bkt", "dir/obj")
    assert (head.size, head.etag, head.content_type, head.user_meta) == (
        len(data),
        info.etag,
        "text/plain",
        {"colour": "blue"},
    )
    assert await read_all(layer, "bkt", "dir/obj") == data
    assert await read_all(layer, "bkt", "dir/obj", MIB - 5, MIB + 10) == data[MIB - 5 : 2 * MIB + 5]
    assert await read_all(layer, "bkt", "dir/obj", len(data) - 3, 100) == data[-3:]
    assert await read_all(layer, "bkt", "dir/obj", len(data)) == b""
    with pytest.raises(InvalidRange):
        await layer.get_object("bkt", "dir/obj", len(data) + 1)
    # Streamed (not inline): every drive holds a shard file.
    assert all(len(shard_files(d.root)) == 1 for d in drives)
    await layer.delete_object("bkt", "dir/obj")
    with pytest.raises(ObjectNotFound):
        await layer.head_object("bkt", "dir/obj")
    with pytest.raises(ObjectNotFound):
        await layer.delete_object("bkt", "dir/obj")
    assert all(shard_files(d.root) == [] for d in drives)


@pytest.mark.asyncio
async def test_small_objects_are_inline(tmp_path: Path) -> None:
    layer, drives = await local_layer(str(tmp_path), 4)
    await layer.make_bucket("bkt")
    data = payload(200_000, seed=4)  # 100 000 bytes per shard with k=2
    await layer.put_object("bkt", "small", data)
    assert all(shard_files(d.root) == [] for d in drives)
    assert (await drives[0].read_metadata("bkt", "small")).inline is not None
    assert await read_all(layer, "bkt", "small", 5, 10) == data[5:15]
    await layer.put_object("bkt", "empty", b"")
    assert await read_all(layer, "bkt", "empty") == b""
    assert (await layer.head_object("bkt", "empty")).etag == hashlib.md5(b"").hexdigest()


@pytest.mark.asyncio
async def test_overwrite_replaces_and_cleans_old_data(tmp_path: Path) -> None:
    layer, drives = await local_layer(str(tmp_path), 4)
    await layer.make_bucket("bkt")
    first, second = payload(2 * MIB, seed=5), payload(MIB + 1, seed=6)
    await layer.put_object("bkt", "k", first)
    await layer.put_object("bkt", "k", second)
    assert await read_all(layer, "bkt", "k") == second
    assert all(len(shard_files(d.root)) == 1 for d in drives)


@pytest.mark.asyncio
async def test_size_mismatch_stores_nothing(tmp_path: Path) -> None:
    layer, drives = await local_layer(str(tmp_path), 4)
    await layer.make_bucket("bkt")
    with pytest.raises(IncompleteBody):
        await layer.put_object("bkt", "k", chunks_of(payload(2 * MIB)), size=3 * MIB)
    with pytest.raises(ObjectNotFound):
        await layer.head_object("bkt", "k")
    assert all(shard_files(d.root) == [] for d in drives)


def _reference(keys: list[str], prefix: str, delimiter: str) -> list[str]:
    """Expected listing entries: keys under prefix, collapsed at the delimiter."""
    out: list[str] = []
    for key in sorted(keys):
        if not key.startswith(prefix):
            continue
        cut = key.find(delimiter, len(prefix)) if delimiter else -1
        entry = key[: cut + len(delimiter)] if cut >= 0 else key
        if not out or out[-1] != entry:
            out.append(entry)
    return out


KEYS = [
    "a",
    "a-b",
    "a/",
    "a/b",
    "a/b/c",
    "a/b/d",
    "a.txt",
    "a0",
    "b/x/y",
    "b/x/z",
    "b/y",
    "c",
    "ph/1",
    "ph/2",
    "ph/3/4",
    "zz",
    "ü/é",
    "x-1/y",
    "x/1",
]


@pytest.mark.asyncio
@pytest.mark.parametrize("max_keys", [1, 2, 3, 1000])
async def test_listing_pages_match_reference(tmp_path: Path, max_keys: int) -> None:
    drives = await open_local_drives(str(tmp_path), 8)
    layer = await ObjectLayer.open(drives, 4)  # two sets of four
    await layer.make_bucket("bkt")
    for key in KEYS:
        await layer.put_object("bkt", key, key.encode())
    assert {layer.set_for("bkt", k).index for k in KEYS} == {0, 1}
    for prefix, delimiter in [
        ("", ""),
        ("", "/"),
        ("a", "/"),
        ("a/", "/"),
        ("b/", ""),
        ("ph/", "/"),
        ("", "-"),
        ("nothing", ""),
    ]:
        seen: list[str] = []
        token = None
        while True:
            page = await layer.list_objects(
                "bkt", prefix, delimiter, max_keys=max_keys, continuation_token=token
            )
            entries = sorted([o.key for o in page.objects] + page.prefixes)
            assert len(entries) <= max_keys
            seen.extend(entries)
            if not page.is_truncated:
                break
            token = page.next_token
        assert seen == _reference(KEYS, prefix, delimiter), (prefix, delimiter)
    after = await layer.list_objects("bkt", start_after="ph/2")
    assert [o.key for o in after.objects] == [k for k in sorted(KEYS) if k > "ph/2"]
    objects = (await layer.list_objects("bkt", prefix="a.")).objects
    assert [(o.key, o.size, o.etag) for o in objects] == [
        ("a.txt", 5, hashlib.md5(b"a.txt").hexdigest())
    ]


@pytest.mark.asyncio
async def test_listing_needs_quorum_per_key(tmp_path: Path) -> None:
    layer, drives = await local_layer(str(tmp_path), 4)
    await layer.make_bucket("bkt")
    await layer.put_object("bkt", "real", b"1")
    # A stray copy on one drive (say, a delete it missed) is not listed.
    await drives[0].write_metadata("bkt", "stray", await drives[0].read_metadata("bkt", "real"))
    assert [o.key for o in (await layer.list_objects("bkt")).objects] == ["real"]
    assert (Path(drives[0].root) / "bkt" / "stray").is_dir()
