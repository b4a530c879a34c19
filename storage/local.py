"""LocalDrive: a drive that is a directory on this machine.

Layout under the drive root::

    format.mgp                              the format file
    .minigrid.sys/tmp/<upload id>/          writes in progress (emptied when the drive opens)
    .minigrid.sys/trash/                    volumes being deleted
    .minigrid.sys/multipart/<bucket>/<upload id>/   a multipart upload in progress (kept
                                            across restarts): upload.meta, and for each part
                                            part.<n>.meta and its shard part.<n>.<data dir>
    <bucket>/<key>/__mg.meta                the object's metadata (msgpack + checksum)
    <bucket>/<key>/__mg.data.<data dir>/shard   the shard, bitrot-framed (part.<n> for
                                            each part of an object made by multipart upload)

Every filesystem call runs in the loop's default thread pool, so the event loop never blocks on
the disk.

**Names.** A LocalDrive checks every name where it builds a path, even though the drive service
checked it on arrival: a volume is a bucket name, a key an object key, an upload ID and a data
directory a UUID hex (:mod:`storage.names`), and every path is built with
:func:`storage.names.safe_join`, so no name can reach outside the root. Data directory names
read back from files (the previous metadata, ``new.ddir`` in an upload) are checked again
before anything is renamed or removed.

**Private.** Files are created 0600 and directories 0700, whatever the process umask.

**Durable** (``fsync=True``, the default). A write is on stable storage before it is
acknowledged: the shard file is fdatasync'ed (and its directory fsync'ed) when the shard is
committed; ``rename_data`` fsyncs every directory whose entries changed as the data directory
moves into the object directory (before the metadata names it), writes the metadata to a
temporary file and fdatasyncs it, renames it over the old one (the commit point) and fsyncs
the object directory. Volume, format and delete operations fsync the directory they changed.
``fsync=False`` skips every sync (labs, benchmarks): a power cut may then lose acknowledged
writes, though a crash of the process alone loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TypeVar

from storage import bitrot, listing
from storage.drive import Buffer, DiskInfo, ListPage, ShardWriter, VolumeInfo
from storage.errors import (
    DriveFull,
    DriveNotFound,
    DriveOffline,
    FileCorrupt,
    FileNotFound,
    InvalidArgument,
    StorageError,
    UnformattedDrive,
    VolumeExists,
    VolumeNotEmpty,
    VolumeNotFound,
)
from storage.format import FORMAT_FILE, FormatInfo, decode_format, encode_format
from storage.latency import LatencyWindow
from storage.meta import (
    MAX_BLOCK_SIZE,
    MAX_PARTS,
    MetaError,
    ObjectMeta,
    PartInfo,
    UploadRecord,
    decode_meta,
    decode_part,
    decode_upload,
    encode_meta,
    encode_record,
)
from storage.names import (
    SHARD_FILE,
    SYSTEM_VOLUME,
    data_dir_path,
    object_location,
    safe_join,
    shown,
    validate_bucket,
    validate_data_dir,
    validate_list_text,
    validate_upload_id,
)

T = TypeVar("T")

#: Owner-only: every file and directory a drive creates.
FILE_MODE = 0o600
DIR_MODE = 0o700
#: The most entries one listing page holds; a larger limit gets a truncated page (the object
#: layer asks again from the last entry), so a peer cannot make one call walk a whole volume.
MAX_LIST_PAGE = 10_000
#: The largest shard chunk a read may ask for: a chunk is at most one erasure block.
MAX_CHUNK_SIZE = MAX_BLOCK_SIZE
_MAX_SHARD_SIZE = 1 << 60

_PREV_META = "prev.meta"
_NO_PREV = "no-prev"
_NEW_DATA_DIR = "new.ddir"
_REPLACED_DATA = "replaced.data"
_NEW_META = "new.meta"
_STAGED_DATA = "data"
_UPLOAD_META = "upload.meta"
#: The most uploads one listing of a bucket returns (the layer pages through them).
MAX_LIST_UPLOADS = 10_000


def shard_name(part: int) -> str:
    """The shard file of a data directory: ``shard``, or ``part.<n>`` for part ``n``."""
    if not isinstance(part, int) or isinstance(part, bool) or not 0 <= part <= MAX_PARTS:
        raise InvalidArgument(f"part number {shown(part)} is outside 0..{MAX_PARTS}")
    return SHARD_FILE if part == 0 else f"part.{part}"


def _os_error(exc: OSError, what: str) -> StorageError:
    """Translate an OSError into the storage hierarchy."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DriveFull(f"{what}: {exc.strerror}")
    if exc.errno == errno.ENOENT:
        return FileNotFound(f"{what}: not found")
    return StorageError(f"{what}: {exc.strerror or exc}")


def _write_file(path: str, data: bytes, fsync: bool) -> None:
    """Create (or truncate) ``path`` owner-only with ``data``; fdatasync it when ``fsync``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if fsync:
            os.fdatasync(fd)
    finally:
        os.close(fd)


def sync_dir(path: str) -> None:
    """fsync a directory, so the entries created, renamed or removed in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: str) -> list[str]:
    """Create ``path`` and its missing parents, each 0700 whatever the umask.

    Returns the directories whose entries changed (the parent of each directory created, top
    first), for the caller to fsync. ``os.makedirs`` cannot do this: it gives intermediate
    directories the umask's mode and says nothing about what it created.
    """
    missing: list[str] = []
    current = os.path.abspath(path)
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    changed: list[str] = []
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIR_MODE)
        except FileExistsError:
            continue  # made meanwhile by a concurrent call; a file in the way fails later
        changed.append(os.path.dirname(directory))
    return changed


def _read_data_dir(path: str) -> str:
    """The data directory named in file ``path`` ("" when there is none), checked."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(256)
    except FileNotFoundError:
        return ""
    try:
        return validate_data_dir(raw.decode("ascii"))
    except (UnicodeDecodeError, StorageError) as exc:
        raise FileCorrupt(f"{path} does not hold a data dir: {shown(raw)}") from exc


def _checked(meta: ObjectMeta) -> ObjectMeta:
    """``meta`` if it is sound, else InvalidArgument: nothing unsound is ever written."""
    try:
        return meta.check()
    except MetaError as exc:
        raise InvalidArgument(f"object metadata: {exc}") from exc


def _checked_record(record: UploadRecord) -> UploadRecord:
    try:
        return record.check()
    except MetaError as exc:
        raise InvalidArgument(f"upload record: {exc}") from exc


def _checked_part(part: PartInfo) -> PartInfo:
    try:
        return part.check()
    except MetaError as exc:
        raise InvalidArgument(f"part record: {exc}") from exc


def _check_shard_geometry(chunk_size: int, shard_size: int) -> None:
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise InvalidArgument(f"shard chunk size {chunk_size} is outside 1..{MAX_CHUNK_SIZE}")
    if not 0 <= shard_size <= _MAX_SHARD_SIZE:
        raise InvalidArgument(f"shard size {shard_size} is out of range")


class LocalShardWriter:
    """Streams one shard into a drive's temporary area, framing each chunk with its hash."""

    def __init__(self, drive: LocalDrive, fd: int, path: str) -> None:
        self._drive = drive
        self._fd: int | None = fd
        self._path = path
        self._closed = False

    def _write_sync(self, chunk: Buffer) -> None:
        assert self._fd is not None
        head = bitrot.digest(chunk)
        size = len(chunk)
        written = os.writev(self._fd, [head, chunk])
        if written != len(head) + size:  # a short write: finish the rest the slow way
            rest = memoryview(head + bytes(chunk))[written:]
            while rest:
                rest = rest[os.write(self._fd, rest) :]

    async def write(self, chunk: Buffer) -> None:
        if self._fd is None:
            raise InvalidArgument("shard writer is closed")
        await self._drive.run("write_shard", self._write_sync, chunk)

    @property
    def batchable(self) -> bool:
        """Whether :func:`write_local_shards` may write this shard along with others (it is
        open, its drive online and not slowed by fault injection)."""
        drive = self._drive
        return self._fd is not None and drive.is_online() and not drive.injected_delay

    def _close_sync(self, fsync: bool) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if fsync:
                os.fdatasync(fd)
        finally:
            os.close(fd)
        if fsync:
            # rename_data moves this directory as a whole: the shard's entry in it must be
            # durable before the directory is renamed into the object.
            sync_dir(os.path.dirname(self._path))

    async def commit(self) -> None:
        await self._drive.run("commit_shard", self._close_sync, self._drive.fsync)

    async def abort(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        if not self._closed:
            self._closed = True
            await asyncio.get_running_loop().run_in_executor(
                None, shutil.rmtree, os.path.dirname(os.path.dirname(self._path)), True
            )


def _write_all_sync(
    jobs: list[tuple[LocalShardWriter, Buffer]],
) -> list[tuple[float, BaseException | None]]:
    """Write each job's chunk; how long each write took and how it failed. One trip to the
    thread pool for all of them."""
    out: list[tuple[float, BaseException | None]] = []
    for writer, chunk in jobs:
        started = time.perf_counter()
        try:
            writer._write_sync(chunk)  # noqa: SLF001 - the batch is this module's own
            out.append((time.perf_counter() - started, None))
        except (OSError, StorageError) as exc:
            out.append((time.perf_counter() - started, exc))
    return out


async def write_local_shards(
    jobs: list[tuple[LocalShardWriter, Buffer]],
) -> list[StorageError | None]:
    """Append one chunk to each of several local shard writers in a single thread-pool job.

    The same as ``await writer.write(chunk)`` for each (the same framing, the same errors and
    the same per-drive ``write_shard`` latency), without a thread-pool round trip per drive:
    a put to eight local drives makes one trip per block instead of eight. Every writer must be
    :attr:`~LocalShardWriter.batchable`; each job's error (or None) is returned in order."""
    loop = asyncio.get_running_loop()
    results = await loop.run_in_executor(None, _write_all_sync, jobs)
    errors: list[StorageError | None] = []
    for (writer, _), (elapsed, exc) in zip(jobs, results, strict=True):
        drive, error = writer._drive, ""  # noqa: SLF001
        failure: StorageError | None = None
        if isinstance(exc, StorageError):
            failure = exc
        elif isinstance(exc, OSError):
            failure = await drive._translate("write_shard", exc)  # noqa: SLF001
            error = "" if isinstance(failure, FileNotFound) else type(failure).__name__
        drive._record("write_shard", elapsed, error)  # noqa: SLF001
        errors.append(failure)
    return errors


class LocalDrive:
    """A directory-backed drive. Create it with :meth:`open`."""

    def __init__(self, root: str, endpoint: str | None = None, *, fsync: bool = True) -> None:
        self.root = os.path.abspath(root)
        self._endpoint = endpoint or self.root
        self.fsync = fsync
        self.healing = False
        self._online = True
        self._drive_id = ""
        self._latency = LatencyWindow()
        #: Seconds added to every operation (fault injection: a slow disk). 0 normally.
        self.injected_delay = 0.0
        #: Called as ``observer(op, seconds, error)`` after every operation; ``error`` is the
        #: error's class name when the drive failed it (an I/O error), else "". Must be quick.
        self.observers: list[Callable[[str, float, str], None]] = []
        #: The drive's area for writes in progress (emptied at startup).
        self.tmp_root = os.path.join(self.root, SYSTEM_VOLUME, "tmp")
        self._trash_root = os.path.join(self.root, SYSTEM_VOLUME, "trash")
        self._multipart_root = os.path.join(self.root, SYSTEM_VOLUME, "multipart")

    @classmethod
    async def open(
        cls, root: str, endpoint: str | None = None, *, fsync: bool = True, create: bool = True
    ) -> LocalDrive:
        """Open a drive directory, creating it when ``create``, and empty its temporary area.

        ``fsync`` (default on) makes every write durable before it returns; see the module
        docstring.
        """
        drive = cls(root, endpoint, fsync=fsync)
        await asyncio.get_running_loop().run_in_executor(None, drive._open_sync, create)
        return drive

    def _open_sync(self, create: bool) -> None:
        if not os.path.isdir(self.root):
            if not create:
                raise DriveNotFound(f"drive {self.root} does not exist")
            self._sync_dirs(*make_dirs(self.root))
        for area in (self.tmp_root, self._trash_root):
            shutil.rmtree(area, ignore_errors=True)
            make_dirs(area)
        try:
            self._drive_id = self._read_format_sync().drive_id
        except StorageError:
            self._drive_id = ""

    # --- plumbing ---------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return self._endpoint

    def is_online(self) -> bool:
        return self._online

    def set_online(self, online: bool) -> None:
        """Mark the drive offline (every call fails at once with DriveOffline) or back online."""
        self._online = online

    def _check_online(self) -> None:
        if not self._online:
            raise DriveOffline(f"drive {self._endpoint} is offline")

    async def run(self, op: str, func: Callable[..., T], *args: object) -> T:
        """Run blocking ``func`` in the thread pool, timing it and translating errors."""
        self._check_online()
        loop = asyncio.get_running_loop()
        started = loop.time()
        error = ""
        try:
            if self.injected_delay:  # a slow disk, by fault injection (``fault slow-drive``)
                await asyncio.sleep(self.injected_delay)
            return await loop.run_in_executor(None, func, *args)
        except StorageError:
            raise  # the operation's own answer (not found, ...): the drive itself is fine
        except OSError as exc:
            translated = await self._translate(op, exc)
            if not isinstance(translated, FileNotFound):  # a missing file is an answer too
                error = type(translated).__name__
            raise translated from exc
        finally:
            self._record(op, loop.time() - started, error)

    async def _translate(self, op: str, exc: OSError) -> StorageError:
        """The storage error for an OSError of ``op`` (DriveNotFound when the root is gone)."""
        translated: StorageError = _os_error(exc, f"{op} on {self._endpoint}")
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, os.path.isdir, self.root):
            translated = DriveNotFound(f"drive {self._endpoint} is gone")
        return translated

    def _record(self, op: str, elapsed: float, error: str) -> None:
        self._latency.record(op, elapsed)
        for observer in self.observers:
            observer(op, elapsed, error)

    def system_path(self, name: str) -> str:
        """A file in the drive's own area (not a bucket), e.g. the heal tracker."""
        if not name or "/" in name or name in (".", "..") or "\x00" in name:
            raise InvalidArgument(f"bad system file name {name!r}")
        return os.path.join(self.root, SYSTEM_VOLUME, name)

    def _sync_dirs(self, *paths: str) -> None:
        """fsync each directory once (when this drive syncs), in the order given."""
        if self.fsync:
            for path in dict.fromkeys(paths):
                sync_dir(path)

    def _volume_dir(self, volume: str) -> str:
        return safe_join(self.root, validate_bucket(volume))

    def _require_volume(self, volume: str) -> str:
        path = self._volume_dir(volume)
        if not os.path.isdir(path):
            raise VolumeNotFound(f"volume {volume} not found on {self._endpoint}")
        return path

    def _object_paths(self, volume: str, key: str) -> tuple[str, str]:
        """``(object directory, metadata file)`` for a key."""
        rel_dir, meta_name = object_location(key)
        obj_dir = safe_join(self.root, validate_bucket(volume), rel_dir)
        return obj_dir, os.path.join(obj_dir, meta_name)

    def _upload_dir(self, upload_id: str) -> str:
        return safe_join(self.tmp_root, validate_upload_id(upload_id))

    def _prune(self, start: str, stop: str) -> None:
        """Remove empty directories from ``start`` up to, not including, ``stop``."""
        path = start
        while path != stop and path.startswith(stop + os.sep):
            try:
                os.rmdir(path)
            except OSError:
                return
            path = os.path.dirname(path)

    # --- identity and format ----------------------------------------------------------------

    async def disk_info(self) -> DiskInfo:
        stat = await self.run("disk_info", os.statvfs, self.root)
        return DiskInfo(
            total=stat.f_blocks * stat.f_frsize,
            free=stat.f_bavail * stat.f_frsize,
            used=(stat.f_blocks - stat.f_bfree) * stat.f_frsize,
            inodes_total=stat.f_files,
            inodes_free=stat.f_favail,
            healing=self.healing,
            drive_id=self._drive_id,
            endpoint=self._endpoint,
            latency=self._latency.snapshot(),
        )

    def _read_format_sync(self) -> FormatInfo:
        try:
            with open(os.path.join(self.root, FORMAT_FILE), "rb") as handle:
                blob = handle.read()
        except FileNotFoundError as exc:
            raise UnformattedDrive(f"drive {self._endpoint} is not formatted") from exc
        return decode_format(blob)

    async def read_format(self) -> FormatInfo:
        return await self.run("read_format", self._read_format_sync)

    def _write_format_sync(self, fmt: FormatInfo) -> None:
        tmp = os.path.join(self.tmp_root, f"format-{uuid.uuid4().hex}")
        make_dirs(self.tmp_root)
        _write_file(tmp, encode_format(fmt), self.fsync)
        os.replace(tmp, os.path.join(self.root, FORMAT_FILE))
        self._sync_dirs(self.root)
        self._drive_id = fmt.drive_id

    async def write_format(self, fmt: FormatInfo) -> None:
        await self.run("write_format", self._write_format_sync, fmt)

    # --- volumes ----------------------------------------------------------------------------

    def _make_volume_sync(self, volume: str) -> None:
        try:
            os.mkdir(self._volume_dir(volume), DIR_MODE)
        except FileExistsError as exc:
            raise VolumeExists(f"volume {volume} exists on {self._endpoint}") from exc
        self._sync_dirs(self.root)

    async def make_volume(self, volume: str) -> None:
        await self.run("make_volume", self._make_volume_sync, volume)

    def _volume_info(self, name: str, path: str) -> VolumeInfo:
        return VolumeInfo(name=name, created_ns=os.stat(path).st_mtime_ns)

    def _list_volumes_sync(self) -> list[VolumeInfo]:
        volumes = []
        with os.scandir(self.root) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
                    try:
                        validate_bucket(entry.name)
                    except StorageError:
                        continue
                    volumes.append(self._volume_info(entry.name, entry.path))
        return sorted(volumes, key=lambda v: v.name)

    async def list_volumes(self) -> list[VolumeInfo]:
        return await self.run("list_volumes", self._list_volumes_sync)

    def _stat_volume_sync(self, volume: str) -> VolumeInfo:
        return self._volume_info(volume, self._require_volume(volume))

    async def stat_volume(self, volume: str) -> VolumeInfo:
        return await self.run("stat_volume", self._stat_volume_sync, volume)

    def _delete_volume_sync(self, volume: str, force: bool) -> None:
        path = self._require_volume(volume)
        if not force and listing.walk_page(path, "", "", "", 1).entries:
            raise VolumeNotEmpty(f"volume {volume} is not empty on {self._endpoint}")
        trash = os.path.join(self._trash_root, uuid.uuid4().hex)
        make_dirs(self._trash_root)
        os.rename(path, trash)
        self._sync_dirs(self.root)
        shutil.rmtree(trash, ignore_errors=True)
        # Uploads in progress into the bucket go with it.
        shutil.rmtree(safe_join(self._multipart_root, volume), ignore_errors=True)

    async def delete_volume(self, volume: str, force: bool = False) -> None:
        await self.run("delete_volume", self._delete_volume_sync, volume, force)

    # --- metadata ---------------------------------------------------------------------------

    def _read_metadata_sync(self, volume: str, key: str) -> ObjectMeta:
        _, meta_path = self._object_paths(volume, key)
        try:
            with open(meta_path, "rb") as handle:
                blob = handle.read()
        except (FileNotFoundError, NotADirectoryError) as exc:
            self._require_volume(volume)
            raise FileNotFound(f"{volume}/{key} not found on {self._endpoint}") from exc
        return decode_meta(blob, f"{volume}/{key} on {self._endpoint}")

    async def read_metadata(self, volume: str, key: str) -> ObjectMeta:
        return await self.run("read_metadata", self._read_metadata_sync, volume, key)

    def _write_metadata_sync(self, volume: str, key: str, meta: ObjectMeta) -> None:
        blob = encode_meta(_checked(meta))
        self._require_volume(volume)
        obj_dir, meta_path = self._object_paths(volume, key)
        self._sync_dirs(*make_dirs(obj_dir))
        make_dirs(self.tmp_root)
        tmp = os.path.join(self.tmp_root, f"meta-{uuid.uuid4().hex}")
        _write_file(tmp, blob, self.fsync)
        os.replace(tmp, meta_path)
        self._sync_dirs(obj_dir)

    async def write_metadata(self, volume: str, key: str, meta: ObjectMeta) -> None:
        await self.run("write_metadata", self._write_metadata_sync, volume, key, meta)

    def _delete_object_sync(self, volume: str, key: str) -> None:
        vol_dir = self._require_volume(volume)
        obj_dir, meta_path = self._object_paths(volume, key)
        data_dir: str | None
        try:
            data_dir = self._read_metadata_sync(volume, key).data_dir
        except FileCorrupt:
            data_dir = None
        os.unlink(meta_path)  # the object is gone from here on; the rest is cleanup
        self._sync_dirs(obj_dir)
        if data_dir:
            shutil.rmtree(data_dir_path(obj_dir, data_dir), ignore_errors=True)
        self._prune(obj_dir, vol_dir)

    async def delete_object(self, volume: str, key: str) -> None:
        await self.run("delete_object", self._delete_object_sync, volume, key)

    # --- writing shards and committing ------------------------------------------------------

    def _create_shard_sync(self, upload_id: str, part: int) -> tuple[int, str]:
        staged = os.path.join(self._upload_dir(upload_id), _STAGED_DATA)
        name = shard_name(part)
        make_dirs(staged)
        path = os.path.join(staged, name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        return os.open(path, flags, FILE_MODE), path

    async def create_shard(self, upload_id: str, part: int = 0) -> ShardWriter:
        fd, path = await self.run("create_shard", self._create_shard_sync, upload_id, part)
        return LocalShardWriter(self, fd, path)

    def _rename_data_sync(self, upload_id: str, volume: str, key: str, meta: ObjectMeta) -> None:
        blob = encode_meta(_checked(meta))
        vol_dir = self._require_volume(volume)
        up_dir = self._upload_dir(upload_id)
        obj_dir, meta_path = self._object_paths(volume, key)
        target = data_dir_path(obj_dir, meta.data_dir)
        make_dirs(up_dir)
        _write_file(os.path.join(up_dir, _NEW_DATA_DIR), meta.data_dir.encode(), False)
        staged = os.path.join(up_dir, _STAGED_DATA)
        changed: list[str] = []
        for _attempt in range(3):  # a concurrent delete may prune obj_dir between the calls
            try:
                changed.extend(make_dirs(obj_dir))
                if os.path.isdir(staged):
                    if os.path.isdir(target):
                        # A heal rewriting a damaged copy of this very version: the old data
                        # goes aside, dropped on commit and put back on undo.
                        os.rename(target, os.path.join(up_dir, _REPLACED_DATA))
                    os.rename(staged, target)
                    changed.append(obj_dir)
                break
            except FileNotFoundError:
                if not os.path.isdir(vol_dir):
                    raise
        else:
            raise FileNotFound(f"could not place the data of {volume}/{key}")
        # The data directory (and any object directory just made) must be durable before the
        # metadata that names it is.
        self._sync_dirs(*changed)
        # Keep the version being replaced so undo_rename can put it back.
        try:
            os.link(meta_path, os.path.join(up_dir, _PREV_META))
        except FileNotFoundError:
            _write_file(os.path.join(up_dir, _NO_PREV), b"", False)
        tmp_meta = os.path.join(up_dir, _NEW_META)
        _write_file(tmp_meta, blob, self.fsync)
        os.replace(tmp_meta, meta_path)  # the commit point on this drive
        self._sync_dirs(obj_dir)

    async def rename_data(self, upload_id: str, volume: str, key: str, meta: ObjectMeta) -> None:
        await self.run("rename_data", self._rename_data_sync, upload_id, volume, key, meta)

    def _previous_data_dir(self, up_dir: str) -> str:
        """The data dir of the version rename_data replaced ("" if none or unreadable)."""
        try:
            with open(os.path.join(up_dir, _PREV_META), "rb") as handle:
                return decode_meta(handle.read()).data_dir  # decoding checks the data dir
        except (FileNotFoundError, FileCorrupt):
            return ""

    def _commit_rename_sync(self, upload_id: str, volume: str, key: str) -> None:
        up_dir = self._upload_dir(upload_id)
        obj_dir, _ = self._object_paths(volume, key)
        previous = self._previous_data_dir(up_dir)
        installed = _read_data_dir(os.path.join(up_dir, _NEW_DATA_DIR))
        if previous and previous != installed:
            shutil.rmtree(data_dir_path(obj_dir, previous), ignore_errors=True)
        shutil.rmtree(up_dir, ignore_errors=True)

    async def commit_rename(self, upload_id: str, volume: str, key: str) -> None:
        await self.run("commit_rename", self._commit_rename_sync, upload_id, volume, key)

    def _undo_rename_sync(self, upload_id: str, volume: str, key: str) -> None:
        vol_dir = self._volume_dir(volume)
        up_dir = self._upload_dir(upload_id)
        obj_dir, meta_path = self._object_paths(volume, key)
        installed = _read_data_dir(os.path.join(up_dir, _NEW_DATA_DIR))
        previous = self._previous_data_dir(up_dir)
        prev = os.path.join(up_dir, _PREV_META)
        if os.path.exists(prev):
            os.replace(prev, meta_path)
            self._sync_dirs(obj_dir)
        elif os.path.exists(os.path.join(up_dir, _NO_PREV)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(meta_path)
                self._sync_dirs(obj_dir)
        if installed:
            target = data_dir_path(obj_dir, installed)
            replaced = os.path.join(up_dir, _REPLACED_DATA)
            if os.path.isdir(replaced):  # a heal replaced this data: put the old copy back
                shutil.rmtree(target, ignore_errors=True)
                os.rename(replaced, target)
            elif installed != previous:  # never the data of the version put back
                shutil.rmtree(target, ignore_errors=True)
        shutil.rmtree(up_dir, ignore_errors=True)
        self._prune(obj_dir, vol_dir)

    async def undo_rename(self, upload_id: str, volume: str, key: str) -> None:
        await self.run("undo_rename", self._undo_rename_sync, upload_id, volume, key)

    # --- reading shards ---------------------------------------------------------------------

    def _shard_path(self, volume: str, key: str, data_dir: str, part: int) -> str:
        obj_dir, _ = self._object_paths(volume, key)
        return os.path.join(data_dir_path(obj_dir, data_dir), shard_name(part))

    def _open_shard_sync(
        self, volume: str, key: str, data_dir: str, framed_size: int, part: int = 0
    ) -> int:
        path = self._shard_path(volume, key, data_dir, part)
        try:
            fd = os.open(path, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise FileNotFound(f"shard of {volume}/{key} missing on {self._endpoint}") from exc
        size = os.fstat(fd).st_size
        if size != framed_size:
            os.close(fd)
            raise FileCorrupt(
                f"shard of {volume}/{key} on {self._endpoint} is {size} bytes, "
                f"expected {framed_size}"
            )
        return fd

    def _read_chunk_sync(self, fd: int, position: int, size: int, where: str) -> bytes:
        expected = os.pread(fd, bitrot.HASH_SIZE, position)
        chunk = os.pread(fd, size, position + bitrot.HASH_SIZE)
        if len(chunk) != size:
            raise FileCorrupt(f"shard truncated in {where}")
        bitrot.verify(expected, chunk, where)
        return chunk

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
        _check_shard_geometry(chunk_size, shard_size)
        if offset < 0 or length < 0 or offset + length > shard_size:
            raise InvalidArgument(f"shard range {offset}+{length} outside {shard_size} bytes")
        framed = bitrot.framed_size(shard_size, chunk_size)
        fd = await self.run(
            "open_shard", self._open_shard_sync, volume, key, data_dir, framed, part
        )
        where = f"{volume}/{key} on {self._endpoint}"
        try:
            first, count = bitrot.chunk_span(offset, length, chunk_size)
            end = offset + length
            for index in range(first, first + count):
                start = index * chunk_size
                size = min(chunk_size, shard_size - start)
                position = index * (chunk_size + bitrot.HASH_SIZE)
                chunk = await self.run(
                    "read_shard", self._read_chunk_sync, fd, position, size, where
                )
                lo = max(offset - start, 0)
                hi = min(end - start, size)
                yield chunk if (lo == 0 and hi == size) else chunk[lo:hi]
        finally:
            os.close(fd)

    def _verify_shard_sync(
        self, volume: str, key: str, data_dir: str, chunk_size: int, shard_size: int, part: int
    ) -> None:
        _check_shard_geometry(chunk_size, shard_size)
        framed = bitrot.framed_size(shard_size, chunk_size)
        fd = self._open_shard_sync(volume, key, data_dir, framed, part)
        where = f"{volume}/{key} on {self._endpoint}"
        try:
            for index in range(bitrot.chunk_count(shard_size, chunk_size)):
                size = min(chunk_size, shard_size - index * chunk_size)
                self._read_chunk_sync(fd, index * (chunk_size + bitrot.HASH_SIZE), size, where)
        finally:
            os.close(fd)

    def _stat_shard_sync(
        self, volume: str, key: str, data_dir: str, chunk_size: int, shard_size: int, part: int
    ) -> None:
        framed = bitrot.framed_size(shard_size, chunk_size)
        os.close(self._open_shard_sync(volume, key, data_dir, framed, part))

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
        check = self._verify_shard_sync if deep else self._stat_shard_sync
        await self.run("verify_shard", check, volume, key, data_dir, chunk_size, shard_size, part)

    # --- multipart uploads ------------------------------------------------------------------

    def _multipart_dir(self, volume: str, upload_id: str) -> str:
        return safe_join(
            self._multipart_root, validate_bucket(volume), validate_upload_id(upload_id)
        )

    def _require_upload(self, volume: str, upload_id: str) -> str:
        path = self._multipart_dir(volume, upload_id)
        if not os.path.exists(os.path.join(path, _UPLOAD_META)):
            self._require_volume(volume)
            raise FileNotFound(f"upload {upload_id} of {volume} not found on {self._endpoint}")
        return path

    def _replace_file(self, directory: str, name: str, blob: bytes) -> None:
        """Write ``directory/name`` atomically (and durably when this drive syncs)."""
        tmp = os.path.join(directory, f".{name}.{uuid.uuid4().hex}")
        _write_file(tmp, blob, self.fsync)
        os.replace(tmp, os.path.join(directory, name))
        self._sync_dirs(directory)

    def _write_upload_sync(self, volume: str, record: UploadRecord) -> None:
        blob = encode_record(_checked_record(record))
        self._require_volume(volume)
        path = self._multipart_dir(volume, record.upload_id)
        self._sync_dirs(*make_dirs(path))
        self._replace_file(path, _UPLOAD_META, blob)

    async def write_upload(self, volume: str, record: UploadRecord) -> None:
        await self.run("write_upload", self._write_upload_sync, volume, record)

    def _read_upload_sync(self, volume: str, upload_id: str) -> UploadRecord:
        path = os.path.join(self._require_upload(volume, upload_id), _UPLOAD_META)
        with open(path, "rb") as handle:
            record = decode_upload(handle.read(), f"upload {upload_id} on {self._endpoint}")
        if record.upload_id != upload_id:
            raise FileCorrupt(f"upload {upload_id} on {self._endpoint} holds another upload")
        return record

    async def read_upload(self, volume: str, upload_id: str) -> UploadRecord:
        return await self.run("read_upload", self._read_upload_sync, volume, upload_id)

    def _list_uploads_sync(self, volume: str) -> list[UploadRecord]:
        self._require_volume(volume)
        folder = safe_join(self._multipart_root, validate_bucket(volume))
        try:
            names = sorted(os.listdir(folder))
        except FileNotFoundError:
            return []
        records: list[UploadRecord] = []
        for name in names:
            try:
                records.append(self._read_upload_sync(volume, validate_upload_id(name)))
            except StorageError:
                continue  # a stray or damaged entry: not an upload anyone can use
            if len(records) >= MAX_LIST_UPLOADS:
                break
        return records

    async def list_uploads(self, volume: str) -> list[UploadRecord]:
        return await self.run("list_uploads", self._list_uploads_sync, volume)

    def _delete_upload_sync(self, volume: str, upload_id: str) -> None:
        path = self._require_upload(volume, upload_id)
        trash = os.path.join(self._trash_root, uuid.uuid4().hex)
        make_dirs(self._trash_root)
        os.rename(path, trash)  # the upload is gone from here on; the rest is cleanup
        self._sync_dirs(os.path.dirname(path))
        shutil.rmtree(trash, ignore_errors=True)

    async def delete_upload(self, volume: str, upload_id: str) -> None:
        await self.run("delete_upload", self._delete_upload_sync, volume, upload_id)

    def _read_part_sync(self, upload_dir: str, number: int) -> PartInfo | None:
        path = os.path.join(upload_dir, f"part.{number}.meta")
        try:
            with open(path, "rb") as handle:
                blob = handle.read()
        except FileNotFoundError:
            return None
        part = decode_part(blob, f"{path} on {self._endpoint}")
        return part if part.number == number else None

    def _commit_part_sync(self, upload_id: str, volume: str, mpu: str, part: PartInfo) -> None:
        up_dir = self._upload_dir(upload_id)
        part = _checked_part(part)  # names are checked before anything is touched
        self._multipart_dir(volume, mpu)
        try:
            upload_dir = self._require_upload(volume, mpu)
            staged = os.path.join(up_dir, _STAGED_DATA, SHARD_FILE)
            if not os.path.exists(staged):
                raise FileNotFound(f"no staged shard for part {part.number} of {mpu}")
            try:
                previous = self._read_part_sync(upload_dir, part.number)
            except FileCorrupt:
                previous = None
            data_name = f"part.{part.number}.{part.data_dir}"
            os.rename(staged, os.path.join(upload_dir, data_name))
            # The part's data is in place (and durable) before the record that names it.
            self._sync_dirs(upload_dir)
            self._replace_file(upload_dir, f"part.{part.number}.meta", encode_record(part))
            if previous is not None and previous.data_dir != part.data_dir:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(upload_dir, f"part.{part.number}.{previous.data_dir}"))
        finally:
            shutil.rmtree(up_dir, ignore_errors=True)

    async def commit_part(self, upload_id: str, volume: str, mpu: str, part: PartInfo) -> None:
        await self.run("commit_part", self._commit_part_sync, upload_id, volume, mpu, part)

    def _list_parts_sync(self, volume: str, mpu: str) -> list[PartInfo]:
        upload_dir = self._require_upload(volume, mpu)
        parts: list[PartInfo] = []
        for name in os.listdir(upload_dir):
            number_text, dot, rest = name.removeprefix("part.").partition(".")
            if not name.startswith("part.") or rest != "meta" or not dot:
                continue
            if not number_text.isdigit() or not 1 <= int(number_text) <= MAX_PARTS:
                continue
            with contextlib.suppress(FileCorrupt):
                part = self._read_part_sync(upload_dir, int(number_text))
                if part is not None:
                    parts.append(part)
        return sorted(parts, key=lambda p: p.number)

    async def list_parts(self, volume: str, mpu: str) -> list[PartInfo]:
        return await self.run("list_parts", self._list_parts_sync, volume, mpu)

    def _assemble_parts_sync(
        self, upload_id: str, volume: str, mpu: str, parts: list[tuple[int, str]]
    ) -> None:
        links: list[tuple[str, str]] = []
        for number, data_dir in parts:  # every name is checked before anything is touched
            if shard_name(number) == SHARD_FILE:
                raise InvalidArgument("part numbers start at 1")
            links.append((f"part.{number}.{validate_data_dir(data_dir)}", shard_name(number)))
        upload_dir = self._require_upload(volume, mpu)
        staged = os.path.join(self._upload_dir(upload_id), _STAGED_DATA)
        try:
            make_dirs(staged)
            for name, target in links:
                source = os.path.join(upload_dir, name)
                part_text = target.partition(".")[2]
                # A hard link: the object takes the part's data without a copy, and the
                # upload keeps it until the object is committed.
                try:
                    os.link(source, os.path.join(staged, target))
                except FileNotFoundError as exc:
                    where = f"{mpu} on {self._endpoint}"
                    raise FileNotFound(f"part {part_text} of {where} is missing") from exc
            self._sync_dirs(staged)
        except BaseException:
            shutil.rmtree(self._upload_dir(upload_id), ignore_errors=True)
            raise

    async def assemble_parts(
        self, upload_id: str, volume: str, mpu: str, parts: list[tuple[int, str]]
    ) -> None:
        await self.run("assemble_parts", self._assemble_parts_sync, upload_id, volume, mpu, parts)

    # --- listing ----------------------------------------------------------------------------

    def _list_page_sync(
        self, volume: str, prefix: str, delimiter: str, start_after: str, limit: int
    ) -> ListPage:
        validate_list_text(prefix, "listing prefix")
        validate_list_text(delimiter, "listing delimiter")
        validate_list_text(start_after, "listing marker")
        return listing.walk_page(
            self._require_volume(volume), prefix, delimiter, start_after, limit
        )

    async def list_objects_page(
        self, volume: str, prefix: str, delimiter: str, start_after: str, limit: int
    ) -> ListPage:
        """A page of at most ``limit`` entries, and never more than :data:`MAX_LIST_PAGE`."""
        if not isinstance(limit, int) or limit <= 0:
            raise InvalidArgument("listing limit must be positive")
        limit = min(limit, MAX_LIST_PAGE)
        return await self.run(
            "list_objects", self._list_page_sync, volume, prefix, delimiter, start_after, limit
        )


def iter_upload_ids(drive: LocalDrive) -> Iterator[str]:
    """The uploads in progress in a drive's temporary area (for tests and diagnostics)."""
    try:
        yield from sorted(os.listdir(drive.tmp_root))
    except FileNotFoundError:
        return
