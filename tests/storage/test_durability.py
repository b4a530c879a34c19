"""Private and durable drives: file modes, and the syncs of the commit path, in order.

The sync tests record every ``fdatasync``, ``fsync``, ``rename``, ``replace`` and ``unlink``
the drive makes (each still runs: the recorder calls the real function and notes the path
behind the file descriptor), then check that the syncs a power cut needs come in the right
order around each rename. ``tests/cluster/test_private_durable.py`` checks the same on a real
node process with strace.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from storage_helpers import hex_id, payload

from storage.format import plan_format
from storage.local import LocalDrive
from storage.meta import ErasureInfo, ObjectMeta
from storage.testing import local_layer

CHUNK = 1000
UPLOAD = hex_id("durable upload")
DD_OLD = hex_id("old version")
DD_NEW = hex_id("new version")

Event = tuple[str, str]


@pytest.fixture
def syscalls(monkeypatch: pytest.MonkeyPatch) -> list[Event]:
    """Every sync, rename and unlink from now on, as ``(call, path or "src -> dst")``."""
    events: list[Event] = []

    def by_fd(name: str, real: Callable[[int], None]) -> Callable[[int], None]:
        def call(fd: int) -> None:
            path = os.readlink(f"/proc/self/fd/{fd}")
            real(fd)
            events.append((name, path))

        return call

    def by_path(name: str, real: Callable[..., None]) -> Callable[..., None]:
        def call(src: Any, dst: Any = None, *args: Any, **kwargs: Any) -> None:
            if dst is None:
                real(src, *args, **kwargs)
                events.append((name, os.fspath(src)))
            else:
                real(src, dst, *args, **kwargs)
                events.append((name, f"{os.fspath(src)} -> {os.fspath(dst)}"))

        return call

    monkeypatch.setattr(os, "fdatasync", by_fd("fdatasync", os.fdatasync))
    monkeypatch.setattr(os, "fsync", by_fd("fsync", os.fsync))
    monkeypatch.setattr(os, "rename", by_path("rename", os.rename))
    monkeypatch.setattr(os, "replace", by_path("replace", os.replace))
    monkeypatch.setattr(os, "unlink", by_path("unlink", os.unlink))
    return events


def in_order(events: list[Event], wanted: list[Event]) -> None:
    """Assert that ``wanted`` occur in ``events`` in this order (others may come between)."""
    position = 0
    for event in wanted:
        try:
            position = events.index(event, position) + 1
        except ValueError:
            shown = "\n  ".join(f"{call} {path}" for call, path in events)
            raise AssertionError(f"{event} missing or out of order in:\n  {shown}") from None


def meta(data_dir: str, size: int, inline: bytes | None = None) -> ObjectMeta:
    erasure = ErasureInfo(data=2, parity=2, block_size=2 * CHUNK, distribution=(0, 1, 2, 3))
    return ObjectMeta(size=size, etag="e", mod_time_ns=1, data_dir=data_dir, erasure=erasure,
                      inline=inline)  # fmt: skip


async def put_shard(drive: LocalDrive, data_dir: str, key: str = "a/obj") -> None:
    writer = await drive.create_shard(UPLOAD)
    data = payload(3 * CHUNK)
    for pos in range(0, len(data), CHUNK):
        await writer.write(data[pos : pos + CHUNK])
    await writer.commit()
    await drive.rename_data(UPLOAD, "bkt", key, meta(data_dir, 2 * len(data)))


@pytest.mark.asyncio
async def test_a_shard_put_syncs_every_step_before_the_next(
    tmp_path: Path, syscalls: list[Event]
) -> None:
    drive = await LocalDrive.open(str(tmp_path / "d"))
    assert drive.fsync  # durable unless asked otherwise
    await drive.make_volume("bkt")
    root, bkt, obj = drive.root, f"{drive.root}/bkt", f"{drive.root}/bkt/a/obj"
    upload = f"{root}/.minigrid.sys/tmp/{UPLOAD}"
    syscalls.clear()
    await put_shard(drive, DD_OLD)
    in_order(
        syscalls,
        [
            ("fdatasync", f"{upload}/data/shard"),  # the shard's bytes
            ("fsync", f"{upload}/data"),  # its entry, before the directory moves
            ("rename", f"{upload}/data -> {obj}/__mg.data.{DD_OLD}"),
            ("fsync", bkt),  # the new object directories' entries ...
            ("fsync", f"{bkt}/a"),
            ("fsync", obj),  # ... and the data dir's, before the metadata names it
            ("fdatasync", f"{upload}/new.meta"),
            ("replace", f"{upload}/new.meta -> {obj}/__mg.meta"),  # the commit point
            ("fsync", obj),
        ],
    )
    # Replacing the version: the object directory exists, and is synced around each rename.
    await drive.commit_rename(UPLOAD, "bkt", "a/obj")
    syscalls.clear()
    await put_shard(drive, DD_NEW)
    in_order(
        syscalls,
        [
            ("fdatasync", f"{upload}/data/shard"),
            ("rename", f"{upload}/data -> {obj}/__mg.data.{DD_NEW}"),
            ("fsync", obj),
            ("fdatasync", f"{upload}/new.meta"),
            ("replace", f"{upload}/new.meta -> {obj}/__mg.meta"),
            ("fsync", obj),
        ],
    )
    assert ("fsync", bkt) not in syscalls  # nothing changed there this time


@pytest.mark.asyncio
async def test_inline_objects_metadata_and_volume_changes_are_synced(
    tmp_path: Path, syscalls: list[Event]
) -> None:
    drive = await LocalDrive.open(str(tmp_path / "d"))
    root = drive.root
    obj = f"{root}/bkt/small"
    upload = f"{root}/.minigrid.sys/tmp/{UPLOAD}"
    fmt = plan_format([None] * 4, 4)[0]
    await drive.write_format(fmt)
    await drive.make_volume("bkt")
    tmp = next(path for call, path in syscalls if call == "fdatasync")
    assert tmp.startswith(f"{root}/.minigrid.sys/tmp/format-")
    in_order(
        syscalls,
        [
            ("fdatasync", tmp),
            ("replace", f"{tmp} -> {root}/format.mgp"),
            ("fsync", root),  # the format's entry
            ("fsync", root),  # the volume's
        ],
    )
    syscalls.clear()
    await drive.rename_data(UPLOAD, "bkt", "small", meta(DD_OLD, 5, inline=b"x" * 21))
    in_order(
        syscalls,
        [
            ("fsync", f"{root}/bkt"),  # the new object directory
            ("fdatasync", f"{upload}/new.meta"),  # the inline data is in here
            ("replace", f"{upload}/new.meta -> {obj}/__mg.meta"),
            ("fsync", obj),
        ],
    )
    syscalls.clear()
    await drive.write_metadata("bkt", "small", meta(DD_OLD, 5, inline=b"y" * 21))
    assert [call for call, _ in syscalls] == ["fdatasync", "replace", "fsync"]
    assert syscalls[-1] == ("fsync", obj)
    syscalls.clear()
    await drive.delete_object("bkt", "small")
    in_order(syscalls, [("unlink", f"{obj}/__mg.meta"), ("fsync", obj)])
    syscalls.clear()
    await drive.delete_volume("bkt")
    assert syscalls[0][0] == "rename" and syscalls[1] == ("fsync", root)


@pytest.mark.asyncio
async def test_fsync_off_makes_no_sync_at_all(tmp_path: Path, syscalls: list[Event]) -> None:
    drive = await LocalDrive.open(str(tmp_path / "d"), fsync=False)
    await drive.write_format(plan_format([None] * 4, 4)[0])
    await drive.make_volume("bkt")
    await put_shard(drive, DD_OLD)
    await drive.commit_rename(UPLOAD, "bkt", "a/obj")
    await drive.rename_data(UPLOAD, "bkt", "small", meta(DD_NEW, 5, inline=b"x" * 21))
    await drive.delete_object("bkt", "a/obj")
    assert [e for e in syscalls if e[0] in ("fsync", "fdatasync")] == []
    assert any(call == "replace" for call, _ in syscalls)  # the recorder did see the work


# --- modes ------------------------------------------------------------------------------------


def modes(root: Path) -> Iterator[tuple[str, bool, int]]:
    """``(path, is_dir, permission bits)`` of everything under ``root``, ``root`` included."""
    yield str(root), True, stat.S_IMODE(root.stat().st_mode)
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            yield path, stat.S_ISDIR(info.st_mode), stat.S_IMODE(info.st_mode)


@pytest.mark.asyncio
async def test_drives_are_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o022)  # the usual default, which would give 0644 files
    try:
        layer, drives = await local_layer(str(tmp_path / "drives"), 4)
        await layer.make_bucket("bkt")
        await layer.put_object("bkt", "deep/er/big", payload(3 * (1 << 20) + 5))
        await layer.put_object("bkt", "small", b"inline bytes")
        await layer.put_object("bkt", "folder/", b"")
        writer = await drives[0].create_shard(UPLOAD)  # a write in progress, too
        await writer.write(b"partial")
    finally:
        os.umask(previous)
    found = [entry for drive in drives for entry in modes(Path(drive.root))]
    assert sum(1 for _, is_dir, _ in found if not is_dir) > 4 * 5  # shards, metas, formats
    wrong = [(path, oct(mode)) for path, is_dir, mode in found
             if mode != (0o700 if is_dir else 0o600)]  # fmt: skip
    assert wrong == []
    await writer.abort()
