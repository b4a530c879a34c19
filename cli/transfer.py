"""Running copy jobs through s3transfer: uploads, downloads, server-side copies, and moves.

What a user can count on:

- **A download never leaves a half-written file.** It goes to ``.NAME.minigrid-XXXXXXXX.part``
  next to the target, is flushed and fsync'ed, and only then renamed over the target (which
  keeps an existing target's permissions). Missing parent directories are made first, as the
  aws cli and ``mc`` do, and removed again if the download fails and leaves them empty.
- **An upload is atomic on the server.** A single PUT or a multipart upload becomes visible
  whole, or not at all; an interrupted multipart upload is aborted.
- **A move deletes its source only after the copy is complete.**
- **Ctrl-C** cancels what is in flight, removes the temporary files, and raises
  :class:`Interrupted` naming what is unchanged; the command exits 130. Transfer threads get
  :data:`CANCEL_GRACE` seconds to stop (a part in flight against a stalled server may not
  stop at all, and then the process exits without waiting for it).
- A failed job is reported and the others go on; the command then exits 1.

At most :data:`WINDOW` jobs are in flight at once, which bounds open temporary files and
memory however many objects a recursive copy finds.
"""

from __future__ import annotations

import contextlib
import mimetypes
import os
import secrets
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import click
from s3transfer.futures import TransferFuture
from s3transfer.manager import TransferManager
from s3transfer.subscribers import BaseSubscriber

from cli.errors import Interrupted, S3ClientError, StdoutClosed, describe
from cli.locations import Job, Local, PlanError, Remote
from cli.progress import Bar, Bars
from cli.s3client import CONCURRENCY, S3, translate

WINDOW = 2 * CONCURRENCY
CANCEL_GRACE = 5.0
#: How often the main thread looks up from waiting for a transfer (see _wait_interruptibly).
POLL = 0.05
PART_SUFFIX = ".part"


def temp_name(target: Path) -> Path:
    """Where a download to ``target`` is written until it is complete."""
    return target.with_name(f".{target.name}.minigrid-{secrets.token_hex(4)}{PART_SUFFIX}")


def make_parents(folder: Path) -> list[Path]:
    """Make ``folder`` and its parents, or say which path is in the way; the directories it
    made, outermost first."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()][::-1]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()),
                       folder)  # fmt: skip
        raise OSError(exc.errno, f"cannot make directory {folder}: {blocker} is a file, "
                                 f"in the way") from exc  # fmt: skip
    except OSError as exc:
        raise OSError(exc.errno, f"cannot make directory {folder}: {exc.strerror}") from exc
    return missing


def remove_empty(folders: Iterable[Path]) -> None:
    """Remove the directories a failed download made, deepest first, if nothing is in them."""
    for folder in sorted(set(folders), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()


class _StdoutWriter:
    """stdout for s3transfer: written in order, never seeked (it may be a pipe, or a file
    that already holds other output)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream

    def write(self, data: bytes) -> int:
        return self._stream.write(data)


class _Watch(BaseSubscriber):  # type: ignore[misc]
    """Feeds s3transfer's callbacks to the job's bar; hands it sizes a listing already knew."""

    def __init__(self, job: Job, bar: Bar) -> None:
        self._job = job
        self.bar = bar
        #: Bytes through so far (the size of an upload from stdin, which nobody knew).
        self.transferred = 0

    def on_queued(self, future: TransferFuture, **kwargs: Any) -> None:
        if self._job.size is not None and self._job.kind != "upload":
            future.meta.provide_transfer_size(self._job.size)
            if self._job.etag:
                future.meta.provide_object_etag(self._job.etag)

    def on_progress(self, future: TransferFuture, bytes_transferred: int, **kwargs: Any) -> None:
        if future.meta.size is not None:
            self.bar.set_total(future.meta.size)
        self.transferred += bytes_transferred
        self.bar.advance(bytes_transferred)


@dataclass
class _Running:
    """A job in flight: its future, and for a download the temporary file."""

    job: Job
    future: TransferFuture
    watch: _Watch
    temp: Path | None = None
    handle: IO[bytes] | None = None

    def discard(self) -> None:
        """Close and remove the temporary file (after a failure or Ctrl-C)."""
        if self.handle is not None:
            with contextlib.suppress(OSError, ValueError):
                self.handle.close()
        if self.temp is not None:
            with contextlib.suppress(FileNotFoundError):
                self.temp.unlink()
            self.temp = None


@dataclass
class Summary:
    done: int = 0
    bytes: int = 0
    #: (job, why); job None when planning failed (a recursive listing).
    failures: list[tuple[Job | None, str]] = field(default_factory=list)


class Runner:
    """Runs jobs through one s3transfer manager and reports each one as it ends."""

    def __init__(self, s3: S3, bars: Bars, *, move: bool = False,
                 content_type: str | None = None,
                 report: Callable[[str], None] | None = None) -> None:  # fmt: skip
        self.s3 = s3
        self.bars = bars
        self.move = move
        self.content_type = content_type
        self.report = report or (lambda line: click.echo(line))
        self.summary = Summary()
        #: Directories made for downloads; those left empty at the end are removed.
        self._made: list[Path] = []

    def run(self, jobs: Iterable[Job]) -> Summary:
        """Run every job; Ctrl-C raises :class:`Interrupted` once the cleanup is done."""
        manager = self.s3.transfer_manager()
        in_flight: deque[_Running] = deque()
        try:
            try:
                for job in jobs:
                    running = self._start(manager, job)
                    if running is not None:
                        in_flight.append(running)
                    while len(in_flight) >= WINDOW:
                        self._finish(in_flight[0])
                        in_flight.popleft()
            except PlanError as exc:  # the transfers already started still finish
                self.summary.failures.append((None, str(exc)))
                click.echo(f"error: {exc}", err=True)
            while in_flight:
                self._finish(in_flight[0])
                in_flight.popleft()
        except KeyboardInterrupt:
            stuck = _cancel(manager, in_flight)
            raise Interrupted(self._unchanged(in_flight), hard=stuck) from None
        except BaseException:
            _cancel(manager, in_flight)
            raise
        finally:
            remove_empty(self._made)  # only what nothing was written into
        manager.shutdown()
        return self.summary

    # --- one job ------------------------------------------------------------------------------

    def _start(self, manager: TransferManager, job: Job) -> _Running | None:
        if job.refused:
            self._fail(job, job.refused)
            return None
        label = _short(job.dest if job.kind == "upload" else job.source)
        try:
            if job.kind == "upload":
                return self._upload(manager, job, label)
            if job.kind == "download":
                return self._download(manager, job, label)
            return self._copy(manager, job, label)
        except OSError as exc:
            self._fail(job, _os_reason(exc))
            return None

    def _upload(self, manager: TransferManager, job: Job, label: str) -> _Running:
        assert isinstance(job.source, Local) and isinstance(job.dest, Remote)
        source: Any = sys.stdin.buffer if job.source.stdio else job.source.path
        if not job.source.stdio:
            with open(job.source.path, "rb"):  # unreadable files fail here, clearly
                pass
        content_type = self.content_type or _guess_type(job.source.path)
        watch = _Watch(job, self.bars.add(f"put {label}", None if job.source.stdio else job.size))
        future = manager.upload(source, job.dest.bucket, job.dest.key,
                                extra_args={"ContentType": content_type},
                                subscribers=[watch])  # fmt: skip
        return _Running(job, future, watch)

    def _download(self, manager: TransferManager, job: Job, label: str) -> _Running:
        assert isinstance(job.source, Remote) and isinstance(job.dest, Local)
        watch = _Watch(job, self.bars.add(f"get {label}", job.size))
        if job.dest.stdio:
            sink = _StdoutWriter(sys.stdout.buffer)
            future = manager.download(job.source.bucket, job.source.key, sink,
                                      subscribers=[watch])  # fmt: skip
            return _Running(job, future, watch)
        target = Path(job.dest.path)
        if target.is_dir():
            raise IsADirectoryError(0, f"{target} is a directory")
        self._made += make_parents(target.parent)
        temp = temp_name(target)
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot write into {target.parent}: {exc.strerror}") from exc
        handle = os.fdopen(fd, "wb")
        with contextlib.suppress(FileNotFoundError):  # an overwrite keeps the file's mode
            os.chmod(fd, target.stat().st_mode & 0o7777)
        running = _Running(job, None, watch, temp, handle)
        try:
            running.future = manager.download(job.source.bucket, job.source.key, handle,
                                              subscribers=[watch])  # fmt: skip
        except BaseException:
            running.discard()
            raise
        return running

    def _copy(self, manager: TransferManager, job: Job, label: str) -> _Running:
        assert isinstance(job.source, Remote) and isinstance(job.dest, Remote)
        watch = _Watch(job, self.bars.add(f"copy {label}", job.size))
        future = manager.copy({"Bucket": job.source.bucket, "Key": job.source.key},
                              job.dest.bucket, job.dest.key, subscribers=[watch])  # fmt: skip
        return _Running(job, future, watch)

    def _finish(self, running: _Running) -> None:
        job = running.job
        try:
            _wait_interruptibly(running.future)
            running.future.result()
            size = running.future.meta.size
            size = running.watch.transferred if size is None else size
            if running.temp is not None and running.handle is not None:
                _commit(running.handle, running.temp, Path(str(job.dest)))
                running.temp = None
        except Exception as exc:  # every failure is reported, and the other jobs go on
            running.discard()
            if isinstance(exc, BrokenPipeError) and isinstance(job.dest, Local):
                raise StdoutClosed from exc
            self._fail(job, self._reason(job, exc))
            return
        finally:
            running.watch.bar.finish()
        moved = self._remove_source(job) if self.move else None
        if moved is not None:
            self._fail(job, f"copied, but the source was not removed: {moved}")
            return
        self.summary.done += 1
        self.summary.bytes += size
        self._done(job, size)

    def _remove_source(self, job: Job) -> str | None:
        try:
            if isinstance(job.source, Remote):
                self.s3.delete(job.source.bucket, job.source.key)
            elif not job.source.stdio:
                os.unlink(job.source.path)
        except S3ClientError as exc:
            return describe(exc, job.source.bucket, job.source.key)  # type: ignore[union-attr]
        except OSError as exc:
            return _os_reason(exc)
        return None

    def _done(self, job: Job, size: int) -> None:
        line = f"{_arrow(job)}: {size} bytes"
        if isinstance(job.dest, Remote):
            etag = self.s3.stored_etag(job.dest.bucket, job.dest.key)
            line += f", etag {etag}" if etag else ""
        self.report(line + (" (moved)" if self.move else ""))

    def _fail(self, job: Job, reason: str) -> None:
        self.summary.failures.append((job, reason))
        click.echo(f"error: {_arrow(job)}: {reason}", err=True)

    def _reason(self, job: Job, exc: BaseException) -> str:
        translated = translate(exc, self.s3.endpoint.url)
        if translated is None:
            if isinstance(exc, OSError):
                return _os_reason(exc)
            return f"{type(exc).__name__}: {exc}"
        remote = job.source if isinstance(job.source, Remote) else job.dest
        assert isinstance(remote, Remote)
        if job.kind == "copy" and translated.code == "NoSuchBucket":
            assert isinstance(job.dest, Remote)
            remote = job.dest if not self.s3.bucket_exists(job.dest.bucket) else remote
        translated = self.s3.named(translated, remote.bucket, remote.key)
        if translated.code == "PreconditionFailed" and job.kind != "upload":
            # s3transfer sends If-Match with the ETag it started from on every ranged GET.
            return (f"{remote} changed while it was being copied, so nothing was written; "
                    f"run the command again (PreconditionFailed)")  # fmt: skip
        return describe(translated, remote.bucket, remote.key)

    def _unchanged(self, in_flight: Iterable[_Running]) -> list[str]:
        lines = [f"{_short(r.job.dest)} is unchanged (the {r.job.kind} did not complete)"
                 for r in in_flight]  # fmt: skip
        if self.summary.done:
            lines.append(f"{self.summary.done} transfer(s) had completed before")
        return lines or ["nothing was being transferred"]


def _commit(handle: IO[bytes], temp: Path, target: Path) -> None:
    """Make a finished download durable, then put it in place in one rename."""
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()
    os.replace(temp, target)


def _wait_interruptibly(future: TransferFuture) -> None:
    """Wait for ``future`` in short sleeps. The kernel may deliver Ctrl-C's SIGINT to any
    thread; when a transfer thread gets it, a main thread blocked in an untimed wait (as
    ``TransferFuture.result`` is) never returns to run Python's handler, and Ctrl-C does
    nothing. A sleep ends within :data:`POLL` and the pending KeyboardInterrupt is raised."""
    while not future.done():
        time.sleep(POLL)


def _cancel(manager: TransferManager, in_flight: Iterable[_Running]) -> bool:
    """Cancel everything in flight and remove the temporary files; True if some transfer
    thread is still stuck after :data:`CANCEL_GRACE` (the process must not wait for it)."""
    running = list(in_flight)
    try:
        for item in running:
            if item.future is not None:
                item.future.cancel()
        closer = threading.Thread(target=manager.shutdown, name="minigrid-cancel", daemon=True,
                                  kwargs={"cancel": True, "cancel_msg": "interrupted"})  # fmt: skip
        closer.start()
        closer.join(CANCEL_GRACE)
        return closer.is_alive()
    finally:
        for item in running:
            item.discard()


def _guess_type(path: str) -> str:
    guessed, _ = mimetypes.guess_type(path)
    return guessed or "application/octet-stream"


def _os_reason(exc: OSError) -> str:
    if exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc.strerror or exc)


def _short(location: Local | Remote, stdio: str = "stdout") -> str:
    return stdio if isinstance(location, Local) and location.stdio else str(location)


def _arrow(job: Job) -> str:
    return f"{_short(job.source, 'stdin')} -> {_short(job.dest)}"


__all__ = ["CANCEL_GRACE", "PART_SUFFIX", "Runner", "Summary", "make_parents", "remove_empty",
           "temp_name"]
