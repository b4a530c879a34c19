"""A hostile grid peer sends bad names to every drive handler; nothing outside the drive changes.

Two managers on loopback form a real grid: node 1 serves a LocalDrive (``/d0``), node 0 plays
the hostile peer and sends **raw payloads** through the connection, bypassing RemoteDrive's own
checks. Around the drive sit a sentinel tree (``victim/``, the directory a traversal would
delete, and ``outside/``); the whole temporary directory is snapshotted (every entry's type,
mode, size, mtime and content hash) before and after each request.

The test is parametrised over :data:`storage.drive_service.DRIVE_HANDLERS`: a handler added
there without a row in :data:`EXPECTED_FIELDS` fails here, and so does a field without hostile
values in :data:`HOSTILE`.

Then the second line of defence: the same names given to LocalDrive directly, and traversals
planted in the files an upload reads back. Last, two property tests: metadata with any field
bent decodes to a checked record or raises FileCorrupt, and any request is checked or refused
with a storage error, never anything else.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import logging
import os
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from minigrid import HandlerID, Manager, RemoteError
from minigrid.connection import Connection
from minigrid.testing import local_grid
from storage.drive import Drive
from storage.drive_service import DRIVE_HANDLERS, serve_drives
from storage.drive_wire import SCHEMA, check_fields, decode_error, pack
from storage.errors import (
    FileCorrupt,
    FormatMismatch,
    InvalidArgument,
    InvalidName,
    StorageError,
)
from storage.format import plan_format
from storage.local import LocalDrive
from storage.meta import META_MAGIC, ErasureInfo, ObjectMeta, PartInfo, UploadRecord, decode_meta
from tests.storage.storage_helpers import hex_id

CHUNK = 1000
U64_MAX = (1 << 64) - 1  # the largest integer msgpack carries
SHARD = b"s" * (3 * CHUNK)
UP_GOOD = hex_id("upload in progress")
UP_DONE = hex_id("upload renamed")
DD_GOOD = hex_id("data dir of obj")
DD_STAGED = hex_id("data dir staged")
MPU = hex_id("multipart upload")
DD_PART = hex_id("data dir of part 1")

#: Every name a path could be built from, bent every way we know. Relative traversals are
#: aimed at ``victim/``, a sibling of the drive, from the depth each name is used at.
TRAVERSALS: tuple[str, ...] = (
    "..",
    "../",
    ".",
    "../victim",
    "../../victim",
    "../../../victim",
    "x/../../../../victim",
    "/",
    "/tmp/escape",
    "/etc/passwd",
    "\x00",
    "a\x00b",
    "a" * 5000,
    "..\\victim",
    "a\\b",
    "",
)
NOT_UUID_HEX: tuple[str, ...] = (
    "dd1",
    "0123abcd",
    hex_id("x").upper(),
    hex_id("x")[:31],
    hex_id("x") + "0",
    "12345678-1234-5678-1234-567812345678",
    "g" * 32,
)
LIST_TEXT: tuple[object, ...] = ("a\x00b", "p" * 1025, 7, None)
NOT_STRINGS: tuple[object, ...] = (7, None, b"bkt", ["bkt"])

#: Hostile values for every request field, by field name.
HOSTILE: dict[str, tuple[object, ...]] = {
    "vol": (*TRAVERSALS, "BAD", ".minigrid.sys", *NOT_STRINGS),
    "key": (*TRAVERSALS, "__mg.meta", "a/__mg.data.x", "a//b", *NOT_STRINGS),
    "upload": (*TRAVERSALS, *NOT_UUID_HEX, *NOT_STRINGS),
    "ddir": (*TRAVERSALS, *NOT_UUID_HEX, *NOT_STRINGS),
    "prefix": LIST_TEXT,
    "delim": LIST_TEXT,
    "after": LIST_TEXT,
    "limit": (0, -1, True, "10", 1.5),
    "chunk": (0, -1, 1 << 40, True, "1", 1.5),
    "size": (-1, U64_MAX, False, "3000"),
    "off": (-1, U64_MAX, None),
    "len": (-1, U64_MAX, None),
    "force": ("yes", 1, None),
    "deep": ("yes", 1, None),
    "mpu": (*TRAVERSALS, *NOT_UUID_HEX, *NOT_STRINGS),
    "part": (-1, 10_001, True, "1", 1.5, None),
}


def _bent(base: dict[str, Any], **changes: object) -> dict[str, Any]:
    bent = copy.deepcopy(base)
    bent.update(changes)
    return bent


#: The fields this test expects each handler to take. A new handler, or a new field, must be
#: added here (with hostile values above) before this test passes.
EXPECTED_FIELDS: dict[HandlerID, tuple[str, ...]] = {
    HandlerID.DISK_INFO: (),
    HandlerID.READ_FORMAT: (),
    HandlerID.WRITE_FORMAT: ("format",),
    HandlerID.MAKE_VOLUME: ("vol",),
    HandlerID.LIST_VOLUMES: (),
    HandlerID.STAT_VOLUME: ("vol",),
    HandlerID.DELETE_VOLUME: ("vol", "force"),
    HandlerID.READ_METADATA: ("vol", "key"),
    HandlerID.WRITE_METADATA: ("vol", "key", "meta"),
    HandlerID.DELETE_OBJECT: ("vol", "key"),
    HandlerID.RENAME_DATA: ("upload", "vol", "key", "meta"),
    HandlerID.COMMIT_RENAME: ("upload", "vol", "key"),
    HandlerID.UNDO_RENAME: ("upload", "vol", "key"),
    HandlerID.VERIFY_SHARD: ("vol", "key", "ddir", "chunk", "size", "part", "deep"),
    HandlerID.LIST_OBJECTS_PAGE: ("vol", "prefix", "delim", "after", "limit"),
    HandlerID.READ_SHARD: ("vol", "key", "ddir", "chunk", "size", "part", "off", "len"),
    HandlerID.CREATE_SHARD: ("upload", "part"),
    HandlerID.WRITE_UPLOAD: ("vol", "record"),
    HandlerID.READ_UPLOAD: ("vol", "mpu"),
    HandlerID.LIST_UPLOADS: ("vol",),
    HandlerID.DELETE_UPLOAD: ("vol", "mpu"),
    HandlerID.COMMIT_PART: ("upload", "vol", "mpu", "pinfo"),
    HandlerID.LIST_PARTS: ("vol", "mpu"),
    HandlerID.ASSEMBLE_PARTS: ("upload", "vol", "mpu", "plist"),
}


def good_meta(data_dir: str = DD_STAGED) -> ObjectMeta:
    erasure = ErasureInfo(data=2, parity=2, block_size=2 * CHUNK, distribution=(0, 1, 2, 3))
    return ObjectMeta(
        size=2 * len(SHARD), etag="e", mod_time_ns=1, data_dir=data_dir, erasure=erasure
    )


GOOD_FORMAT = plan_format([None] * 4, 4)[0]


def good_record() -> UploadRecord:
    return UploadRecord("obj", MPU, 1, good_meta())


def good_part() -> PartInfo:
    return PartInfo(1, len(SHARD), "e", 1, DD_PART)


#: A valid request field by field: the baseline each hostile case changes one field of.
VALID: dict[str, object] = {
    "vol": "bkt",
    "key": "obj",
    "upload": UP_GOOD,
    "ddir": DD_GOOD,
    "prefix": "",
    "delim": "/",
    "after": "",
    "limit": 10,
    "chunk": CHUNK,
    "size": len(SHARD),
    "off": 0,
    "len": 10,
    "force": True,
    "deep": True,
    "meta": good_meta().to_dict(),
    "format": GOOD_FORMAT.to_dict(),
    "mpu": MPU,
    "part": 0,
    "record": good_record().to_dict(),
    "pinfo": good_part().to_dict(),
    "plist": [[1, DD_PART]],
}

_RECORD = good_record().to_dict()
_PART = good_part().to_dict()
HOSTILE["record"] = (
    "not a map",
    _bent(_RECORD, key="../../victim"),
    _bent(_RECORD, key="__mg.meta"),
    _bent(_RECORD, id="../victim"),
    _bent(_RECORD, init=-1),
    _bent(_RECORD, meta=_bent(_RECORD["meta"], ddir="../../victim")),
    _bent(_RECORD, meta="x"),
    {k: v for k, v in _RECORD.items() if k != "id"},
)
HOSTILE["pinfo"] = (
    "not a map",
    _bent(_PART, ddir="../../victim"),
    _bent(_PART, n=0),
    _bent(_PART, n=10_001),
    _bent(_PART, size=-1),
    _bent(_PART, size=U64_MAX),
    _bent(_PART, cks={"md5": "x"}),
    _bent(_PART, etag="e" * 100_000),
    {k: v for k, v in _PART.items() if k != "ddir"},
)
HOSTILE["plist"] = (
    [],
    "1",
    [[1, "../victim"]],
    [[1, "x/../../../../victim"]],
    [[0, DD_PART]],
    [[2, DD_PART], [1, DD_PART]],
    [[1]],
    [[True, DD_PART]],
    [[n, DD_PART] for n in range(1, 10_003)],
)


def _meta_cases() -> Iterator[tuple[str, Callable[[dict[str, Any]], None]]]:
    """Ways to bend object metadata: its data dir, and every size a reader would trust."""
    for value in (*TRAVERSALS, *NOT_UUID_HEX, None, 5):
        yield f"ddir={value!r:.40}", lambda m, v=value: m.__setitem__("ddir", v)
    bent: list[tuple[str, str, object]] = [
        ("", "size", -1),
        ("", "size", U64_MAX),
        ("", "size", 1.5),
        ("", "mtime", -1),
        ("", "mtime", U64_MAX),
        ("", "etag", "e" * 100_000),
        ("", "ctype", None),
        ("", "umeta", ["not", "a", "map"]),
        ("", "umeta", {"k": 1}),
        ("", "inline", "text, not bytes"),
        ("", "inline", b"x" * 20_000),
        ("", "v", 2),
        ("", "ec", "not a map"),
        ("ec", "bs", 1 << 40),
        ("ec", "bs", 0),
        ("ec", "k", 10**9),
        ("ec", "k", 0),
        ("ec", "m", -1),
        ("ec", "m", 1000),
        ("ec", "idx", 99),
        ("ec", "dist", list(range(100_000))),
        ("ec", "dist", [0, 0, 0, 0]),
        ("ec", "dist", [0, 1, 2]),
        ("ec", "dist", "0123"),
        ("ec", "k", True),
    ]
    for where, name, value in bent:
        label = f"{where + '.' if where else ''}{name}={value!r:.40}"

        def mutate(
            m: dict[str, Any], where: str = where, name: str = name, v: object = value
        ) -> None:
            (m[where] if where else m)[name] = v

        yield label, mutate
    for name in ("size", "ddir", "ec", "umeta"):
        yield f"without {name}", lambda m, n=name: m.pop(n)


def _format_cases() -> Iterator[tuple[str, Callable[[dict[str, Any]], None]]]:
    for value in (*TRAVERSALS, "not-a-uuid", 5):
        yield f"drive={value!r:.40}", lambda f, v=value: f.__setitem__("drive", v)
    for value in ("", "a\x00b", "d" * 5000, 5):
        yield f"deployment={value!r:.40}", lambda f, v=value: f.__setitem__("deployment", v)
    yield "version 2", lambda f: f.__setitem__("v", 2)
    yield "sets not a list", lambda f: f.__setitem__("sets", "abc")
    yield "2000 empty sets", lambda f: f.__setitem__("sets", [[] for _ in range(2000)])
    yield "a set of 100 drives", lambda f: f.__setitem__("sets", [[f["drive"]] * 100])
    yield "a set of 2 drives", lambda f: f.__setitem__("sets", [[f["drive"], f["drive"]]])
    yield (
        "drive not in sets",
        lambda f: f.__setitem__("drive", hex_id("stray")[:8] + f["drive"][8:]),
    )
    yield "bad id in sets", lambda f: f["sets"][0].__setitem__(1, "../victim")
    yield "extra key", lambda f: f.__setitem__("extra", 1)


def hostile_requests(handler: HandlerID) -> Iterator[tuple[str, bytes]]:
    """``(label, raw payload)`` for every way this test bends a request to ``handler``."""
    fields = EXPECTED_FIELDS[handler]
    assert SCHEMA[handler] == fields, f"{handler.name} takes new fields"
    baseline = {name: VALID[name] for name in fields}
    for name in fields:
        if name == "meta":
            cases = _meta_cases()
        elif name == "format":
            cases = _format_cases()
        else:
            cases = (
                (f"{value!r:.40}", lambda r, n=name, v=value: r.__setitem__(n, v))
                for value in HOSTILE[name]
            )
        for label, mutate in cases:
            request = copy.deepcopy(baseline)
            mutate(request[name] if name in ("meta", "format") else request)
            yield f"{name}: {label}", pack(request)
        missing = dict(baseline)
        del missing[name]
        yield f"{name} missing", pack(missing)
    # Fields a handler does not take are refused too, whatever they hold.
    for name, value in (("vol", "../victim"), ("ddir", "x/../../../../victim"), ("zzz", 1)):
        if name not in fields:
            yield f"unexpected {name}", pack({**baseline, name: value})
    yield "not a map", pack(["../victim"])
    yield "not msgpack", b"\xc1\xc1"


# --- the sandbox ----------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Every entry under ``root``: kind, mode, size, mtime and (for files) a content hash."""
    entries: dict[str, tuple[object, ...]] = {}
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            digest = ""
            if stat.S_ISREG(info.st_mode):
                digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            entries[os.path.relpath(path, root)] = (
                stat.S_IFMT(info.st_mode),
                stat.S_IMODE(info.st_mode),
                info.st_size if stat.S_ISREG(info.st_mode) else 0,
                info.st_mtime_ns,
                digest,
            )
    return entries


def plant_sentinels(sandbox: Path) -> None:
    """The directories a traversal would write into or delete, with something in them."""
    for folder in ("victim", "victim/sub", "outside"):
        (sandbox / folder).mkdir(parents=True)
    (sandbox / "victim" / "keep.txt").write_bytes(b"a traversal must not delete me")
    (sandbox / "victim" / "sub" / "deep.bin").write_bytes(os.urandom(64))
    (sandbox / "outside" / "note.txt").write_text("nothing may appear next to me")


async def stage_drive(drive: LocalDrive) -> None:
    """A formatted drive with an object, one upload in progress and one renamed, not committed."""
    await drive.write_format(GOOD_FORMAT)
    await drive.make_volume("bkt")
    for upload, data_dir in ((UP_DONE, DD_GOOD), (UP_GOOD, DD_STAGED)):
        writer = await drive.create_shard(upload)
        for pos in range(0, len(SHARD), CHUNK):
            await writer.write(SHARD[pos : pos + CHUNK])
        await writer.commit()
        if upload == UP_DONE:
            await drive.rename_data(upload, "bkt", "obj", good_meta(data_dir))
    # A multipart upload in progress, with one part.
    await drive.write_upload("bkt", good_record())
    part_write = hex_id("part write")
    writer = await drive.create_shard(part_write)
    await writer.write(SHARD)
    await writer.commit()
    await drive.commit_part(part_write, "bkt", MPU, good_part())


@dataclass
class Sandbox:
    root: Path
    conn: Connection  # node 0's connection to node 1, which serves /d0


@contextlib.asynccontextmanager
async def hostile_peer(tmp_path: Path) -> AsyncIterator[Sandbox]:
    sandbox = tmp_path / "sandbox"
    plant_sentinels(sandbox)
    drive = await LocalDrive.open(str(sandbox / "drive"), fsync=False)
    await stage_drive(drive)
    served: Iterator[dict[str, Drive]] = iter([{}, {"/d0": drive}])

    def register(manager: Manager) -> None:
        serve_drives(manager, next(served))

    async with local_grid(2, register=register) as grid:
        yield Sandbox(tmp_path, grid.managers[0].connection(grid.hosts[1]))


async def send_raw(conn: Connection, handler: HandlerID, payload: bytes) -> StorageError:
    """Send ``payload`` to ``handler`` as a call or a stream; return the storage error it got."""
    spec = DRIVE_HANDLERS[handler]
    try:
        if spec.call is not None:
            reply = await conn.call(handler, payload, subroute="/d0", timeout=10)
            raise AssertionError(f"{handler.name} accepted it and answered {reply[:60]!r}")
        async with conn.stream(handler, payload, subroute="/d0") as stream:
            item = await stream.recv()
            raise AssertionError(f"{handler.name} accepted it and streamed {item!r:.60}")
    except RemoteError as exc:
        return decode_error(exc.message, "/d0")


@pytest.mark.asyncio
@pytest.mark.parametrize("handler", list(DRIVE_HANDLERS), ids=lambda h: h.name)
async def test_every_handler_refuses_bad_names_and_nothing_outside_changes(
    tmp_path: Path, handler: HandlerID, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="storage.drive_service")
    cases = list(hostile_requests(handler))
    assert len(cases) >= 4
    async with hostile_peer(tmp_path) as box:
        for label, payload in cases:
            before = snapshot(box.root)
            error = await send_raw(box.conn, handler, payload)
            assert isinstance(error, InvalidName | InvalidArgument | FormatMismatch), (
                f"{handler.name} {label}: {type(error).__name__}: {error}"
            )
            assert handler.name in str(error), f"{label}: the error does not say where: {error}"
            field = label.split(":")[0].split()[-1]
            if field in SCHEMA[handler]:
                assert repr(field) in str(error), f"{label}: the error does not name it: {error}"
            assert snapshot(box.root) == before, f"{handler.name} {label} changed the disk"
    assert not [r for r in caplog.records if "unexpectedly" in r.getMessage()], (
        "a bad request reached a drive as a bug (a logged traceback)"
    )


@pytest.mark.asyncio
async def test_the_baseline_requests_are_served(tmp_path: Path) -> None:
    """The valid requests the hostile cases start from do work, so each refusal above is
    the bent field's doing and not a broken baseline."""
    async with hostile_peer(tmp_path) as box:
        conn = box.conn
        page = msgpack.unpackb(
            await conn.call(
                HandlerID.LIST_OBJECTS_PAGE,
                pack({name: VALID[name] for name in EXPECTED_FIELDS[HandlerID.LIST_OBJECTS_PAGE]}),
                subroute="/d0",
            )
        )
        assert [entry["name"] for entry in page["entries"]] == ["obj"]
        fields = EXPECTED_FIELDS[HandlerID.READ_SHARD]
        request = pack({name: VALID[name] for name in fields})
        async with conn.stream(HandlerID.READ_SHARD, request, subroute="/d0") as stream:
            assert await stream.recv() == SHARD[:10]
        await conn.call(
            HandlerID.RENAME_DATA,
            pack({name: VALID[name] for name in EXPECTED_FIELDS[HandlerID.RENAME_DATA]}),
            subroute="/d0",
        )
        assert (box.root / "sandbox/drive/bkt/obj" / f"__mg.data.{DD_STAGED}/shard").exists()
        await conn.call(
            HandlerID.DELETE_VOLUME,
            pack({name: VALID[name] for name in EXPECTED_FIELDS[HandlerID.DELETE_VOLUME]}),
            subroute="/d0",
        )
        assert not (box.root / "sandbox/drive/bkt").exists()
        assert (box.root / "sandbox/victim/keep.txt").exists()


# --- LocalDrive on its own: the second line of defence ----------------------------------------

LocalCall = Callable[[LocalDrive, Any], Awaitable[object]]


async def _read_all(chunks: AsyncIterator[bytes]) -> None:
    async for _chunk in chunks:
        pass


def _shard_read(drive: LocalDrive, vol: str, key: str, ddir: str) -> Awaitable[None]:
    return _read_all(
        drive.read_shard(vol, key, ddir, chunk_size=CHUNK, shard_size=len(SHARD), offset=0,
                         length=10)
    )  # fmt: skip


def _part_read(drive: LocalDrive, part: Any) -> Awaitable[None]:
    return _read_all(
        drive.read_shard("bkt", "obj", DD_GOOD, chunk_size=CHUNK, shard_size=len(SHARD),
                         offset=0, length=10, part=part)
    )  # fmt: skip


def _with_ddir(value: Any) -> ObjectMeta:
    return dataclasses.replace(good_meta(), data_dir=value)


#: Every LocalDrive method that takes a name, once per name it takes (the others valid).
LOCAL_CALLS: dict[str, tuple[LocalCall, tuple[object, ...]]] = {
    "make_volume(vol)": (lambda d, v: d.make_volume(v), HOSTILE["vol"]),
    "stat_volume(vol)": (lambda d, v: d.stat_volume(v), HOSTILE["vol"]),
    "delete_volume(vol)": (lambda d, v: d.delete_volume(v, True), HOSTILE["vol"]),
    "read_metadata(vol)": (lambda d, v: d.read_metadata(v, "obj"), HOSTILE["vol"]),
    "read_metadata(key)": (lambda d, v: d.read_metadata("bkt", v), HOSTILE["key"]),
    "write_metadata(key)": (lambda d, v: d.write_metadata("bkt", v, good_meta()), HOSTILE["key"]),
    "write_metadata(meta.ddir)": (
        lambda d, v: d.write_metadata("bkt", "obj", _with_ddir(v)),
        HOSTILE["ddir"],
    ),
    "delete_object(key)": (lambda d, v: d.delete_object("bkt", v), HOSTILE["key"]),
    "create_shard(upload)": (lambda d, v: d.create_shard(v), HOSTILE["upload"]),
    "rename_data(upload)": (
        lambda d, v: d.rename_data(v, "bkt", "obj", good_meta()),
        HOSTILE["upload"],
    ),
    "rename_data(key)": (
        lambda d, v: d.rename_data(UP_GOOD, "bkt", v, good_meta()),
        HOSTILE["key"],
    ),
    "rename_data(meta.ddir)": (
        lambda d, v: d.rename_data(UP_GOOD, "bkt", "obj", _with_ddir(v)),
        HOSTILE["ddir"],
    ),
    "commit_rename(upload)": (lambda d, v: d.commit_rename(v, "bkt", "obj"), HOSTILE["upload"]),
    "commit_rename(key)": (lambda d, v: d.commit_rename(UP_DONE, "bkt", v), HOSTILE["key"]),
    "undo_rename(upload)": (lambda d, v: d.undo_rename(v, "bkt", "obj"), HOSTILE["upload"]),
    "undo_rename(vol)": (lambda d, v: d.undo_rename(UP_DONE, v, "obj"), HOSTILE["vol"]),
    "read_shard(ddir)": (lambda d, v: _shard_read(d, "bkt", "obj", v), HOSTILE["ddir"]),
    "read_shard(key)": (lambda d, v: _shard_read(d, "bkt", v, DD_GOOD), HOSTILE["key"]),
    "verify_shard(ddir)": (
        lambda d, v: d.verify_shard("bkt", "obj", v, chunk_size=CHUNK, shard_size=len(SHARD)),
        HOSTILE["ddir"],
    ),
    "list_objects_page(vol)": (lambda d, v: d.list_objects_page(v, "", "", "", 10), HOSTILE["vol"]),
    "list_objects_page(prefix)": (
        lambda d, v: d.list_objects_page("bkt", v, "", "", 10),
        HOSTILE["prefix"],
    ),
    "create_shard(part)": (lambda d, v: d.create_shard(UP_GOOD, v), HOSTILE["part"]),
    "read_shard(part)": (lambda d, v: _part_read(d, v), HOSTILE["part"]),
    "read_upload(mpu)": (lambda d, v: d.read_upload("bkt", v), HOSTILE["mpu"]),
    "read_upload(vol)": (lambda d, v: d.read_upload(v, MPU), HOSTILE["vol"]),
    "list_uploads(vol)": (lambda d, v: d.list_uploads(v), HOSTILE["vol"]),
    "delete_upload(mpu)": (lambda d, v: d.delete_upload("bkt", v), HOSTILE["mpu"]),
    "write_upload(record.key)": (
        lambda d, v: d.write_upload("bkt", dataclasses.replace(good_record(), key=v)),
        HOSTILE["key"],
    ),
    "write_upload(record.id)": (
        lambda d, v: d.write_upload("bkt", dataclasses.replace(good_record(), upload_id=v)),
        HOSTILE["mpu"],
    ),
    "commit_part(mpu)": (
        lambda d, v: d.commit_part(UP_GOOD, "bkt", v, good_part()),
        HOSTILE["mpu"],
    ),
    "commit_part(pinfo.ddir)": (
        lambda d, v: d.commit_part(
            UP_GOOD, "bkt", MPU, dataclasses.replace(good_part(), data_dir=v)
        ),
        HOSTILE["ddir"],
    ),
    "list_parts(mpu)": (lambda d, v: d.list_parts("bkt", v), HOSTILE["mpu"]),
    "assemble_parts(ddir)": (
        lambda d, v: d.assemble_parts(UP_GOOD, "bkt", MPU, [(1, v)]),
        HOSTILE["ddir"],
    ),
    "assemble_parts(mpu)": (
        lambda d, v: d.assemble_parts(UP_GOOD, "bkt", v, [(1, DD_PART)]),
        HOSTILE["mpu"],
    ),
}


@pytest.mark.asyncio
@pytest.mark.parametrize("call", list(LOCAL_CALLS))
async def test_local_drive_refuses_bad_names_when_called_directly(
    tmp_path: Path, call: str
) -> None:
    sandbox = tmp_path / "sandbox"
    plant_sentinels(sandbox)
    drive = await LocalDrive.open(str(sandbox / "drive"), fsync=False)
    await stage_drive(drive)
    method, values = LOCAL_CALLS[call]
    for value in values:
        before = snapshot(tmp_path)
        with pytest.raises((InvalidName, InvalidArgument)):
            await method(drive, value)
        assert snapshot(tmp_path) == before, f"{call} with {value!r:.60} changed the disk"


def _crafted_meta(data_dir: str) -> bytes:
    """A metadata file with a valid checksum whose data dir is ``data_dir`` (no encoder
    would write it: this is what a damaged or planted file looks like)."""
    record = good_meta().to_dict()
    record["ddir"] = data_dir
    body = msgpack.packb(record, use_bin_type=True)
    return META_MAGIC + xxhash.xxh3_64_digest(body) + body


@pytest.mark.asyncio
@pytest.mark.parametrize("planted", ["x/../../../../victim", "../../../../victim", ".."])
async def test_data_dirs_read_back_from_files_are_checked_before_use(
    tmp_path: Path, planted: str
) -> None:
    """new.ddir and the previous metadata are read back from the upload dir on commit and
    undo: a planted traversal there is refused (or ignored) and nothing outside changes."""
    sandbox = tmp_path / "sandbox"
    plant_sentinels(sandbox)
    drive = await LocalDrive.open(str(sandbox / "drive"), fsync=False)
    await stage_drive(drive)
    upload_dir = sandbox / "drive" / ".minigrid.sys" / "tmp" / UP_DONE
    (upload_dir / "new.ddir").write_text(planted)
    before = snapshot(tmp_path)
    with pytest.raises(FileCorrupt, match="data dir"):
        await drive.commit_rename(UP_DONE, "bkt", "obj")
    with pytest.raises(FileCorrupt, match="data dir"):
        await drive.undo_rename(UP_DONE, "bkt", "obj")
    assert snapshot(tmp_path) == before

    # A previous version whose metadata names a traversal: commit removes no data dir for it.
    (upload_dir / "new.ddir").write_text(DD_GOOD)
    (upload_dir / "prev.meta").write_bytes(_crafted_meta(planted))
    victim = snapshot(sandbox / "victim")
    await drive.commit_rename(UP_DONE, "bkt", "obj")
    assert snapshot(sandbox / "victim") == victim
    assert (sandbox / "drive/bkt/obj" / f"__mg.data.{DD_GOOD}" / "shard").exists()
    # Reading a planted metadata file fails as corrupt, and deleting it leaves the rest alone.
    (sandbox / "drive/bkt/obj/__mg.meta").write_bytes(_crafted_meta(planted))
    with pytest.raises(FileCorrupt):
        await drive.read_metadata("bkt", "obj")
    await drive.delete_object("bkt", "obj")
    assert snapshot(sandbox / "victim") == victim
    assert (sandbox / "outside" / "note.txt").exists()


# --- any value at all: only storage errors ---------------------------------------------------

ANY_VALUE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 63), max_value=U64_MAX)
    | st.floats()
    | st.text(max_size=40)
    | st.binary(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=6), inner, max_size=6)
    ),
    max_leaves=24,
)
META_FIELDS = [(name,) for name in good_meta().to_dict()] + [
    ("ec", name) for name in good_meta().erasure.to_dict()
]


@settings(max_examples=300, deadline=None)
@given(path=st.sampled_from(META_FIELDS), value=ANY_VALUE)
def test_metadata_with_any_field_bent_decodes_or_is_file_corrupt(
    path: tuple[str, ...], value: object
) -> None:
    """Whatever a planted file or a peer puts in a field, decoding checks it or says
    FileCorrupt; it never raises anything else, and never returns an unchecked record."""
    record = good_meta().to_dict()
    (record[path[0]] if len(path) == 2 else record)[path[-1]] = value
    body = msgpack.packb(record, use_bin_type=True)
    try:
        decoded = decode_meta(META_MAGIC + xxhash.xxh3_64_digest(body) + body)
    except FileCorrupt:
        return
    assert decoded.check() is decoded


@settings(max_examples=300, deadline=None)
@given(
    handler=st.sampled_from(list(DRIVE_HANDLERS)),
    fields=ANY_VALUE,
    which=st.integers(min_value=0, max_value=15),
)
def test_any_request_is_checked_or_refused_with_a_storage_error(
    handler: HandlerID, fields: object, which: int
) -> None:
    names = SCHEMA[handler]
    request = fields if isinstance(fields, dict) else {"vol": fields}
    # Also bend one real field of an otherwise valid request, so the checkers themselves run.
    bent = {name: VALID[name] for name in names}
    if names:
        bent[names[which % len(names)]] = fields
    for candidate in (request, bent):
        try:
            check_fields(candidate, names, handler.name)
        except (InvalidName, InvalidArgument, FormatMismatch):
            continue
