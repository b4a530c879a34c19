"""Foreground traffic and heal measurement, shared by the labs and ``benchmarks/heal.py``.

- :func:`s3_client`: a boto3 client for one node (path-style, no retries: every failure counts);
- :func:`fill`: a bucket of random objects;
- :class:`Reader`: a thread that GETs random objects one at a time and records each GET;
- :func:`heal_drive`: wipe one drive and follow its drive heal to the end (or for a window),
  sampling the healing node while it runs.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cli.adminclient import AdminClient, AdminError
from cli.cluster import ClusterFile

MIB = 1 << 20
PRESETS = ("fastest", "fast", "default", "slow", "slowest")


def s3_client(cluster: ClusterFile, node: int = 0, timeout: float = 10.0,
              pool: int = 64) -> Any:  # fmt: skip
    """A boto3 client for one node: path-style, no retries (a lab counts every failure)."""
    import boto3
    from botocore.config import Config

    config = cluster.config
    return boto3.client(
        "s3", endpoint_url=cluster.urls[node], region_name=str(config.get("region", "us-east-1")),
        aws_access_key_id=config["access_key"], aws_secret_access_key=config["secret_key"],
        verify=cluster.ca or True,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                      connect_timeout=timeout, read_timeout=timeout,
                      max_pool_connections=pool),
    )  # fmt: skip


def fill(cluster: ClusterFile, bucket: str, count: int, size: int, node: int = 0,
         prefix: str = "obj/") -> dict[str, bytes]:  # fmt: skip
    """``count`` random objects of ``size`` bytes in a new bucket; returns them by key."""
    s3 = s3_client(cluster, node, timeout=120)
    s3.create_bucket(Bucket=bucket)
    rng = random.Random(size + count)
    objects = {}
    for n in range(count):
        body = b"".join(rng.randbytes(min(MIB, size - at)) for at in range(0, size, MIB))
        s3.put_object(Bucket=bucket, Key=f"{prefix}{n:04d}", Body=body)
        objects[f"{prefix}{n:04d}"] = body
    return objects


@dataclass(frozen=True)
class Get:
    start: float
    seconds: float
    ok: bool


class Reader(threading.Thread):
    """GETs random objects through one node, one at a time, and records each one.

    ``objects`` maps keys to their bytes (a GET is ok only if it returns them exactly), or to
    None (any answer will do). ``clock`` gives the start times (the lab's axis)."""

    def __init__(self, cluster: ClusterFile, bucket: str, objects: Mapping[str, bytes | None],
                 *, node: int = 0, timeout: float = 10.0,
                 clock: Callable[[], float] = time.monotonic,
                 on_get: Callable[[Get], None] | None = None) -> None:  # fmt: skip
        super().__init__(daemon=True, name=f"reader via node {node}")
        self.bucket, self.objects = bucket, objects
        self.s3 = s3_client(cluster, node, timeout=timeout)
        self.clock = clock
        self.on_get = on_get
        self.gets: list[Get] = []
        self._halt = threading.Event()

    def run(self) -> None:
        rng = random.Random(7)
        keys = sorted(self.objects)
        while not self._halt.is_set():
            key = rng.choice(keys)
            began = self.clock()
            try:
                body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
                expected = self.objects[key]
                ok = expected is None or body == expected
            except Exception:  # every failure is counted; the workload goes on
                ok = False
            get = Get(began, self.clock() - began, ok)
            self.gets.append(get)
            if self.on_get is not None:
                self.on_get(get)

    def stop(self) -> None:
        self._halt.set()
        self.join(60)

    def between(self, start: float, end: float) -> list[Get]:
        """The GETs that started in ``[start, end)``."""
        return [g for g in list(self.gets) if start <= g.start < end]

    def wait_gets(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while len(self.gets) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return len(self.gets) >= count


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (nearest rank) of ``values``; None for none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def gets_summary(gets: list[Get]) -> dict[str, Any]:
    """Counts and latencies of a window of GETs (seconds)."""
    ok = [g.seconds for g in gets if g.ok]
    return {"ok": len(ok), "failed": sum(1 for g in gets if not g.ok),
            "p50_s": rounded(percentile(ok, 0.5)), "p99_s": rounded(percentile(ok, 0.99)),
            "worst_s": rounded(max(ok, default=None))}  # fmt: skip


@dataclass
class HealRun:
    """One drive heal, measured: from the wipe until the drive healer's tracker is gone."""

    seconds: float = 0.0
    finished: bool = False
    objects_healed: int = 0
    bytes_written: int = 0  # shard bytes written to the healed drive
    loop_lag: list[float] = field(default_factory=list)  # the healing node's, while it ran
    loop_busy: list[float] = field(default_factory=list)


def _heal_status(admin: AdminClient, node: int) -> tuple[dict[str, Any] | None,
                                                         dict[tuple[str, float], Any]]:
    """(the tracker of the drive heal running on ``node`` or None, the finished heals by
    (drive, start))."""
    status = admin.call(node, "GET", "/heal/status")
    running = next(iter(status["drives_healing"].values()), None)
    finished = {(drive, float(t["started"])): t
                for drive, t in status.get("drives_healed", {}).items()}  # fmt: skip
    return running, finished


def heal_drive(admin: AdminClient, node: int, wipe: Callable[[], None], *,
               window: float | None = None, timeout: float = 600.0,
               stop_when: Callable[[], bool] | None = None) -> HealRun:  # fmt: skip
    """Wipe a drive of ``node`` (``wipe``) and follow the drive heal that refills it.

    It ends when the heal has finished (``finished``), after ``window`` seconds of heal (a
    slow preset measured over a window), or when ``stop_when`` says so."""
    run = HealRun()
    seen: dict[str, Any] = {}
    _, before = _heal_status(admin, node)
    wipe()
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            info = admin.call(node, "GET", "/info")
            state, finished = _heal_status(admin, node)
        except AdminError:
            state, finished, info = None, before, {}
        if "loop_lag_s" in info:
            run.loop_lag.append(float(info["loop_lag_s"]))
        if info.get("loop_busy_s") is not None:
            run.loop_busy.append(float(info["loop_busy_s"]))
        new = [t for key, t in finished.items() if key not in before]
        if state is not None:
            seen = state
        elif new:
            run.finished = True
            seen = new[0]
            break
        if (seen and window is not None and time.monotonic() - started > window) or (
                stop_when is not None and stop_when()):  # fmt: skip
            break
        time.sleep(0.25)
    run.seconds = time.monotonic() - started
    run.objects_healed = int(seen.get("objects_healed", 0))
    run.bytes_written = int(seen.get("bytes_healed", 0))
    return run


def finish_heals(admin: AdminClient, nodes: int, node: int, timeout: float = 300.0) -> None:
    """Speed every node up to ``fastest`` and wait for ``node``'s drive heal to end."""
    for each in range(nodes):
        admin.call(each, "POST", "/scanner", speed="fastest")
    deadline = time.monotonic() + timeout
    while _heal_status(admin, node)[0] is not None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"node {node}'s drive heal did not finish in {timeout:.0f}s")
        time.sleep(0.25)


__all__ = [
    "MIB",
    "PRESETS",
    "Get",
    "HealRun",
    "Reader",
    "fill",
    "finish_heals",
    "gets_summary",
    "heal_drive",
    "percentile",
    "rounded",
    "s3_client",
]
