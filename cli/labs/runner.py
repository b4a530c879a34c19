"""What every lab shares: its clusters, a sampler, marks on the time axis, and the nodes' logs.

A lab runs one or more *phases*, each on a cluster of node processes (``--fsync off``, faults
allowed): :meth:`LabContext.running` starts one in a temporary directory and stops it
afterwards, or lends the lab a :class:`LabCluster` that several quick labs share (the tests do,
to save a cluster start per lab; the lab clears its faults and waits for every link to be up
again before it hands the cluster back).

While a phase runs, one sampler thread per node reads the node's ``admin top`` snapshot (no
I/O on the node: a frozen peer cannot slow it down) a few times a second into time series: per
link state, last-seen age, RTT, reconnects and queue depth; loop lag and loop busy time; heal
progress. Marks note the faults on the same time axis. At the end of a phase the lab keeps
what each node logged during it, with each line's time on the lab's axis.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cli.adminclient import AdminClient, AdminError
from cli.cluster import ClusterFile, cluster_up, stop_nodes
from cli.fault import Faults

SAMPLE_EVERY = 0.25
BASE_OPTIONS: dict[str, Any] = {"fsync": "off", "allow_faults": "true"}
#: Admin calls of the labs: an answer slower than this counts as none (the node is stuck).
ADMIN_TIMEOUT = 6.0
SAMPLER_TIMEOUT = 2.0


class LabError(Exception):
    """The lab could not run as planned; the message says what did not happen."""


@dataclass
class Sample:
    t: float
    node: int
    metric: str
    value: float
    peer: str = ""


@dataclass(frozen=True)
class LogLine:
    """One line a node logged, with its time on the lab's axis (None if it has none)."""

    node: int
    t: float | None
    text: str

    def quoted(self) -> str:
        return f"node{self.node}: {self.text}"


_TEXT_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def log_time(line: str) -> float | None:
    """The wall-clock time (epoch seconds) of a node's log line, text or JSON format."""
    found = _TEXT_TIME.match(line)
    if found:
        stamp = datetime.datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f")
        return stamp.timestamp()  # the node logs local time, as this process reads it
    if line.startswith("{"):
        with contextlib.suppress(ValueError, KeyError, TypeError):
            return datetime.datetime.fromisoformat(json.loads(line)["time"]).timestamp()
    return None


class LabCluster:
    """A cluster of node processes for labs: its admin API, its faults, its logs."""

    def __init__(self, folder: Path, options: Mapping[str, Any], *, nodes: int = 4,
                 drives: int = 2, netns: bool = False) -> None:  # fmt: skip
        self.folder = folder
        self.options = {**BASE_OPTIONS, **options}
        self.shape = (nodes, drives, netns)
        result = cluster_up(folder, nodes=nodes, drives=drives, base_port=0, parity=None,
                            options=self.options, netns=netns or None)  # fmt: skip
        self.cluster: ClusterFile = result.cluster
        self.admin = AdminClient(self.cluster, timeout=ADMIN_TIMEOUT)
        self._quick_admin = AdminClient(self.cluster, timeout=SAMPLER_TIMEOUT)
        self.faults = Faults(folder)
        self.buckets = 0

    @property
    def count(self) -> int:
        return len(self.cluster.urls)

    def host(self, node: int) -> str:
        return self.cluster.urls[node].split("://", 1)[1]

    def suits(self, options: Mapping[str, Any], nodes: int, drives: int, netns: bool) -> bool:
        """Whether a lab asking for this cluster can have this one."""
        wanted = {k: str(v) for k, v in {**BASE_OPTIONS, **options}.items()}
        have = {k: str(v) for k, v in self.options.items()}
        return wanted == have and self.shape == (nodes, drives, netns)

    def new_bucket(self, prefix: str) -> str:
        """A bucket name no earlier lab on this cluster used."""
        self.buckets += 1
        return f"{prefix}-{self.buckets}"

    def top(self, node: int) -> dict[str, Any]:
        """Node ``node``'s own ``admin top`` snapshot (cheap for the node: no I/O); AdminError
        if it does not answer within a couple of seconds."""
        lines = self._quick_admin.lines(node, "GET", "/top", scope="node", count=1)
        if not lines or not lines[0].get("nodes"):
            raise AdminError(f"node {node}: an empty top snapshot")
        snapshot: dict[str, Any] = lines[0]["nodes"][0]
        return snapshot

    def link(self, node: int, peer: int) -> dict[str, Any]:
        """Node ``node``'s view of its link to ``peer`` (state, last_seen_s, rtt_s, ...)."""
        host = self.host(peer)
        for link in self.top(node)["links"]:
            if link["peer"] == host:
                return dict(link)
        raise AdminError(f"node {node} has no link to {host}")

    def links_up(self) -> bool:
        """Whether every node answers and every link is connected."""
        try:
            return all(link["state"] == "connected" for node in range(self.count)
                       for link in self.top(node)["links"])  # fmt: skip
        except AdminError:
            return False

    def reconnects(self) -> int:
        """Sessions lost anywhere in the cluster so far (both ends count theirs)."""
        total = 0
        for node in range(self.count):
            with contextlib.suppress(AdminError):
                total += sum(int(link["reconnects"]) for link in self.top(node)["links"])
        return total

    def log_sizes(self) -> list[int]:
        sizes = []
        for node in range(self.count):
            try:
                sizes.append(self.cluster.log_path(node).stat().st_size)
            except OSError:
                sizes.append(0)
        return sizes

    def read_logs(self, since: list[int] | None = None) -> list[str]:
        """Each node's log from byte offset ``since[node]`` on."""
        texts = []
        for node in range(self.count):
            try:
                with open(self.cluster.log_path(node), "rb") as handle:
                    handle.seek(since[node] if since else 0)
                    texts.append(handle.read().decode(errors="replace"))
            except OSError:
                texts.append("")
        return texts

    def stop(self) -> None:
        """Stop every node; a --netns cluster's namespaces go too."""
        faults = self.faults
        try:
            stop_nodes(faults.cluster)
        finally:
            topology = faults.cluster.topology
            if topology is not None:
                topology.destroy()


@dataclass
class LabContext:
    """One run of one lab: its output folder, its clusters, its series, marks and logs."""

    out: Path
    quick: bool
    netns: bool = False
    #: A cluster to borrow for phases that suit it instead of starting one (tests).
    shared: LabCluster | None = None
    #: Lab-specific settings from the command line (the soak's duration and seed).
    options: dict[str, Any] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    marks: list[tuple[float, str]] = field(default_factory=list)
    #: Each phase's name and (start, end) on the time axis.
    phases: list[tuple[str, float, float]] = field(default_factory=list)
    logs: dict[str, list[LogLine]] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    started_wall: float = field(default_factory=time.time)
    lab: LabCluster | None = None
    #: A lab that draws its own plot.png sets this; the others get time series.
    custom_plot: Callable[[], None] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _root: Path | None = None
    _sampling: threading.Event = field(default_factory=threading.Event)
    _offsets: list[int] = field(default_factory=list)

    def now(self) -> float:
        """Seconds since the lab started (monotonic)."""
        return time.monotonic() - self.started

    def at(self, wall: float) -> float:
        """A wall-clock time (a log line's) on the lab's axis."""
        return wall - self.started_wall

    def mark(self, label: str) -> float:
        """Note an event (a fault, a thaw) on the time axis; returns its time."""
        t = self.now()
        with self._lock:
            self.marks.append((t, label))
        return t

    def record(self, node: int, metric: str, value: float, peer: str = "",
               t: float | None = None) -> None:  # fmt: skip
        with self._lock:
            self.samples.append(Sample(self.now() if t is None else t, node, metric, value, peer))

    @property
    def cl(self) -> LabCluster:
        """The cluster of the phase running now."""
        if self.lab is None:
            raise LabError("no cluster is running")
        return self.lab

    # --- phases -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def running(self, name: str, options: Mapping[str, Any], *, nodes: int = 4,
                drives: int = 2) -> Iterator[LabCluster]:  # fmt: skip
        """A cluster for the phase ``name``: the shared one if it suits, else a new one."""
        shared = self.shared
        own = shared is None or not shared.suits(options, nodes, drives, self.netns)
        if own:
            if self._root is None:
                self._root = Path(tempfile.mkdtemp(prefix="minigrid-lab-"))
            lab = LabCluster(self._root / name, options, nodes=nodes, drives=drives,
                             netns=self.netns)  # fmt: skip
        else:
            assert shared is not None
            lab = shared
            self.wait_for(lab.links_up, 30, "every link of the shared cluster to be up")
        self.lab = lab
        offsets = self._offsets = lab.log_sizes()
        samplers = self._start_sampling(lab)
        began = self.now()
        try:
            yield lab
        finally:
            self.phases.append((name, began, self.now()))
            self._sampling.set()
            for sampler in samplers:
                sampler.join(SAMPLER_TIMEOUT + 2)
            self._keep_logs(name, lab, offsets)
            try:
                with contextlib.suppress(Exception):
                    lab.faults.clear()
                if not own:
                    self.wait_for(lab.links_up, 30, "the shared cluster to be whole again")
            finally:
                if own:
                    lab.stop()
                self.lab = None

    def _keep_logs(self, name: str, lab: LabCluster, offsets: list[int]) -> None:
        """What each node logged during the phase: parsed for the report, copied to logs/."""
        folder = self.out / "logs" / name
        folder.mkdir(parents=True, exist_ok=True)
        for node, text in enumerate(lab.read_logs(offsets)):
            (folder / f"node{node}.log").write_text(text)
            lines = []
            for raw in text.splitlines():
                wall = log_time(raw)
                lines.append(LogLine(node, None if wall is None else self.at(wall), raw))
            self.logs[f"{name}/{node}"] = lines

    def close(self) -> None:
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)

    def _start_sampling(self, lab: LabCluster) -> list[threading.Thread]:
        self._sampling.clear()
        samplers = [threading.Thread(target=self._sample, args=(lab, node), daemon=True,
                                     name=f"lab sampler {node}")
                    for node in range(lab.count)]  # fmt: skip
        for sampler in samplers:
            sampler.start()
        return samplers

    def _sample(self, lab: LabCluster, node: int) -> None:
        """One node's sampler: its own thread, so a frozen node delays no other's samples."""
        hosts = {lab.host(n): str(n) for n in range(lab.count)}
        while not self._sampling.wait(SAMPLE_EVERY):
            try:
                snapshot = lab.top(node)
            except (AdminError, OSError, ValueError):
                continue
            self._record_top(node, snapshot, hosts)

    def _record_top(self, node: int, top: Mapping[str, Any], hosts: Mapping[str, str]) -> None:
        t = self.now()
        self.record(node, "loop_lag_s", float(top.get("loop_lag_s") or 0.0), t=t)
        if top.get("loop_busy_s") is not None:
            self.record(node, "loop_busy_s", float(top["loop_busy_s"]), t=t)
        for link in top.get("links", []):
            peer = hosts.get(link["peer"], link["peer"])
            self.record(node, "connected", 1.0 if link["state"] == "connected" else 0.0, peer, t)
            self.record(node, "reconnects", float(link.get("reconnects") or 0), peer, t)
            self.record(node, "queue", float(link.get("queue") or 0), peer, t)
            self.record(node, "queue_bytes", float(link.get("queue_bytes") or 0), peer, t)
            self.record(node, "calls_out", float(link.get("calls_out") or 0), peer, t)
            if link.get("last_seen_s") is not None:
                self.record(node, "last_seen_age_s", float(link["last_seen_s"]), peer, t)
            if link.get("rtt_s") is not None:
                self.record(node, "rtt_s", float(link["rtt_s"]), peer, t)
        heal = top.get("heal") or {}
        for drive in heal.get("drives", []):
            self.record(node, "heal_objects", float(drive.get("healed", 0)), t=t)

    # --- reading what happened ----------------------------------------------------------------

    def series(self, metric: str, node: int | None = None, peer: str | None = None,
               since: float = 0.0, until: float = float("inf")) -> list[Sample]:  # fmt: skip
        with self._lock:
            return [s for s in self.samples if s.metric == metric and since <= s.t <= until
                    and (node is None or s.node == node) and (peer is None or s.peer == peer)]

    def worst(self, metric: str, node: int | None = None, since: float = 0.0,
              until: float = float("inf")) -> float | None:  # fmt: skip
        values = [s.value for s in self.series(metric, node, since=since, until=until)]
        return max(values, default=None)

    def log_lines(self, pattern: str, phase: str | None = None, node: int | None = None,
                  since: float = float("-inf"),
                  until: float = float("inf")) -> list[LogLine]:  # fmt: skip
        """Lines the nodes logged during finished phases that match ``pattern``."""
        regex = re.compile(pattern)
        found = []
        for key, lines in sorted(self.logs.items()):
            name, _, index = key.rpartition("/")
            if (phase is not None and name != phase) or (node is not None and int(index) != node):
                continue
            found += [line for line in lines if regex.search(line.text)
                      and (line.t is None or since <= line.t <= until)]  # fmt: skip
        return found

    def live_lines(self, pattern: str, nodes: list[int] | None = None) -> list[LogLine]:
        """Lines the nodes have logged so far in the running phase that match ``pattern``."""
        regex = re.compile(pattern)
        found = []
        for node, text in enumerate(self.cl.read_logs(self._offsets)):
            if nodes is None or node in nodes:
                found += [LogLine(node, None, raw) for raw in text.splitlines()
                          if regex.search(raw)]  # fmt: skip
        return found

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

    def hold(self, seconds: float) -> None:
        """Let the workload run for ``seconds``: a measuring window, not a synchronisation."""
        end = self.now() + seconds
        self.wait_for(lambda: self.now() >= end, seconds + 5, "a measuring window", 0.1)


def quoted(lines: list[LogLine], limit: int = 6) -> str:
    """Log lines as a Markdown code block (at most ``limit``)."""
    if not lines:
        return "_(no such line in the logs)_"
    shown = [line.quoted()[:320] for line in lines[:limit]]
    more = f"\n... and {len(lines) - limit} more" if len(lines) > limit else ""
    return "```\n" + "\n".join(shown) + more + "\n```"


__all__ = [
    "LabCluster",
    "LabContext",
    "LabError",
    "LogLine",
    "Sample",
    "log_time",
    "quoted",
]
