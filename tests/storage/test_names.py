"""Name validation and path safety."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from storage.errors import InvalidName, StorageError
from storage.local import LocalDrive
from storage.names import object_location, safe_join, validate_bucket, validate_object


@pytest.mark.parametrize("name", ["abc", "my-bucket", "a.b.c", "x" * 63, "b1-2.3"])
def test_good_bucket_names(name: str) -> None:
    assert validate_bucket(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "ab",
        "x" * 64,
        "Upper",
        "under_score",
        "-start",
        "end-",
        ".dot",
        "a..b",
        "a.-b",
        "192.168.1.1",
        "xn--punycode",
        "name-s3alias",
        "../etc",
        "a/b",
        "",
        "with space",
    ],
)
def test_bad_bucket_names(name: str) -> None:
    with pytest.raises(InvalidName):
        validate_bucket(name)


@pytest.mark.parametrize("key", ["a", "a/b/c", "dir/", "ünïcode/ключ", "a.b", "...", "x" * 255])
def test_good_object_keys(key: str) -> None:
    assert validate_object(key) == key


@pytest.mark.parametrize(
    "key",
    [
        "",
        "..",
        ".",
        "../escape",
        "a/../../escape",
        "a/./b",
        "/absolute",
        "a//b",
        "a\x00b",
        "a\\..\\b",
        "x" * 256,
        "a/" * 600,
        "k/__mg.meta",
        "__mg.data.x/y",
    ],
)
def test_bad_object_keys(key: str) -> None:
    with pytest.raises(InvalidName):
        validate_object(key)


def test_object_location_keeps_folder_markers_apart() -> None:
    assert object_location("a/b") == ("a/b", "__mg.meta")
    assert object_location("a/b/") == ("a/b", "__mg.dirmeta")


def test_safe_join_refuses_escape(tmp_path: Path) -> None:
    root = str(tmp_path / "root")
    assert safe_join(root, "a", "b") == os.path.join(root, "a", "b")
    for bad in ("..", "../x", "/etc/passwd", "a/../../x"):
        with pytest.raises(InvalidName):
            safe_join(root, bad)


@pytest.mark.asyncio
async def test_drive_rejects_traversal_and_touches_nothing(tmp_path: Path) -> None:
    drive = await LocalDrive.open(str(tmp_path / "drive"))
    await drive.make_volume("bkt")
    before = sorted(os.listdir(tmp_path))
    for key in ("../../outside", "/etc/passwd", "a/../../../x", "nul\x00byte"):
        with pytest.raises(InvalidName):
            await drive.read_metadata("bkt", key)
        with pytest.raises(InvalidName):
            await drive.delete_object("bkt", key)
    for volume in ("..", "../drive2", "/tmp", "BAD"):
        with pytest.raises(InvalidName):
            await drive.make_volume(volume)
    with pytest.raises(StorageError):
        await drive.create_shard("../../escape")
    assert sorted(os.listdir(tmp_path)) == before
