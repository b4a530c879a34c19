"""Private and durable data on a real cluster: 4 node processes with fsync on (the default).

- After puts through S3, every file under every drive, every node log and ``cluster.json``
  is 0600 and every directory 0700 (the nodes run with umask 077; LocalDrive also sets the
  modes itself).
- strace, attached to a node process, sees the commit path's syncs in order on each of that
  node's drives: the shard fdatasync'ed and its directory fsync'ed, the data directory renamed
  into the object directory, every directory whose entries changed fsync'ed, the metadata
  fdatasync'ed, renamed over the old one, and the object directory fsync'ed again.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.cluster.helpers import MIB, LocalCluster, payload

_SYSCALL = re.compile(r"^\d+\s+(fdatasync|fsync|rename|renameat|renameat2)\((.*)")
_FD_PATH = re.compile(r"^\d+<(.*?)>")
_RENAME = re.compile(r'"((?:[^"\\]|\\.)*)", (?:AT_FDCWD(?:<[^>]*>)?, )?"((?:[^"\\]|\\.)*)"')

Event = tuple[str, str]


def test_files_dirs_and_logs_are_owner_only(cluster: LocalCluster) -> None:
    s3 = cluster.boto()
    s3.create_bucket(Bucket="private")
    big = payload(2 * MIB + 5, seed=3)
    s3.put_object(Bucket="private", Key="deep/big.bin", Body=big)
    s3.put_object(Bucket="private", Key="small.txt", Body=b"inline")
    config = json.loads(cluster.admin().call("GET", "/minigrid/admin/v1/config"))
    assert config["fsync"] == "on"  # durable by default

    checked: list[Path] = []
    wrong: list[tuple[str, str]] = []
    tops = [cluster.root / "logs", cluster.root / "cluster.json"]
    tops += sorted(cluster.root.glob("node*"))
    for top in tops:
        for path in [top, *top.rglob("*")]:
            info = path.lstat()
            want = 0o700 if stat.S_ISDIR(info.st_mode) else 0o600
            checked.append(path)
            if stat.S_IMODE(info.st_mode) != want:
                wrong.append((str(path), oct(stat.S_IMODE(info.st_mode))))
    shards = [p for p in checked if p.name == "shard"]
    logs = [p for p in checked if p.suffix == ".log"]
    assert len(shards) == 8 and len(logs) == 4  # what was checked is what was written
    assert wrong == []


class Tracer:
    """strace attached to every thread of a running process, until :meth:`stop`."""

    def __init__(self, pid: int, out: Path) -> None:
        threads = len(os.listdir(f"/proc/{pid}/task"))
        self.out = out
        self.process = subprocess.Popen(
            ["strace", "-f", "-y", "-s", "4096", "-o", str(out),
             "-e", "trace=fsync,fdatasync,rename,renameat,renameat2", "-p", str(pid)],
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        lines: queue.Queue[str] = queue.Queue()
        assert self.process.stderr is not None
        stderr = self.process.stderr
        self._reader = threading.Thread(target=lambda: [lines.put(line) for line in stderr])
        self._reader.start()
        attached = 0
        deadline = time.monotonic() + 20
        while attached < threads:  # the put must not start before every thread is traced
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                raise AssertionError(f"strace attached {attached} of {threads} threads") from None
            found = re.search(r"attached(?: with (\d+) threads)?", line)
            if found is not None:  # "Process N attached" or "... attached with 6 threads"
                attached += int(found.group(1) or 1)
            elif "Operation not permitted" in line:
                self.stop()
                pytest.skip(f"strace cannot attach here: {line.strip()}")

    def stop(self) -> list[Event]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            self.process.wait(timeout=20)
        self._reader.join(timeout=20)  # strace has exited: its stderr is at its end
        assert self.process.stderr is not None
        self.process.stderr.close()
        return parse_strace(self.out.read_text() if self.out.exists() else "")


def parse_strace(text: str) -> list[Event]:
    """The syncs and renames in strace's order, as ``(call, path or "src -> dst")``."""
    events: list[Event] = []
    for line in text.splitlines():
        found = _SYSCALL.match(line)
        if found is None:  # "<... resumed>" halves: the call was recorded where it started
            continue
        call, args = found.groups()
        if call.startswith("rename"):
            names = _RENAME.search(args)
            if names is not None:
                events.append(("rename", f"{names.group(1)} -> {names.group(2)}"))
        else:
            path = _FD_PATH.match(args)
            if path is not None:
                events.append((call, path.group(1)))
    return events


def in_order(events: list[Event], wanted: list[Event]) -> None:
    position = 0
    for event in wanted:
        try:
            position = events.index(event, position) + 1
        except ValueError:
            shown = "\n  ".join(f"{call} {path}" for call, path in events[-60:])
            raise AssertionError(f"{event} missing or out of order in:\n  {shown}") from None


def commits_on(events: list[Event], drive: str, obj: str) -> tuple[str, str]:
    """``(upload dir, data dir)`` of the one shard put of ``obj`` that landed on ``drive``."""
    pattern = re.compile(
        rf"^{re.escape(drive)}/\.minigrid\.sys/tmp/([0-9a-f]{{32}})/data -> "
        rf"{re.escape(obj)}/__mg\.data\.([0-9a-f]{{32}})$"
    )
    found = [m for call, path in events if call == "rename" and (m := pattern.match(path))]
    assert len(found) == 1, f"expected one data rename into {obj}, saw {len(found)}"
    upload, data_dir = found[0].groups()
    return f"{drive}/.minigrid.sys/tmp/{upload}", data_dir


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace to watch a node process")
def test_a_node_syncs_every_step_of_the_commit_path(cluster: LocalCluster, tmp_path: Path) -> None:
    s3 = cluster.boto()
    s3.create_bucket(Bucket="traced")
    data = payload(3 * MIB + 17, seed=4)
    tracer = Tracer(cluster.pid(0), tmp_path / "strace.out")
    try:
        s3.put_object(Bucket="traced", Key="dir/big", Body=data)
        s3.put_object(Bucket="traced", Key="small", Body=b"tiny")
    finally:
        events = tracer.stop()
    drives = [os.path.realpath(d) for d in cluster.config["nodes"][0]["drives"]]
    for drive in drives:
        bucket = f"{drive}/traced"
        obj = f"{bucket}/dir/big"
        small = f"{bucket}/small"
        upload, data_dir = commits_on(events, drive, obj)
        renames = [p for c, p in events if c == "rename" and p.endswith(f" -> {small}/__mg.meta")]
        assert len(renames) == 1, "the inline object's metadata was committed once"
        small_meta = renames[0].split(" -> ")[0]
        in_order(
            events,
            [
                ("fdatasync", f"{upload}/data/shard"),
                ("fsync", f"{upload}/data"),
                ("rename", f"{upload}/data -> {obj}/__mg.data.{data_dir}"),
                ("fsync", bucket),  # "dir" is new in the bucket,
                ("fsync", f"{bucket}/dir"),  # "big" is new in "dir",
                ("fsync", obj),  # the data dir is new in "big"
                ("fdatasync", f"{upload}/new.meta"),
                ("rename", f"{upload}/new.meta -> {obj}/__mg.meta"),  # the commit point
                ("fsync", obj),
                # The small object, put next, is inline: its data travels in the metadata.
                ("fsync", bucket),  # "small" is new in the bucket
                ("fdatasync", small_meta),
                ("rename", renames[0]),
                ("fsync", small),
            ],
        )


def test_node_run_makes_its_log_owner_only(tmp_path: Path) -> None:
    """``minigrid node run`` sets umask 077 first: a new log is 0600, an old one is tightened.

    The node is given a drive it cannot create (under a regular file), so it logs why and
    exits at once, after the log was opened."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    drives = ",".join(str(blocker / f"d{i}") for i in range(4))
    old_log = tmp_path / "old.log"
    old_log.write_text("from an earlier run\n")
    old_log.chmod(0o644)
    for log in (tmp_path / "new.log", old_log):
        done = subprocess.run(
            [sys.executable, "-m", "cli.main", "node", "run", "--nodes",
             f"http://127.0.0.1:1={drives}", "--node", "0", "--secret", "s", "--access-key",
             "a", "--secret-key", "b", "--listen", "127.0.0.1:0", "--log-file", str(log)],
            capture_output=True, text=True, timeout=60, env={**os.environ, "MINIGRID_FSYNC": "on"},
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert "cannot open drive" in log.read_text()
        assert stat.S_IMODE(log.stat().st_mode) == 0o600, log
