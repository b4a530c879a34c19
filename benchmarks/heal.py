"""Healing under load: heal speed at each preset against foreground latency and missed pings.

    python benchmarks/heal.py [--gib 1] [--window 30] [--quick]

A local cluster of 4 node processes x 2 drives (4+4, ``--fsync off``) on 127.0.0.1 is filled
with ``--gib`` of 8 MiB objects. Then, for each speed preset (fastest, fast, default, slow,
slowest), one drive of node 1 is wiped while a foreground client keeps reading random objects
through node 0, one GET at a time, and the node's drive healer refills it (no command: the same
path a replaced disk takes). For each preset the run reports:

- ``heal_mbps``: object data made whole again per second (objects healed x 8 MiB / time);
  ``drive_write_mbps``: shard bytes written to the healed drive per second (the figure MinIO's
  per-drive heal rates of 2-20 MB/s compare with). Slow presets are measured over
  ``--window`` seconds and then sped up to finish;
- ``get_p50_ms``/``get_p99_ms`` during the heal, next to ``idle_get_p50_ms``/``idle_get_p99_ms``
  measured in the same run with no heal (``p99_vs_idle``);
- ``missed_pings``: grid reconnects anywhere in the cluster during the heal (a connection that
  missed its pings long enough is dropped and redialled); ``disconnects``: grid sessions that
  ended anywhere in the cluster during the heal (redialled or not; a false disconnect of a
  live node counts here), with ``disconnect_causes`` (the last cause of each connection that
  lost one) and ``worst_silence_window_s`` (the longest silence any connection allowed its
  peer, which grows with the peer's reported loop lag); and ``worst_loop_lag_ms`` on the
  healing node (its own loop-lag monitor, sampled through the admin API).

Then the same heal at ``fastest`` runs on a second cluster started with
``--unsafe-inline-heal`` (hashing and erasure coding on the event loop), reported under
``unsafe``. Targets: at ``fastest`` heal >= 100 MB/s with zero missed pings; at ``default``
foreground p99 <= 1.5 x idle. One JSON object is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import boto3
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from cli.cluster import ClusterFile, cluster_up, stop_nodes

MIB = 1 << 20
OBJECT = 8 * MIB
PRESETS = ("fastest", "fast", "default", "slow", "slowest")
ADMIN = "/minigrid/admin/v1"
BASE = {"fsync": "off", "drive_check_interval": 0.5, "mrf_delay": 0.5, "scanner_interval": 5}


class Admin:
    """SigV4-signed admin API calls (botocore's signer: the admin API is not S3)."""

    def __init__(self, cluster: ClusterFile) -> None:
        config = cluster.config
        self.urls = cluster.urls
        self.credentials = Credentials(config["admin_access_key"], config["admin_secret_key"])

    def call(self, node: int, method: str, path: str, **query: str) -> Any:
        url = self.urls[node] + ADMIN + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        request = AWSRequest(method=method, url=url, data=b"")
        S3SigV4Auth(self.credentials, "s3", "us-east-1").add_auth(request)
        prepared = urllib.request.Request(url, method=method, headers=dict(request.headers))
        with urllib.request.urlopen(prepared, timeout=10) as response:
            return json.loads(response.read())

    def grid(self) -> list[dict[str, Any]]:
        """Every node's view of every grid connection."""
        return [
            conn
            for node in range(len(self.urls))
            for conn in self.call(node, "GET", "/info")["grid"].values()
        ]

    def reconnects(self) -> int:
        return sum(conn["reconnects"] for conn in self.grid())

    def disconnects(self) -> dict[str, tuple[int, str]]:
        """Sessions ended so far and the last cause, per ``local->remote`` connection (a node
        without the ``disconnects`` statistic counts its reconnects and a connection that is
        down)."""
        counts = {}
        for node, url in enumerate(self.urls):
            for remote, conn in self.call(node, "GET", "/info")["grid"].items():
                down = 0 if conn["state"] == "connected" else 1
                ended = conn.get("disconnects", conn["reconnects"] + down)
                counts[f"{url}->{remote}"] = (ended, str(conn.get("last_cause", "")))
        return counts


class Reader(threading.Thread):
    """Reads random objects through node 0, one at a time, recording each GET's latency."""

    def __init__(self, s3: Any, keys: list[str]) -> None:
        super().__init__(daemon=True)
        self.s3, self.keys = s3, keys
        self.latencies: list[float] = []
        self.errors = 0
        self._halt = threading.Event()

    def run(self) -> None:
        rng = random.Random(7)
        while not self._halt.is_set():
            started = time.perf_counter()
            try:
                self.s3.get_object(Bucket="bench", Key=rng.choice(self.keys))["Body"].read()
            except Exception:  # counted and reported; the run goes on
                self.errors += 1
                continue
            self.latencies.append(time.perf_counter() - started)

    def stop(self) -> list[float]:
        self._halt.set()
        self.join()
        return self.latencies


def percentiles(latencies: list[float]) -> tuple[float, float]:
    ordered = sorted(latencies)
    if not ordered:
        return float("nan"), float("nan")
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered) * 1000, p99 * 1000


def start(root: Path, options: dict[str, Any]) -> ClusterFile:
    return cluster_up(root, nodes=4, drives=2, base_port=0, parity=4, options=options).cluster


def fill(cluster: ClusterFile, count: int) -> tuple[Any, list[str]]:
    config = cluster.config
    s3 = boto3.client(
        "s3", endpoint_url=cluster.urls[0], region_name="us-east-1",
        aws_access_key_id=config["access_key"], aws_secret_access_key=config["secret_key"],
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
    )  # fmt: skip
    s3.create_bucket(Bucket="bench")
    pattern = os.urandom(OBJECT + 4096)
    keys = []
    for n in range(count):
        body = pattern[n % 4096 : n % 4096 + OBJECT]
        s3.put_object(Bucket="bench", Key=f"obj/{n:05d}", Body=body)
        keys.append(f"obj/{n:05d}")
    return s3, keys


def wipe(path: Path) -> None:
    for child in path.iterdir():
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink()


def tracker(admin: Admin) -> dict[str, Any] | None:
    healing = admin.call(1, "GET", "/heal/status")["drives_healing"]
    return next(iter(healing.values()), None)


def heal_once(cluster: ClusterFile, admin: Admin, s3: Any, keys: list[str], preset: str,
              window: float) -> dict[str, Any]:  # fmt: skip
    """Wipe node 1's first drive and measure its heal at ``preset``."""
    for node in range(4):
        admin.call(node, "POST", "/scanner", speed=preset)
    drive = Path(cluster.config["nodes"][1]["drives"][0])
    before = admin.reconnects()
    ended_before = admin.disconnects()
    reader = Reader(s3, keys)
    lags: list[float] = []
    windows: list[float] = []
    wipe(drive)
    started = time.monotonic()
    reader.start()
    seen: dict[str, Any] = {}
    # The heal starts within the drive check interval; it ends when the tracker is gone.
    while time.monotonic() - started < 600:
        lags.append(admin.call(1, "GET", "/info")["loop_lag_s"])
        windows += [conn.get("silence_window") or 0.0 for conn in admin.grid()]
        state = tracker(admin)
        if state is not None:
            seen = state
        elif seen:
            break
        if seen and time.monotonic() - started > window and preset in ("slow", "slowest"):
            break
        time.sleep(0.25)
    elapsed = time.monotonic() - started
    latencies = reader.stop()
    healed, written = seen.get("objects_healed", 0), seen.get("bytes_healed", 0)
    if tracker(admin) is not None:  # a slow preset measured over the window: finish fast
        for node in range(4):
            admin.call(node, "POST", "/scanner", speed="fastest")
        while tracker(admin) is not None:
            time.sleep(0.5)
    else:
        healed = len(keys)  # finished: every object of the set went through the healer
    p50, p99 = percentiles(latencies)
    lost = {
        where: (n - ended_before.get(where, (0, ""))[0], cause)
        for where, (n, cause) in admin.disconnects().items()
    }
    causes = sorted({cause.split(":")[0] for n, cause in lost.values() if n > 0})
    return {
        "seconds": round(elapsed, 2),
        "objects_healed": healed,
        "heal_mbps": round(healed * OBJECT / MIB / elapsed, 1),
        "drive_write_mbps": round(written / MIB / elapsed, 1) if written else None,
        "get_p50_ms": round(p50, 1),
        "get_p99_ms": round(p99, 1),
        "gets": len(latencies),
        "get_errors": reader.errors,
        "missed_pings": admin.reconnects() - before,
        "disconnects": sum(n for n, _ in lost.values()),
        "disconnect_causes": causes,
        "worst_silence_window_s": round(max(windows), 2) if any(windows) else None,
        "worst_loop_lag_ms": round(max(lags) * 1000, 1) if lags else None,
    }


def idle_gets(s3: Any, keys: list[str], seconds: float) -> tuple[float, float]:
    reader = Reader(s3, keys)
    reader.start()
    time.sleep(seconds)  # a benchmark's measuring window, not a synchronisation
    return percentiles(reader.stop())


def run(gib: float, window: float, presets: tuple[str, ...], unsafe: bool = True) -> dict[str, Any]:
    count = max(8, int(gib * 1024 * MIB / OBJECT))
    result: dict[str, Any] = {"benchmark": "heal", "nodes": 4, "drives_per_node": 2,
                              "data": 4, "parity": 4, "objects": count,
                              "object_mib": OBJECT // MIB, "cpus": os.cpu_count()}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="heal-bench-") as tmp:
        cluster = start(Path(tmp) / "safe", BASE)
        try:
            admin = Admin(cluster)
            s3, keys = fill(cluster, count)
            idle_p50, idle_p99 = idle_gets(s3, keys, min(window, 15))
            result["idle_get_p50_ms"], result["idle_get_p99_ms"] = (
                round(idle_p50, 1), round(idle_p99, 1))  # fmt: skip
            result["presets"] = {}
            for preset in presets:
                measured = heal_once(cluster, admin, s3, keys, preset, window)
                measured["p99_vs_idle"] = round(measured["get_p99_ms"] / idle_p99, 2)
                result["presets"][preset] = measured
        finally:
            stop_nodes(cluster)
        if unsafe:
            inline = start(Path(tmp) / "unsafe", {**BASE, "unsafe_inline_heal": "true"})
            try:
                admin = Admin(inline)
                s3, keys = fill(inline, count)
                result["unsafe"] = heal_once(inline, admin, s3, keys, "fastest", window)
            finally:
                stop_nodes(inline)
    fastest = result["presets"].get("fastest", {})
    default = result["presets"].get("default", {})
    result["fastest_target_met"] = bool(fastest) and (
        fastest["heal_mbps"] >= 100 and fastest["missed_pings"] == 0)  # fmt: skip
    result["fastest_no_false_disconnects"] = bool(fastest) and fastest["disconnects"] == 0
    result["default_target_met"] = bool(default) and default["p99_vs_idle"] <= 1.5
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0, help="data to heal [1 GiB]")
    parser.add_argument("--window", type=float, default=30.0,
                        help="seconds to measure the slow presets over [30]")  # fmt: skip
    parser.add_argument("--quick", action="store_true",
                        help="256 MiB, fastest and default only, 10 s windows (a smoke run)")
    parser.add_argument("--presets", default=",".join(PRESETS),
                        help="comma-separated presets to run [all of them]")  # fmt: skip
    parser.add_argument("--skip-unsafe", action="store_true",
                        help="leave out the --unsafe-inline-heal cluster")  # fmt: skip
    args = parser.parse_args(argv)
    presets = tuple(p for p in args.presets.split(",") if p)
    unknown = set(presets) - set(PRESETS)
    if unknown:
        parser.error(f"unknown presets {sorted(unknown)}; choose from {', '.join(PRESETS)}")
    if args.quick:
        result = run(0.25, 10.0, ("fastest", "default"), not args.skip_unsafe)
    else:
        result = run(args.gib, args.window, presets, not args.skip_unsafe)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
