"""The commands that move data: ``cp``, ``mv``, ``put``, ``get`` and ``cat``.

``cp`` and ``mv`` take local paths and ``s3://BUCKET/KEY`` in either place, so they upload,
download, or copy inside the cluster (CopyObject, or UploadPartCopy for big objects); ``-r``
copies what is under a directory. ``put FILE BUCKET/KEY`` and ``get BUCKET/KEY FILE`` are the
same copies with the remote side written without ``s3://``. All of them go through s3transfer
(:mod:`cli.transfer`), with one progress bar per transfer on a terminal.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence

import click

from cli.locations import (
    Job,
    Local,
    Location,
    Remote,
    UsageError,
    parse_location,
    parse_remote,
    plan,
)
from cli.progress import bars
from cli.s3client import S3
from cli.target import connection_options, fail
from cli.transfer import Runner

recursive_option = click.option("-r", "--recursive", is_flag=True,
                                help="copy everything under each directory")  # fmt: skip
content_type_option = click.option(
    "--content-type", default=None, metavar="TYPE",
    help="the uploaded objects' Content-Type [guessed from the file name]",
)  # fmt: skip


def run_copy(s3: S3, sources: Sequence[Location], dest: Location, *, recursive: bool,
             move: bool = False, content_type: str | None = None) -> None:  # fmt: skip
    """Plan and run a copy (or move); exit 1 if any object failed, 2 for a bad command line."""
    try:
        jobs = plan(s3, sources, dest, recursive)
    except UsageError as exc:
        fail(str(exc), 2)
    data_to_stdout = isinstance(dest, Local) and dest.stdio

    def report(line: str) -> None:  # with the data on stdout, the lines go to stderr
        click.echo(line, err=data_to_stdout)

    many = recursive or len(sources) > 1
    with bars(many=many) as progress:
        runner = Runner(s3, progress, move=move, content_type=content_type, report=report)
        summary = runner.run(jobs)
    if summary.failures:
        if many and (summary.done or len(summary.failures) > 1):
            click.echo(f"{summary.done} copied, {len(summary.failures)} failed", err=True)
        sys.exit(1)
    if many and summary.done == 0:
        fail(f"nothing to copy under {', '.join(str(s) for s in sources)}")


def _locations(texts: Iterable[str]) -> list[Location]:
    try:
        return [parse_location(text) for text in texts]
    except UsageError as exc:
        fail(str(exc), 2)


@click.command()
@click.argument("paths", nargs=-1, required=True)
@recursive_option
@content_type_option
@connection_options
def cp(s3: S3, paths: tuple[str, ...], recursive: bool, content_type: str | None) -> None:
    """Copy SOURCE... to TARGET: files up, objects down, or objects inside the cluster.

    Write remote paths as s3://BUCKET/KEY; - is stdin or stdout. A TARGET ending in /, a
    bucket, or an existing directory receives the sources under their own names. With -r,
    what is under each SOURCE directory goes under TARGET."""
    if len(paths) < 2:
        fail("cp needs a SOURCE and a TARGET (e.g. cp file.txt s3://bucket/)", 2)
    *sources, target = _locations(paths)
    run_copy(s3, sources, target, recursive=recursive, content_type=content_type)


@click.command()
@click.argument("paths", nargs=-1, required=True)
@recursive_option
@content_type_option
@connection_options
def mv(s3: S3, paths: tuple[str, ...], recursive: bool, content_type: str | None) -> None:
    """Move SOURCE... to TARGET: copy, then delete each source once its copy is complete.

    Paths as for cp; stdin and stdout cannot be moved."""
    if len(paths) < 2:
        fail("mv needs a SOURCE and a TARGET (e.g. mv file.txt s3://bucket/)", 2)
    *sources, target = _locations(paths)
    if any(isinstance(p, Local) and p.stdio for p in (*sources, target)):
        fail("mv cannot move stdin or stdout (-): use cp", 2)
    run_copy(s3, sources, target, recursive=recursive, move=True, content_type=content_type)


@click.command()
@click.argument("file", type=click.Path(allow_dash=True))
@click.argument("target")
@recursive_option
@content_type_option
@connection_options
def put(s3: S3, file: str, target: str, recursive: bool, content_type: str | None) -> None:
    """Upload FILE (or - for stdin) to BUCKET/KEY; BUCKET or BUCKET/PREFIX/ keeps the file's
    name. Above 8 MiB it goes up as a multipart upload in parallel parts."""
    try:
        dest = parse_remote(target)
    except UsageError as exc:
        fail(str(exc), 2)
    run_copy(s3, [Local(file)], dest, recursive=recursive, content_type=content_type)


@click.command()
@click.argument("source")
@click.argument("dest", type=click.Path(allow_dash=True))
@recursive_option
@connection_options
def get(s3: S3, source: str, dest: str, recursive: bool) -> None:
    """Download BUCKET/KEY to DEST: a file, a directory (an existing one, or any path ending
    in /), or - for stdout. Missing parent directories are made. The file is written under a
    temporary name and renamed at the end, so DEST is never left half-written."""
    try:
        remote = parse_remote(source, need_key=not recursive)
    except UsageError as exc:
        fail(str(exc), 2)
    run_copy(s3, [remote], Local(dest), recursive=recursive)


@click.command()
@click.argument("targets", nargs=-1, required=True)
@connection_options
def cat(s3: S3, targets: tuple[str, ...]) -> None:
    """Write the objects BUCKET/KEY... to stdout, one after the other."""
    try:
        remotes: list[Remote] = [parse_remote(t, need_key=True) for t in targets]
    except UsageError as exc:
        fail(str(exc), 2)
    failed = False
    with bars(enabled=False) as progress:
        runner = Runner(s3, progress, report=lambda line: None)
        for remote in remotes:  # like cat(1): a missing one is reported, the rest still go
            failed |= bool(runner.run([Job(remote, Local("-"))]).failures)
    if failed:
        sys.exit(1)


COMMANDS = [cp, mv, put, get, cat]

__all__ = ["COMMANDS", "run_copy"]
