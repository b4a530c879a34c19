"""The bucket and object commands that move no data: ``mb``, ``rb``, ``ls``, ``du``, ``stat``,
``rm`` and ``share``; the copying ones are in :mod:`cli.copying`.

Remote paths are ``BUCKET[/KEY]``, with or without ``s3://``. Every error is one line on
stderr naming what was wrong, with S3's error code (``NoSuchKey``, ``NoSuchBucket``, ...), and
exit status 1 (2 for a command line that cannot work). ``--json`` prints JSON instead of text:
one object per line for listings (``ls``), one object for the others.

"Under a path", for ``rm -r`` and ``du`` as for ``cp -r``: ``BUCKET/photos`` means the object
``photos`` and every key under ``photos/`` (never ``photos2/...``); ``BUCKET`` or a path ending
in ``/`` means everything under it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
from collections.abc import Iterator
from typing import Any

import click

from cli.errors import Interrupted, S3ClientError, describe
from cli.locations import Remote, UsageError, parse_remote
from cli.s3client import S3, ObjectStat, Prefix
from cli.target import connection_options, fail

#: SigV4's limit on a presigned URL's life.
MAX_SHARE_SECONDS = 7 * 24 * 3600
DEFAULT_SHARE = "7d"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@contextlib.contextmanager
def s3_errors(s3: S3, bucket: str = "", key: str = "") -> Iterator[None]:
    """Turn an S3 error into one short line on stderr and exit status 1."""
    try:
        yield
    except S3ClientError as exc:
        fail(describe(s3.named(exc, bucket, key) if bucket else exc, bucket, key))


def remote_arg(text: str, *, need_key: bool = False) -> Remote:
    try:
        return parse_remote(text, need_key=need_key)
    except UsageError as exc:
        fail(str(exc), 2)


def under(path: Remote, key: str) -> bool:
    """Whether ``key`` is "under" ``path`` (see the module docstring)."""
    if path.is_directory:
        return key.startswith(path.key)
    return key == path.key or key.startswith(path.key + "/")


def objects_under(s3: S3, path: Remote) -> Iterator[ObjectStat]:
    for item in s3.objects(path.bucket, path.key):
        if under(path, item.key):
            yield item


def human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError


def emit(document: dict[str, Any]) -> None:
    click.echo(json.dumps(document))


json_option = click.option("--json", "as_json", is_flag=True, help="print JSON")


# --- buckets ----------------------------------------------------------------------------------


@click.command()
@click.argument("bucket")
@click.option("-p", "--ignore-existing", is_flag=True, help="a bucket that exists is no error")
@connection_options
def mb(s3: S3, bucket: str, ignore_existing: bool) -> None:
    """Make a bucket (an error if it exists, unless -p)."""
    name = remote_arg(bucket).bucket
    try:
        with s3.errors():
            s3.make_bucket(name)
    except S3ClientError as exc:
        if exc.code == "BucketAlreadyOwnedByYou" and ignore_existing:
            click.echo(f"bucket {name} exists")
            return
        fail(describe(exc, name))
    click.echo(f"bucket {name} created")


@click.command()
@click.argument("bucket")
@click.option("--force", is_flag=True,
              help="delete every object (and abort every upload) in it first")  # fmt: skip
@connection_options
def rb(s3: S3, bucket: str, force: bool) -> None:
    """Remove a bucket; it must be empty unless --force is given."""
    path = remote_arg(bucket)
    if path.key:
        fail(f"{bucket!r} names an object, not a bucket: rb takes BUCKET (rm deletes objects)", 2)
    with s3_errors(s3, path.bucket):
        if force:
            deleted = _delete_under(s3, path)
            try:
                s3.abort_uploads(path.bucket)
            except S3ClientError as exc:
                if exc.code != "NotImplemented":  # a gateway without multipart has none
                    raise
            if deleted:
                click.echo(f"deleted {deleted} object(s) in {path.bucket}")
        s3.remove_bucket(path.bucket)
    click.echo(f"bucket {path.bucket} removed")


# --- listing ----------------------------------------------------------------------------------


@click.command()
@click.argument("path", required=False, default="")
@click.option("-r", "--recursive", is_flag=True, help="list every key, not one level")
@json_option
@connection_options
def ls(s3: S3, path: str, recursive: bool, as_json: bool) -> None:
    """List buckets, or the objects in BUCKET[/PREFIX] (one level; -r for all).

    --json prints one JSON object per line: {"type": "bucket"|"prefix"|"object", ...}."""
    if not path:
        with s3_errors(s3):
            buckets = s3.list_buckets()
        for found in buckets:
            if as_json:
                emit({"type": "bucket", "name": found.name, "created": found.created})
            else:
                click.echo(f"{found.created:<24}  {found.name}/")
        return
    where = remote_arg(path)
    with s3_errors(s3, where.bucket):
        for entry in s3.listing(where.bucket, where.key, "" if recursive else "/"):
            _echo_entry(where.bucket, entry, as_json)


def _echo_entry(bucket: str, entry: ObjectStat | Prefix, as_json: bool) -> None:
    if isinstance(entry, Prefix):
        if as_json:
            emit({"type": "prefix", "bucket": bucket, "key": entry.prefix})
        else:
            click.echo(f"{'':<24}  {'PRE':>10}  {entry.prefix}")
        return
    if as_json:
        emit({"type": "object", "bucket": bucket, "key": entry.key, "size": entry.size,
              "etag": entry.etag, "last_modified": entry.last_modified})  # fmt: skip
    else:
        click.echo(f"{entry.last_modified:<24}  {entry.size:>10}  {entry.key}")


@click.command()
@click.argument("path")
@json_option
@connection_options
def du(s3: S3, path: str, as_json: bool) -> None:
    """Total size and number of objects under BUCKET[/PATH]."""
    where = remote_arg(path)
    count = total = 0
    with s3_errors(s3, where.bucket):
        for item in objects_under(s3, where):
            count += 1
            total += item.size
    if as_json:
        emit({"bucket": where.bucket, "path": where.key, "objects": count, "size": total})
    else:
        click.echo(f"{human(total):>10}  {count} object(s)  {where}")


@click.command()
@click.argument("target")
@json_option
@connection_options
def stat(s3: S3, target: str, as_json: bool) -> None:
    """Show an object's size, ETag, date, content type and metadata."""
    where = remote_arg(target, need_key=True)
    with s3_errors(s3, where.bucket, where.key):
        info = s3.head(where.bucket, where.key)
    if as_json:
        emit({"bucket": where.bucket, "key": info.key, "size": info.size, "etag": info.etag,
              "last_modified": info.last_modified, "content_type": info.content_type,
              "metadata": info.metadata, **info.headers})  # fmt: skip
        return
    click.echo(f"object        {where.bucket}/{where.key}")
    click.echo(f"size          {info.size} ({human(info.size)})")
    click.echo(f"etag          {info.etag}")
    click.echo(f"last modified {info.last_modified}")
    click.echo(f"content type  {info.content_type}")
    for name, value in sorted(info.headers.items()):
        click.echo(f"{name.replace('_', ' '):<13} {value}")
    for name, value in sorted(info.metadata.items()):
        click.echo(f"meta {name:<8} {value}")


# --- deleting ---------------------------------------------------------------------------------


@click.command()
@click.argument("targets", nargs=-1, required=True)
@click.option("-r", "--recursive", is_flag=True, help="delete everything under each path")
@connection_options
def rm(s3: S3, targets: tuple[str, ...], recursive: bool) -> None:
    """Delete objects: BUCKET/KEY, or with -r everything under BUCKET[/PATH].

    A missing object is an error (NoSuchKey), as is a path with nothing under it."""
    paths = [remote_arg(t, need_key=not recursive) for t in targets]
    failed = False
    for path in paths:
        if not recursive:
            try:
                with s3.errors():
                    s3.head(path.bucket, path.key)
                    s3.delete(path.bucket, path.key)
            except S3ClientError as exc:
                failed = True
                click.echo(f"error: {describe(exc, path.bucket, path.key)}", err=True)
                continue
            click.echo(f"deleted {path.bucket}/{path.key}")
            continue
        try:
            deleted = _delete_under(s3, path)
        except S3ClientError as exc:
            failed = True
            click.echo(f"error: {describe(exc, path.bucket)}", err=True)
            continue
        if not deleted:
            failed = True
            click.echo(f"error: nothing under {path} (NoSuchKey)", err=True)
        else:
            click.echo(f"deleted {deleted} object(s) under {path}")
    if failed:
        raise SystemExit(1)


def _delete_under(s3: S3, path: Remote) -> int:
    """Delete every object under ``path``; how many. Refused keys are reported on stderr and
    make the command fail; Ctrl-C says how far it got."""
    deleted = 0
    refused = 0
    try:
        keys = (item.key for item in objects_under(s3, path))
        for key, error in s3.delete_many(path.bucket, keys):
            if error is None:
                deleted += 1
            else:
                refused += 1
                click.echo(f"error: {path.bucket}/{key}: {error}", err=True)
    except KeyboardInterrupt:
        raise Interrupted([f"{deleted} object(s) under {path} were deleted; the rest are "
                           f"still there"]) from None  # fmt: skip
    if refused:
        raise S3ClientError("DeleteFailed", f"{refused} object(s) under {path} were not deleted")
    return deleted


# --- sharing ----------------------------------------------------------------------------------


def parse_duration(text: str) -> int:
    """``90``, ``90s``, ``15m``, ``12h``, ``7d`` or ``1h30m``, in seconds (1 s to 7 days)."""
    cleaned = text.strip().lower()
    if cleaned.isdigit():
        seconds = int(cleaned)
    else:
        parts = re.fullmatch(r"(?:\d+[smhd])+", cleaned)
        if parts is None:
            raise click.BadParameter(
                f"{text!r} is not a duration: write seconds, or a number with s, m, h or d "
                f"(e.g. 30m, 12h, 7d)"
            )
        seconds = sum(int(n) * _UNITS[u] for n, u in re.findall(r"(\d+)([smhd])", cleaned))
    if not 1 <= seconds <= MAX_SHARE_SECONDS:
        raise click.BadParameter(
            f"{text!r} is {seconds} s: a presigned URL lives from 1 s to 7 days (604800 s)"
        )
    return seconds


@click.command()
@click.argument("target")
@click.option("--expire", "expire", default=DEFAULT_SHARE, show_default=True, metavar="DURATION",
              help="how long the URL works: 90s, 30m, 12h, 7d (at most 7d)")  # fmt: skip
@json_option
@connection_options
def share(s3: S3, target: str, expire: str, as_json: bool) -> None:
    """Print a URL anyone can download BUCKET/KEY with, until it expires (no keys needed)."""
    try:
        seconds = parse_duration(expire)
    except click.BadParameter as exc:
        fail(f"--expire: {exc.message}", 2)
    where = remote_arg(target, need_key=True)
    with s3_errors(s3, where.bucket, where.key):
        s3.head(where.bucket, where.key)  # never hand out a URL to nothing
        url = s3.presign_get(where.bucket, where.key, seconds)
    expires = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)).isoformat(
        timespec="seconds"
    )
    if as_json:
        emit({"bucket": where.bucket, "key": where.key, "url": url, "expires_in": seconds,
              "expires": expires})  # fmt: skip
        return
    click.echo(url)
    click.echo(f"expires {expires} (in {seconds} s)", err=True)


COMMANDS = [mb, rb, ls, du, stat, rm, share]

__all__ = ["COMMANDS", "human", "parse_duration", "s3_errors"]
