"""A real node under attack: two storage nodes and one hostile peer, each in its own process.

The cluster has three members. ``target`` and ``witness`` are real nodes (``minigrid node run``:
the grid, drives, S3). ``hostile`` is listed in the configuration like any node, with one drive,
but what runs there is :mod:`tests.hostile.peer`: a grid Manager that holds the cluster secret
and writes raw frames on its session to the target. Nine drives make one erasure set with
parity 4, so the eight drives of the two real nodes carry every put and get on their own.

While a test attacks, :meth:`HostileGrid.watch` checks what must not change: the target keeps
serving S3, its session to the witness stays up (no reconnect), nothing it logs is a traceback,
and its peak RSS (``VmHWM``, reset at the start of each test) stays under :data:`RSS_BOUND`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import boto3
from botocore.config import Config

from cli.signed import SignedClient

T = TypeVar("T")
MIB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]
#: How much the target's peak RSS may grow during one attack. The node keeps at most
#: GridConfig.max_held_bytes (128 MiB) plus the out-queue (max_queue_bytes, 32 MiB) of live data
#: for one peer; on top of that come socket buffers, tasks and allocator overhead (glibc's
#: per-thread arenas of the drive thread pool: measured up to +250 MiB in all, +165 MiB with
#: MALLOC_ARENA_MAX=1). Before the limits the same attacks grew it by as much as they sent
#: (+600 MiB for 600 partial payloads), without bound.
RSS_GROWTH_BOUND = 384 * MIB
#: And it must never pass this, whatever the starting point.
RSS_BOUND = 640 * MIB
START_TIMEOUT = 30.0
INFO_PATH = "/minigrid/admin/v1/info"


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in bytes."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (``clear_refs`` 5); False if the kernel refuses."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


class HostilePeer:
    """The hostile child process and its command pipe (see :mod:`tests.hostile.peer`)."""

    def __init__(self, sock: socket.socket, host: str, target: str, secret: str,
                 log_path: Path) -> None:  # fmt: skip
        self.host = host
        self._sock = sock
        self.log_path = log_path
        self.args = [
            sys.executable, "-m", "tests.hostile.peer", "--fd", str(sock.fileno()),
            "--host", host, "--target", target, "--secret", secret,
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            self.args, cwd=ROOT, pass_fds=[self._sock.fileno()], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._log, env=_node_env(),
        )  # fmt: skip
        first = self._read(START_TIMEOUT)
        assert first.get("ready"), first

    def command(self, cmd: str, timeout: float = 60.0, **fields: Any) -> dict[str, Any]:
        """Send one command and return its answer; fail on ``ok: false``."""
        answer = self.try_command(cmd, timeout, **fields)
        assert answer["ok"], f"hostile peer: {cmd} failed: {answer.get('error')}"
        return answer

    def try_command(self, cmd: str, timeout: float = 60.0, **fields: Any) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, **fields}).encode() + b"\n")
        self.proc.stdin.flush()
        return self._read(timeout)

    def attack(self, name: str, timeout: float = 60.0, **args: Any) -> dict[str, Any]:
        return self.command("attack", timeout, name=name, args=args)

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise AssertionError(f"the hostile peer did not answer within {timeout:.0f}s")
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.poll()
            raise AssertionError(f"the hostile peer exited ({code}); see {self.log_path}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.stdin is not None:
                with contextlib.suppress(OSError):
                    self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
        if self._log is not None:
            self._log.close()


def _node_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MINIGRID_", "AWS_"))}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Baseline:
    """What the target looked like when a test started."""

    witness_reconnects: int
    rss: int
    log_offset: int
    peak_reset: bool


@dataclass
class HostileGrid:
    """Target, witness and hostile peer; see the module docstring."""

    root: Path
    sockets: list[socket.socket] = field(default_factory=list)
    nodes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    hostile: HostilePeer | None = None
    bucket: str = "hostile-grid"

    # --- setup --------------------------------------------------------------------------------

    def start(self) -> None:
        self.sockets = [listening_socket() for _ in range(3)]
        urls = [f"http://127.0.0.1:{s.getsockname()[1]}" for s in self.sockets]
        drives = [[str(self.root / f"n{n}" / f"d{d}") for d in range(4 if n < 2 else 1)]
                  for n in range(3)]  # fmt: skip
        self.config = {
            "nodes": [{"url": url, "drives": ds} for url, ds in zip(urls, drives, strict=True)],
            "secret": secrets.token_hex(16),
            "access_key": "HOSTILETEST", "secret_key": secrets.token_hex(16),
            "admin_access_key": "HOSTILEADMIN", "admin_secret_key": secrets.token_hex(16),
            "profile": "fast",
        }  # fmt: skip
        path = self.root / "config.json"
        path.write_text(json.dumps(self.config))
        (self.root / "logs").mkdir(exist_ok=True)
        for node in range(2):
            sock = self.sockets[node]
            with open(self.log_path(node), "ab") as log:
                self.nodes.append(subprocess.Popen(
                    [sys.executable, "-m", "cli.main", "node", "run", "--config", str(path),
                     "--node", str(node), "--listen-fd", str(sock.fileno())],
                    cwd=ROOT, pass_fds=[sock.fileno()], stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, env=_node_env(),
                ))  # fmt: skip
        self.hostile = HostilePeer(self.sockets[2], self.host(2), self.host(0),
                                   self.config["secret"], self.log_path(2))  # fmt: skip
        self.hostile.start()
        wait_for(self._all_connected, START_TIMEOUT, "the target to see both peers connected")
        self.hostile.command("wait")
        self.s3().create_bucket(Bucket=self.bucket)

    def stop(self) -> None:
        if self.hostile is not None:
            self.hostile.stop()
        for proc in self.nodes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.nodes:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for sock in self.sockets:
            sock.close()

    # --- looking at the target ----------------------------------------------------------------

    def url(self, node: int) -> str:
        return str(self.config["nodes"][node]["url"])

    def host(self, node: int) -> str:
        return self.url(node).split("://", 1)[1]

    def log_path(self, node: int) -> Path:
        return self.root / "logs" / f"node{node}.log"

    @property
    def target_pid(self) -> int:
        return self.nodes[0].pid

    @property
    def target_drive(self) -> str:
        return str(self.config["nodes"][0]["drives"][0])

    def info(self) -> dict[str, Any]:
        client = SignedClient(self.url(0), self.config["admin_access_key"],
                          self.config["admin_secret_key"], timeout=10)  # fmt: skip
        answer: dict[str, Any] = json.loads(client.call("GET", INFO_PATH))
        return answer

    def session(self, node: int) -> dict[str, Any]:
        """The target's statistics of its session with ``node`` (1 witness, 2 hostile)."""
        grid: dict[str, Any] = self.info()["grid"]
        return dict(grid[self.host(node)])

    def _all_connected(self) -> bool:
        try:
            grid = self.info()["grid"]
        except Exception:  # not serving yet
            return False
        return all(grid.get(self.host(n), {}).get("state") == "connected" for n in (1, 2))

    def s3(self) -> Any:
        return boto3.client(
            "s3", endpoint_url=self.url(0), aws_access_key_id=self.config["access_key"],
            aws_secret_access_key=self.config["secret_key"], region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                          connect_timeout=10, read_timeout=30),
        )  # fmt: skip

    def log_text(self, node: int = 0, offset: int = 0) -> str:
        with open(self.log_path(node), "rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace")

    # --- the invariants -----------------------------------------------------------------------

    def baseline(self) -> Baseline:
        return Baseline(
            witness_reconnects=int(self.session(1)["reconnects"]),
            rss=proc_status(self.target_pid)["VmRSS"],
            log_offset=self.log_path(0).stat().st_size,
            peak_reset=reset_peak_rss(self.target_pid),
        )

    @contextlib.contextmanager
    def watch(self) -> Iterator[Baseline]:
        """Check, after the block, that the attack hurt nobody but the hostile session."""
        before = self.baseline()
        yield before
        self.check(before)

    def check(self, before: Baseline) -> None:
        assert self.nodes[0].poll() is None, "the target node died"
        peak = proc_status(self.target_pid)["VmHWM"]
        print(f"\ntarget RSS: {before.rss / MIB:.0f} MiB at the start, peak "
              f"{peak / MIB:.0f} MiB (peak reset: {before.peak_reset})")  # fmt: skip
        if before.peak_reset:
            assert peak - before.rss <= RSS_GROWTH_BOUND, (
                f"target RSS peaked {(peak - before.rss) / MIB:.0f} MiB above its start"
            )
        assert peak <= RSS_BOUND, f"target RSS peaked at {peak / MIB:.0f} MiB"
        witness = self.session(1)
        assert witness["state"] == "connected", witness
        assert witness["reconnects"] == before.witness_reconnects, (
            f"the session to the witness was cut: {witness['last_cause']}"
        )
        self.check_s3()
        log = self.log_text(0, before.log_offset)
        assert "Traceback" not in log, f"the target logged a traceback:\n{log[-4000:]}"
        # The hostile peer may have been cut off; it must be able to come back.
        assert self.hostile is not None
        self.hostile.command("pause", on=False)
        self.hostile.command("wait")
        self.hostile.command("roundtrip")

    def check_s3(self) -> None:
        body = secrets.token_bytes(300_000)
        key = f"check-{secrets.token_hex(4)}"
        s3 = self.s3()
        s3.put_object(Bucket=self.bucket, Key=key, Body=body)
        assert s3.get_object(Bucket=self.bucket, Key=key)["Body"].read() == body
