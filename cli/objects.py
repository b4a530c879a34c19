"""The object commands: ``mb``, ``put``, ``get``, ``ls``, ``rm`` and ``stat``, over S3 with SigV4.

Where the cluster is: ``--endpoint URL`` with ``--access-key``/``--secret-key`` (or
``MINIGRID_ENDPOINT``, ``MINIGRID_ACCESS_KEY``, ``MINIGRID_SECRET_KEY``); otherwise the
``cluster.json`` in ``--data-dir``, ``$MINIGRID_DATA_DIR`` or ``./.minigrid``, whose first node
that answers is used (so a command still works while some nodes are down).

An https endpoint's certificate is verified against ``--tls-ca`` (``MINIGRID_TLS_CA``), else
the ``tls_ca`` that ``cluster up --tls`` recorded in ``cluster.json``, else the system's trust
store. Verification is never turned off.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from cli.cluster import ClusterError, ClusterFile, http_json, resolve_data_dir
from cli.s3client import CHUNK, S3Client, S3ClientError, describe

F = TypeVar("F", bound=Callable[..., Any])
PROBE_TIMEOUT = 1.0


@dataclass(frozen=True)
class Target:
    """Where to send requests, and the keys to sign them with."""

    endpoints: list[str]
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    #: The CA bundle https endpoints are verified against (None: the system's trust store).
    ca: str | None = None


def fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def resolve_target(
    data_dir: str | None,
    endpoint: str | None,
    access_key: str | None,
    secret_key: str | None,
    *,
    admin: bool = False,
    ca: str | None = None,
) -> Target:
    """The endpoint(s) and keys, from the flags, the environment or cluster.json.

    ``admin``: the keys are the admin keys (``MINIGRID_ADMIN_ACCESS_KEY``, ...), which is what
    ``Target.access_key`` then holds."""
    prefix = "MINIGRID_ADMIN_" if admin else "MINIGRID_"
    key_prefix = "admin_" if admin else ""
    endpoint = endpoint or os.environ.get("MINIGRID_ENDPOINT")
    access_key = access_key or os.environ.get(prefix + "ACCESS_KEY")
    secret_key = secret_key or os.environ.get(prefix + "SECRET_KEY")
    folder = resolve_data_dir(data_dir)
    try:
        cluster = ClusterFile.load(folder)
    except ClusterError as exc:
        fail(str(exc))
        raise AssertionError from exc
    if cluster is None and (endpoint is None or not access_key or not secret_key):
        fail(
            f"no cluster found in {folder}: start one with 'minigrid cluster up', or give "
            f"--endpoint with --access-key and --secret-key"
        )
    config = cluster.config if cluster is not None else {}
    return Target(
        endpoints=[endpoint] if endpoint else [str(n["url"]) for n in config["nodes"]],
        access_key=access_key or str(config[key_prefix + "access_key"]),
        secret_key=secret_key or str(config[key_prefix + "secret_key"]),
        region=str(config.get("region", "us-east-1")),
        ca=ca or os.environ.get("MINIGRID_TLS_CA") or config.get("tls_ca") or None,
    )


def pick_endpoint(endpoints: list[str], ca: str | None = None) -> str:
    """The first endpoint that answers its liveness check (the only one, if just one)."""
    if len(endpoints) == 1:
        return endpoints[0]
    reasons = []
    for url in endpoints:
        status, body = http_json(url + "/minigrid/health/live", PROBE_TIMEOUT, ca)
        if status == 200:
            return url
        reasons.append(f"{url}: {body.get('reason') or f'HTTP {status}'}")
    fail(f"no node answers (is the cluster up?): {'; '.join(reasons)}")
    raise AssertionError


tls_ca_option = click.option(
    "--tls-ca", default=None, metavar="PEM",
    help="verify https endpoints against this CA [env MINIGRID_TLS_CA; cluster.json's tls_ca]",
)  # fmt: skip


def connection_options(func: F) -> F:
    """The options that say where the cluster is; the command gets a ``client`` argument."""

    @click.option("--data-dir", default=None, metavar="DIR",
                  help="the cluster's directory [env MINIGRID_DATA_DIR; ./.minigrid]")
    @click.option("--endpoint", default=None, metavar="URL",
                  help="an S3 endpoint instead of the local cluster [env MINIGRID_ENDPOINT]")
    @click.option("--access-key", default=None, help="[env MINIGRID_ACCESS_KEY]")
    @click.option("--secret-key", default=None, help="[env MINIGRID_SECRET_KEY]")
    @tls_ca_option
    @functools.wraps(func)
    def wrapper(data_dir: str | None, endpoint: str | None, access_key: str | None,
                secret_key: str | None, tls_ca: str | None, **kwargs: Any) -> Any:  # fmt: skip
        target = resolve_target(data_dir, endpoint, access_key, secret_key, ca=tls_ca)
        client = S3Client(
            pick_endpoint(target.endpoints, target.ca), target.access_key, target.secret_key,
            region=target.region, ca=target.ca,
        )  # fmt: skip
        return func(client=client, **kwargs)

    return wrapper  # type: ignore[return-value]


def split_path(text: str, *, need_key: bool) -> tuple[str, str]:
    bucket, _, key = text.lstrip("/").partition("/")
    if not bucket:
        fail(f"{text!r} does not name a bucket (BUCKET/KEY)", 2)
    if need_key and not key:
        fail(f"{text!r} does not name an object (BUCKET/KEY)", 2)
    return bucket, key


@contextlib.contextmanager
def s3_errors(bucket: str = "", key: str = "") -> Iterator[None]:
    """Turn an S3 error into one short line on stderr and exit status 1."""
    try:
        yield
    except S3ClientError as exc:
        fail(describe(exc, bucket, key))


@contextlib.contextmanager
def progress_bar(label: str, total: int | None) -> Iterator[Callable[[int], None] | None]:
    """A rich progress bar on stderr when it is a terminal; otherwise nothing."""
    if not sys.stderr.isatty():
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
               TransferSpeedColumn(), TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task(label, total=total)
        yield lambda n: progress.update(task, advance=n)


def human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError


# --- commands ---------------------------------------------------------------------------------


@click.command()
@click.argument("bucket")
@connection_options
def mb(client: S3Client, bucket: str) -> None:
    """Make a bucket."""
    with s3_errors(bucket):
        client.make_bucket(bucket)
    click.echo(f"bucket {bucket} created")


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.argument("target")
@click.option("--content-type", default="application/octet-stream", show_default=True)
@connection_options
def put(client: S3Client, file: str, target: str, content_type: str) -> None:
    """Upload FILE to BUCKET/KEY (BUCKET or BUCKET/ uses the file's name as the key).

    The body streams from the file (any size) with an unsigned payload; see docs/cluster.md."""
    bucket, key = split_path(target, need_key=False)
    if not key or key.endswith("/"):
        if file == "-":
            fail("give a key when reading from stdin (BUCKET/KEY)", 2)
        key += os.path.basename(file)
    source: IO[bytes]
    if file == "-":  # stdin has no size to send up front: it is spooled to a temporary file
        source = tempfile.TemporaryFile()  # noqa: SIM115 - closed below
        while piece := sys.stdin.buffer.read(CHUNK):
            source.write(piece)
        size = source.tell()
        source.seek(0)
    else:
        source = open(file, "rb")  # noqa: SIM115 - closed below
        size = os.fstat(source.fileno()).st_size
    with source, s3_errors(bucket, key), progress_bar(f"put {key}", size) as advance:
        etag = client.put_object(bucket, key, source, size, content_type=content_type,
                                 progress=advance)  # fmt: skip
    click.echo(f"{bucket}/{key}: {size} bytes, etag {etag}")


@click.command()
@click.argument("source")
@click.argument("dest", type=click.Path(dir_okay=True, allow_dash=True))
@connection_options
def get(client: S3Client, source: str, dest: str) -> None:
    """Download BUCKET/KEY to DEST (a file, a directory, or - for stdout).

    A file is written under a temporary name and renamed at the end, so DEST is never left
    half-written."""
    bucket, key = split_path(source, need_key=True)
    with s3_errors(bucket, key):
        response = client.get_object(bucket, key)
    size = int(response.getheader("Content-Length") or 0)
    try:
        if dest == "-":
            _copy(response, sys.stdout.buffer, size, key, bucket)
            sys.stdout.buffer.flush()
            return
        path = Path(dest)
        if path.is_dir():
            path = path / os.path.basename(key)
        tmp = path.with_name(f".{path.name}.minigrid-{secrets.token_hex(4)}.part")
        try:
            with open(tmp, "wb") as out:
                _copy(response, out, size, key, bucket)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
    finally:
        response.close()
    click.echo(f"{bucket}/{key} -> {path}: {size} bytes", err=True)


def _copy(response: Any, out: IO[bytes], size: int, key: str, bucket: str) -> None:
    received = 0
    with progress_bar(f"get {key}", size) as advance:
        while True:
            try:
                piece = response.read1(CHUNK)
            except OSError as exc:
                fail(f"{bucket}/{key}: the download broke off after {received} bytes ({exc})")
            if not piece:
                break
            out.write(piece)
            received += len(piece)
            if advance is not None:
                advance(len(piece))
    if received != size:
        fail(f"{bucket}/{key}: the download broke off after {received} of {size} bytes")


@click.command()
@click.argument("path", required=False, default="")
@click.option("-r", "--recursive", is_flag=True, help="list every key, not one level")
@connection_options
def ls(client: S3Client, path: str, recursive: bool) -> None:
    """List buckets, or the objects in BUCKET[/PREFIX] (one level; -r for all)."""
    if not path:
        with s3_errors():
            for name, created in client.list_buckets():
                click.echo(f"{created:<24}  {name}/")
        return
    bucket, prefix = split_path(path, need_key=False)
    with s3_errors(bucket):
        for page in client.iter_objects(bucket, prefix, "" if recursive else "/"):
            for common in page.prefixes:
                click.echo(f"{'':<24}  {'PRE':>10}  {common}")
            for item in page.objects:
                click.echo(f"{item.last_modified:<24}  {item.size:>10}  {item.key}")


@click.command()
@click.argument("target")
@connection_options
def rm(client: S3Client, target: str) -> None:
    """Delete BUCKET/KEY (an error if it does not exist)."""
    bucket, key = split_path(target, need_key=True)
    with s3_errors(bucket, key):
        client.head_object(bucket, key)
        client.delete_object(bucket, key)
    click.echo(f"deleted {bucket}/{key}")


@click.command()
@click.argument("target")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@connection_options
def stat(client: S3Client, target: str, as_json: bool) -> None:
    """Show an object's size, ETag, date, content type and metadata."""
    bucket, key = split_path(target, need_key=True)
    with s3_errors(bucket, key):
        info = client.head_object(bucket, key)
    if as_json:
        click.echo(json.dumps({"bucket": bucket, **info.__dict__}, indent=2))
        return
    click.echo(f"object        {bucket}/{key}")
    click.echo(f"size          {info.size} ({human(info.size)})")
    click.echo(f"etag          {info.etag}")
    click.echo(f"last modified {info.last_modified}")
    click.echo(f"content type  {info.content_type}")
    for name, value in sorted(info.metadata.items()):
        click.echo(f"meta {name:<8} {value}")


COMMANDS = [mb, put, get, ls, rm, stat]

__all__ = ["COMMANDS", "Target", "connection_options", "resolve_target"]
