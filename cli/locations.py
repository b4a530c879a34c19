"""Where a copy reads and writes: local paths, ``s3://BUCKET/KEY``, and the plan of a copy.

In ``cp`` and ``mv`` a remote path is written ``s3://BUCKET/KEY`` and anything else is a local
path (``-`` is stdin or stdout); the commands that only ever take a remote path (``ls``,
``rm``, ``stat``, ...) accept it with or without ``s3://``.

:func:`plan` turns a command line into :class:`Job` s, one per object, with these rules (the
aws cli's):

- a target that ends in ``/``, names a bucket only, or is an existing local directory means
  "into this directory": the source's base name is appended;
- ``-r`` copies what is *under* a directory: ``cp -r photos s3://b/pics`` writes
  ``pics/<path below photos>``; for a remote source ``s3://b/photos`` that is every key under
  ``photos/`` (never ``photos2/...``), or the object ``photos`` itself when nothing is under it;
- a key is only ever written to a local path inside the target directory: a key with an empty,
  ``.`` or ``..`` segment is refused, not followed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cli.errors import S3ClientError, describe
from cli.s3client import S3, ObjectStat

REMOTE_SCHEME = "s3://"
STDIO = "-"


class UsageError(Exception):
    """The command line asks for something impossible; the message says what to write."""


class PlanError(Exception):
    """A listing needed to plan a recursive copy failed; the message says which and why."""


@dataclass(frozen=True)
class Local:
    path: str

    @property
    def stdio(self) -> bool:
        return self.path == STDIO

    def __str__(self) -> str:
        return self.path


@dataclass(frozen=True)
class Remote:
    bucket: str
    key: str = ""

    @property
    def is_directory(self) -> bool:
        """Names a bucket, or a key prefix ending in ``/``: "into this directory"."""
        return not self.key or self.key.endswith("/")

    def join(self, name: str) -> Remote:
        return Remote(self.bucket, self.key + name)

    def __str__(self) -> str:
        return f"{REMOTE_SCHEME}{self.bucket}/{self.key}"


Location = Local | Remote


def parse_remote(text: str, *, need_key: bool = False) -> Remote:
    """``BUCKET[/KEY]``, with or without ``s3://``."""
    bare = text[len(REMOTE_SCHEME) :] if text.startswith(REMOTE_SCHEME) else text.lstrip("/")
    bucket, _, key = bare.partition("/")
    if not bucket:
        raise UsageError(f"{text!r} does not name a bucket: write BUCKET or BUCKET/KEY")
    if need_key and not key:
        raise UsageError(f"{text!r} does not name an object: write BUCKET/KEY")
    return Remote(bucket, key)


def parse_location(text: str) -> Location:
    """``s3://BUCKET/KEY`` is remote; anything else is a local path."""
    if text.startswith(REMOTE_SCHEME):
        return parse_remote(text)
    if not text:
        raise UsageError("an empty path: give a file, a directory, - or s3://BUCKET/KEY")
    return Local(text)


@dataclass
class Job:
    """One object to copy; ``size`` and ``etag`` when a listing already said them."""

    source: Location
    dest: Location
    size: int | None = None
    etag: str | None = None
    #: Why this job cannot run (found while planning); it is reported, the others go on.
    refused: str = ""

    @property
    def kind(self) -> Literal["upload", "download", "copy"]:
        if isinstance(self.source, Local):
            return "upload"
        return "download" if isinstance(self.dest, Local) else "copy"


def base_name(key: str) -> str:
    return key.rstrip("/").rsplit("/", 1)[-1]


def into_directory(dest: Location) -> bool:
    """Whether ``dest`` means "into this directory" rather than "this name"."""
    if isinstance(dest, Remote):
        return dest.is_directory
    return not dest.stdio and (dest.path.endswith(("/", os.sep)) or os.path.isdir(dest.path))


def single(source: Location, dest: Location, size: int | None = None) -> Job:
    """The job for one object (or file), with the target name worked out."""
    if isinstance(source, Local) and isinstance(dest, Local):
        raise UsageError(f"neither {source} nor {dest} is remote: write it as s3://BUCKET/KEY")
    if isinstance(source, Local):
        if source.stdio and into_directory(dest):
            raise UsageError(f"reading stdin needs a key to write: {dest}KEY")
        if not source.stdio and not os.path.exists(source.path):
            raise UsageError(f"{source} does not exist")
        if not source.stdio and os.path.isdir(source.path):
            raise UsageError(f"{source} is a directory: add -r to copy what is in it")
        name = "" if source.stdio else os.path.basename(source.path.rstrip(os.sep))
    else:
        if not source.key or source.key.endswith("/"):
            raise UsageError(f"{source} names a directory, not an object: add -r to copy "
                             f"what is under it")  # fmt: skip
        name = base_name(source.key)
    if into_directory(dest):
        dest = dest.join(name) if isinstance(dest, Remote) else Local(os.path.join(dest.path, name))
    if isinstance(source, Remote) and source == dest:
        raise UsageError(f"{source} is both the source and the target")
    return Job(source, dest, size)


def local_tree(source: Local, dest: Remote) -> Iterator[Job]:
    """One upload per file under the local directory ``source``, in a stable order."""
    root = Path(source.path)
    prefix = dest.key if dest.is_directory else dest.key + "/"
    # Links to directories are not followed: a link back up would copy forever.
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            if not path.is_file():  # a socket, a FIFO, a dangling link
                continue
            relative = path.relative_to(root).as_posix()
            yield Job(Local(str(path)), Remote(dest.bucket, prefix + relative),
                      size=path.stat().st_size)  # fmt: skip


def remote_tree(s3: S3, source: Remote) -> tuple[str, Iterator[ObjectStat]]:
    """The directory ``source`` names (``photos`` -> ``photos/``) and every object under it.

    When nothing is under it, the object named ``source.key`` itself, if there is one (so
    ``cp -r s3://b/file.txt dir`` copies the file); ``NoSuchKey`` if there is neither."""
    directory = source.key if source.is_directory else source.key + "/"
    found = s3.objects(source.bucket, directory)
    first = next(found, None)
    if first is not None:
        return directory, _chain(first, found)
    if not source.is_directory:
        try:
            stat = s3.head(source.bucket, source.key)
        except S3ClientError as exc:
            if exc.code != "NoSuchKey":
                raise
            raise PlanError(f"nothing at or under {source} (NoSuchKey)") from exc
        parent = source.key[: len(source.key) - len(base_name(source.key))]
        return parent, iter([stat])
    if source.key:
        raise PlanError(f"nothing under {source} (NoSuchKey)")
    return directory, iter(())  # an empty bucket copies nothing


def _chain(first: ObjectStat, rest: Iterator[ObjectStat]) -> Iterator[ObjectStat]:
    yield first
    yield from rest


def safe_relative(key: str) -> str | None:
    """``key`` as a relative local path, or None if it could leave the target directory."""
    parts = key.split("/")
    if key.endswith("/"):
        parts = parts[:-1]
    if not parts or any(p in ("", ".", "..") or "\0" in p or os.sep in p for p in parts):
        return None
    return os.path.join(*parts)


def check_tree(source: Location, dest: Location) -> None:
    """Refuse a ``cp -r`` that cannot work, before anything is transferred."""
    if isinstance(source, Local) and source.stdio:
        raise UsageError("-r copies directories; stdin (-) is not one")
    if isinstance(source, Local) and isinstance(dest, Local):
        raise UsageError(f"neither {source} nor {dest} is remote: write it as s3://BUCKET/KEY")
    if isinstance(source, Remote) and isinstance(dest, Local) and dest.stdio:
        raise UsageError("-r writes files into a directory, not to stdout (-)")
    if isinstance(source, Local) and not os.path.exists(source.path):
        raise UsageError(f"{source} does not exist")


def tree_jobs(s3: S3, source: Location, dest: Location) -> Iterator[Job]:
    """The jobs of ``cp -r SOURCE DEST`` (checked with :func:`check_tree`)."""
    if isinstance(source, Local):
        assert isinstance(dest, Remote)
        if os.path.isdir(source.path):
            yield from local_tree(source, dest)
        else:
            yield single(source, dest)
        return
    try:
        directory, objects = remote_tree(s3, source)
        for item in objects:
            if isinstance(dest, Local) and item.key.endswith("/"):
                continue  # a "directory marker" object: the files under it make the folders
            yield _tree_job(source, dest, directory, item)
    except S3ClientError as exc:
        raise PlanError(f"{source}: {describe(exc, source.bucket, source.key)}") from exc


def _tree_job(source: Remote, dest: Location, directory: str, item: ObjectStat) -> Job:
    relative = item.key[len(directory) :]
    target: Location
    if isinstance(dest, Remote):
        prefix = dest.key if dest.is_directory else dest.key + "/"
        target = Remote(dest.bucket, prefix + relative)
        refused = "" if target != Remote(source.bucket, item.key) else "source and target are one"
    else:
        local = safe_relative(relative)
        target = Local(os.path.join(dest.path, local or relative))
        refused = "" if local else f"the key {item.key!r} would leave {dest.path}; skipped"
    return Job(Remote(source.bucket, item.key), target, item.size, f'"{item.etag}"', refused)


def plan(s3: S3, sources: Sequence[Location], dest: Location, recursive: bool) -> Iterator[Job]:
    """Every job of ``cp [-r] SOURCE... TARGET``.

    What the command line gets wrong raises :class:`UsageError` here, before any transfer;
    a listing that fails later (``-r``) raises :class:`PlanError` from the iterator."""
    if len(sources) > 1 and not into_directory(dest):
        raise UsageError(f"copying {len(sources)} sources needs a directory target: end "
                         f"{dest} with /")  # fmt: skip
    if not recursive:
        return iter([single(source, dest) for source in sources])
    for source in sources:
        check_tree(source, dest)
    return (job for source in sources for job in tree_jobs(s3, source, dest))


__all__ = [
    "Job",
    "Local",
    "Location",
    "PlanError",
    "Remote",
    "UsageError",
    "parse_location",
    "parse_remote",
    "plan",
    "safe_relative",
    "single",
]
