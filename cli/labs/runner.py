"""What every lab shares: its own cluster, a sampler, a workload, marks, logs and the report.

A lab starts a cluster of node processes in a temporary directory (free ports, ``--fsync off``,
faults allowed), samples every node's admin ``info`` a few times a second into time series
(per-peer last-seen age, RTT, reconnects and last cause, loop lag, heal progress), runs its
workload and faults, tears everything down, and writes ``report.md``, ``series.csv`` and
``plot.png`` into its output directory, plus the nodes' logs.
"""

from __future__ import annotations

import contextlib
import csv
import os
import random
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cli.adminclient import AdminClient, AdminError
from cli.cluster import ClusterFile, cluster_up, stop_nodes
from cli.fault import Faults

SAMPLE_EVERY = 0.2
MIB = 1 << 20
BASE_OPTIONS = {"fsync": "off", "allow_faults": "true"}


@dataclass
class Sample:
    t: float
    node: int
    metric: str
    value: float
    peer: str = ""


@dataclass
class LabContext:
    """One run of one lab: its output folder, its clusters, its series and marks."""

    out: Path
    quick: bool
    netns: bool = False
    samples: list[Sample] = field(default_factory=list)
    marks: list[tuple[float, str]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    cluster: ClusterFile | None = None
    admin: AdminClient | None = None
    faults: Faults | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _root: Path | None = None
    _sampling: threading.Event = field(default_factory=threading.Event)
    _phase: str = ""
    logs: dict[str, str] = field(default_factory=dict)
    #: Lab-specific settings from the command line (the soak's duration and seed).
    options: dict[str, Any] = field(default_factory=dict)
    #: A lab that draws its own plot.png sets this; the others get time series.
    custom_plot: Callable[[], None] | None = None

    def now(self) -> float:
        """Seconds since the lab started (monotonic)."""
        return time.monotonic() - self.started

    def mark(self, label: str) -> float:
        """Note an event (a fault, a thaw) on the time axis; returns its time."""
        t = self.now()
        with self._lock:
            self.marks.append((t, label))
        return t

    def record(self, node: int, metric: str, value: float, peer: str = "") -> None:
        with self._lock:
            self.samples.append(Sample(self.now(), node, metric, value, peer))

    # --- clusters -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def running(self, name: str, options: dict[str, Any], *, nodes: int = 4,
                drives: int = 2, sample: bool = True) -> Iterator[ClusterFile]:  # fmt: skip
        """A cluster for one phase of the lab; stopped (and its logs kept) afterwards."""
        if self._root is None:
            self._root = Path(tempfile.mkdtemp(prefix="minigrid-lab-"))
        folder = self._root / name
        self._phase = name
        result = cluster_up(folder, nodes=nodes, drives=drives, base_port=0, parity=None,
                            options={**BASE_OPTIONS, **options},
                            netns=self.netns or None)  # fmt: skip
        self.cluster = result.cluster
        self.admin = AdminClient(result.cluster, timeout=6.0)  # info waits 2 s per dead drive
        self.faults = Faults(folder)
        sampler = threading.Thread(target=self._sample, daemon=True) if sample else None
        self._sampling.clear()
        try:
            if sampler is not None:
                sampler.start()
            yield result.cluster
        finally:
            self._sampling.set()
            if sampler is not None:
                sampler.join(10)
            with contextlib.suppress(Exception):
                self.faults.clear()
            stop_nodes(self.faults.cluster)
            if self.netns:
                topology = self.faults.cluster.topology
                if topology is not None:
                    topology.destroy()
            self._keep_logs(folder, name)

    def _keep_logs(self, folder: Path, name: str) -> None:
        target = self.out / "logs" / name
        target.mkdir(parents=True, exist_ok=True)
        for log in (folder / "logs").glob("*.log"):
            text = log.read_text(errors="replace")
            self.logs[f"{name}/{log.stem}"] = text
            (target / log.name).write_text(text)

    def close(self) -> None:
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)

    def _sample(self) -> None:
        assert self.admin is not None and self.cluster is not None
        hosts = [url.split("://", 1)[1] for url in self.cluster.urls]
        while not self._sampling.wait(SAMPLE_EVERY):
            for node in range(len(hosts)):
                try:
                    info = self.admin.call(node, "GET", "/info")
                except AdminError:
                    continue
                self._record_info(node, info, hosts)

    def _record_info(self, node: int, info: dict[str, Any], hosts: list[str]) -> None:
        self.record(node, "loop_lag_s", float(info.get("loop_lag_s") or 0.0))
        for peer, stats in info.get("grid", {}).items():
            label = str(hosts.index(peer)) if peer in hosts else peer
            self.record(node, "connected", 1.0 if stats["state"] == "connected" else 0.0, label)
            self.record(node, "reconnects", float(stats.get("reconnects", 0)), label)
            if stats.get("last_seen_age") is not None:
                self.record(node, "last_seen_age_s", float(stats["last_seen_age"]), label)
            if stats.get("rtt_last") is not None:
                self.record(node, "rtt_s", float(stats["rtt_last"]), label)
        for tracker in info.get("heal", {}).get("drives_healing", {}).values():
            self.record(node, "heal_bytes", float(tracker.get("bytes_healed", 0)))
            self.record(node, "heal_objects", float(tracker.get("objects_scanned", 0)))

    # --- reading the series -------------------------------------------------------------------

    def series(self, metric: str, node: int | None = None, peer: str | None = None,
               since: float = 0.0) -> list[Sample]:  # fmt: skip
        with self._lock:
            return [s for s in self.samples if s.metric == metric and s.t >= since
                    and (node is None or s.node == node) and (peer is None or s.peer == peer)]

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str,
                 interval: float = 0.05) -> Any:  # fmt: skip
        """Poll ``predicate`` until it is truthy; LabError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise LabError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(interval)

    def grid_state(self, node: int, peer: int) -> dict[str, Any]:
        assert self.admin is not None and self.cluster is not None
        host = self.cluster.urls[peer].split("://", 1)[1]
        stats: dict[str, Any] = self.admin.call(node, "GET", "/info")["grid"][host]
        return stats

    def reconnects(self) -> int:
        """Sessions lost anywhere in the cluster so far (both ends count theirs)."""
        assert self.admin is not None and self.cluster is not None
        total = 0
        for node in range(len(self.cluster.urls)):
            with contextlib.suppress(AdminError):
                grid = self.admin.call(node, "GET", "/info")["grid"]
                total += sum(int(s["reconnects"]) for s in grid.values())
        return total

    def log_lines(self, pattern: str, phase: str | None = None) -> list[str]:
        """Lines of the kept logs (after a phase ended) that match ``pattern``."""
        found = []
        regex = re.compile(pattern)
        for name, text in sorted(self.logs.items()):
            if phase is not None and not name.startswith(phase + "/"):
                continue
            found += [f"{name.split('/')[-1]}: {line}" for line in text.splitlines()
                      if regex.search(line)]  # fmt: skip
        return found

    def live_log(self, node: int) -> str:
        assert self.cluster is not None
        try:
            return self.cluster.log_path(node).read_text(errors="replace")
        except OSError:
            return ""


class LabError(Exception):
    """The lab could not run as planned; the message says what did not happen."""


# --- workload ------------------------------------------------------------------------------------


def s3_client(cluster: ClusterFile, node: int = 0, timeout: float = 10.0) -> Any:
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
                      max_pool_connections=64),
    )  # fmt: skip


def fill(cluster: ClusterFile, bucket: str, count: int, size: int,
         node: int = 0) -> dict[str, bytes]:  # fmt: skip
    """``count`` objects of ``size`` bytes in a new bucket; returns them by key."""
    s3 = s3_client(cluster, node, timeout=60)
    s3.create_bucket(Bucket=bucket)
    rng = random.Random(size + count)
    objects = {}
    for n in range(count):
        body = rng.randbytes(size)
        s3.put_object(Bucket=bucket, Key=f"obj/{n:04d}", Body=body)
        objects[f"obj/{n:04d}"] = body
    return objects


class Reader(threading.Thread):
    """GETs random objects through one node, one at a time, recording latency and outcome."""

    def __init__(self, lab: LabContext, cluster: ClusterFile, bucket: str,
                 objects: dict[str, bytes], node: int = 0,
                 timeout: float = 10.0) -> None:  # fmt: skip
        super().__init__(daemon=True)
        self.lab, self.bucket, self.objects = lab, bucket, objects
        self.s3 = s3_client(cluster, node, timeout=timeout)
        self.results: list[tuple[float, float, bool]] = []  # (start, seconds, ok)
        self._halt = threading.Event()

    def run(self) -> None:
        rng = random.Random(7)
        keys = sorted(self.objects)
        while not self._halt.is_set():
            key = rng.choice(keys)
            began = self.lab.now()
            ok = True
            try:
                body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
                ok = body == self.objects[key]
            except Exception:  # every failure is counted; the workload goes on
                ok = False
            took = self.lab.now() - began
            self.results.append((began, took, ok))
            self.lab.record(0, "get_latency_s" if ok else "get_failed_s", took)

    def stop(self) -> None:
        self._halt.set()
        self.join(30)

    def between(self, start: float, end: float) -> list[tuple[float, float, bool]]:
        return [r for r in self.results if start <= r[0] < end]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


# --- output --------------------------------------------------------------------------------------


def write_series(lab: LabContext) -> Path:
    path = lab.out / "series.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["t_s", "node", "peer", "metric", "value"])
        for s in lab.samples:
            writer.writerow([f"{s.t:.3f}", s.node, s.peer, s.metric, f"{s.value:.6g}"])
        for t, label in lab.marks:
            writer.writerow([f"{t:.3f}", "", "", "mark", label])
    return path


def plot(lab: LabContext, title: str, panels: list[tuple[str, str, str]],
         scatter: tuple[float, float, str] | None = None) -> Path:  # fmt: skip
    """``plot.png``: one panel per ``(metric, y label, how)`` over time, the marks as lines.

    ``how``: ``links`` (one line per node->peer), ``nodes`` (one per node) or ``points``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(panels), 1, figsize=(10, 2.6 * len(panels)), sharex=True,
                                squeeze=False)  # fmt: skip
    for axis, (metric, label, how) in zip(axes[:, 0], panels, strict=True):
        samples = lab.series(metric)
        groups: dict[str, list[Sample]] = {}
        for s in samples:
            key = f"{s.node}->{s.peer}" if how == "links" else f"node {s.node}"
            groups.setdefault("" if how == "points" else key, []).append(s)
        for key, points in sorted(groups.items()):
            xs, ys = [p.t for p in points], [p.value for p in points]
            if how == "points":
                axis.plot(xs, ys, ".", markersize=3, label=label)
            else:
                axis.plot(xs, ys, linewidth=1, label=key)
        if metric == "get_latency_s":
            failed = lab.series("get_failed_s")
            if failed:
                axis.plot([p.t for p in failed], [p.value for p in failed], "rx", markersize=5,
                          label="failed GET")  # fmt: skip
        for t, mark in lab.marks:
            axis.axvline(t, color="grey", linestyle="--", linewidth=0.8)
            axis.text(t, axis.get_ylim()[1], f" {mark}", fontsize=7, va="top", rotation=0)
        axis.set_ylabel(label)
        if groups and len(groups) <= 12:
            axis.legend(fontsize=6, loc="upper right", ncol=4)
    axes[-1, 0].set_xlabel("seconds since the lab started")
    figure.suptitle(title)
    figure.tight_layout()
    path = lab.out / "plot.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_report(lab: LabContext, title: str, sections: list[tuple[str, str]],
                 summary: dict[str, Any]) -> Path:  # fmt: skip
    import json

    lines = [f"# {title}", ""]
    for heading, body in sections:
        lines += [f"## {heading}", "", body.strip(), ""]
    lines += ["## Summary", "", "```json", json.dumps(summary, indent=2), "```", "",
              "Files: `series.csv` (every sample: t_s, node, peer, metric, value; marks as "
              "metric `mark`), `plot.png`, and the nodes' logs in `logs/`.", ""]  # fmt: skip
    path = lab.out / "report.md"
    path.write_text("\n".join(lines))
    return path


def quoted(lines: list[str], limit: int = 6) -> str:
    """Log lines as a Markdown code block (at most ``limit``)."""
    if not lines:
        return "_(no such line in the logs)_"
    shown = lines[:limit]
    more = f"\n... and {len(lines) - limit} more" if len(lines) > limit else ""
    return "```\n" + "\n".join(line[:300] for line in shown) + more + "\n```"


def fresh_out(out: Path | None, name: str) -> Path:
    folder = out or Path(f"lab-{name}")
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o755)
    return folder


__all__ = [
    "LabContext",
    "LabError",
    "Reader",
    "fill",
    "fresh_out",
    "percentile",
    "plot",
    "quoted",
    "rounded",
    "s3_client",
    "write_report",
    "write_series",
]
