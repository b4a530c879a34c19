"""A large GET while one node is frozen (SIGSTOP), against the same GET with every node healthy.

Starts a real cluster of 4 node processes x 2 drives (4 data + 4 parity) on 127.0.0.1 with
``minigrid cluster up`` (liveness profile ``fast`` by default) in a temporary directory, puts
one object (128 MiB by default) through node 0's S3 API, and times whole GETs through node 0:

- ``healthy``: every node running;
- ``frozen_mid``: the node other than node 0 (which serves the GET) holding the most of the
  object's data shards is SIGSTOPped once ``--freeze-at`` of the body (25 % by default) has
  arrived, and thawed once the GET has ended. The key is chosen for the worst case; with the
  drive-major order of a 4 x 2 set every node holds one data and one parity shard of every
  object, so the frozen node takes one data stream and one spare;
- ``frozen_before``: the same node is SIGSTOPped (and seen stopped by the kernel) before the
  GET starts.

Rounds alternate (healthy, frozen mid-transfer, frozen before; the order rotates every round).
Between rounds the frozen node is thawed and the benchmark waits until every node sees every
drive online again and node 0's link to it is connected, so each frozen GET starts on a
healthy, reconnected cluster. The reported ratios are same-run medians:
``frozen_vs_healthy`` (mid-transfer, the issue's target: < 1.2) and
``frozen_before_vs_healthy``. ``hedges``/``retired``/``decodes`` are node 0's read counters
(the ``reads`` block of ``admin top``) summed over the frozen GETs; ``detected_during_get``
counts frozen GETs after which node 0 had already dropped its link to the frozen node (the
hedging is meant to hide the node *before* the grid declares it down, so this should be 0).

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MIB = 1 << 20
CHUNK = 1 << 20
TARGET = 1.2
BUCKET = "hedge"
PROBE = "probe"


def _pieces(size: int) -> Iterator[bytes]:
    """``size`` random bytes in 1 MiB pieces (one random MiB repeated with a counter, so
    building 128 MiB costs nothing measurable and no two blocks are equal)."""
    base = os.urandom(CHUNK)
    sent = 0
    while sent < size:
        piece = sent.to_bytes(8, "big") + base[8 : min(CHUNK, size - sent)]
        sent += len(piece)
        yield piece


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


class Bench:
    """One running cluster and the clients the benchmark needs."""

    def __init__(self, root: Path, profile: str) -> None:
        from cli.adminclient import AdminClient
        from cli.cluster import cluster_up
        from cli.signed import SignedClient, object_path

        self.cluster = cluster_up(root, nodes=4, drives=2, base_port=0, parity=4,
                                  profile=profile, fsync=False).cluster  # fmt: skip
        config = self.cluster.config
        self.client = SignedClient(self.cluster.urls[0], config["access_key"],
                                   config["secret_key"], timeout=300)  # fmt: skip
        self.admin = AdminClient(self.cluster, timeout=5.0)
        self.path = object_path

    # --- cluster state ------------------------------------------------------------------------

    def top(self, node: int = 0) -> dict[str, Any]:
        lines = self.admin.lines(node, "GET", "/top", scope="node", count=1)
        snapshot: dict[str, Any] = lines[0]["nodes"][0]
        return snapshot

    def reads(self) -> dict[str, int]:
        """Node 0's read counters (empty on a build without them)."""
        return dict(self.top().get("reads") or {})

    def link_state(self, peer: int) -> str:
        host = self.cluster.urls[peer].split("://", 1)[-1].rstrip("/")
        for link in self.top()["links"]:
            if link["peer"] == host:
                return str(link["state"])
        return "unknown"

    def all_online(self) -> bool:
        from cli.cluster import readiness

        for url in self.cluster.urls:
            try:
                ok, body = readiness(url)
            except OSError:
                return False
            if not ok or body.get("drives_online") != body.get("drives"):
                return False
        return True

    def freeze(self, node: int) -> None:
        self.cluster.process(node).signal(signal.SIGSTOP)

    def thaw(self, node: int) -> None:
        """SIGCONT, then wait until every node sees every drive and node 0's link is up."""
        self.cluster.process(node).signal(signal.SIGCONT)
        _wait(self.all_online, 60, "every node to see every drive online after the thaw")
        _wait(lambda: self.link_state(node) == "connected", 60, "node 0's link to reconnect")

    def stopped(self, node: int) -> bool:
        pid = self.cluster.process(node).pid
        text = Path(f"/proc/{pid}/stat").read_text()
        return text[text.rfind(")") + 2 :].split()[0] in ("T", "t")

    # --- the object ---------------------------------------------------------------------------

    def put(self, key: str, size: int) -> None:
        self.client.request("PUT", self.path(BUCKET, key), body=_pieces(size),
                            length=size).close()  # fmt: skip

    def drive_nodes(self) -> list[int]:
        """The node of each drive position in the set, learnt from a small probe object: the
        drive holding shard ``i`` of a key is at position ``(i + start) % 8``."""
        from storage.meta import decode_meta
        from storage.names import object_location
        from storage.placement import shard_distribution

        self.client.call("PUT", self.path(BUCKET))
        self.put(PROBE, 1024)
        start = -shard_distribution(BUCKET, PROBE, 8)[0] % 8
        rel_dir, meta_name = object_location(PROBE)
        nodes = [-1] * 8
        for node, entry in enumerate(self.cluster.config["nodes"]):
            for drive in entry["drives"]:
                path = Path(drive) / BUCKET / rel_dir / meta_name
                index = decode_meta(path.read_bytes(), str(path)).erasure.index
                nodes[(index + start) % 8] = node
        return nodes

    def get(self, key: str, size: int,
            on_progress: Callable[[int], None] | None = None) -> float:  # fmt: skip
        """One whole GET through node 0, in seconds; ``on_progress(received)`` per piece."""
        started = time.perf_counter()
        response = self.client.request("GET", self.path(BUCKET, key))
        received = 0
        while piece := response.read1(CHUNK):
            received += len(piece)
            if on_progress is not None:
                on_progress(received)
        response.close()
        elapsed = time.perf_counter() - started
        if received != size:
            raise RuntimeError(f"read {received} bytes of {size}")
        return elapsed


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {name: after[name] - before.get(name, 0) for name in after}


def _choose_key(nodes: list[int]) -> tuple[str, int, int]:
    """A key whose data shards put the most on one node other than node 0, that node, and
    how many (the worst case for a frozen node: the most data streams lost at once)."""
    from storage.placement import shard_distribution

    best = ("", 0, -1)
    for attempt in range(64):
        key = f"object-{attempt}"
        counts: dict[int, int] = {}
        for position, index in enumerate(shard_distribution(BUCKET, key, 8)):
            if index < 4 and nodes[position] != 0:
                counts[nodes[position]] = counts.get(nodes[position], 0) + 1
        node, count = max(counts.items(), key=lambda item: (item[1], -item[0]))
        if count > best[2]:
            best = (key, node, count)
    return best


def _frozen_get(
    bench: Bench, key: str, victim: int, size: int, at: float | None
) -> tuple[float, bool]:
    """A GET with ``victim`` frozen at fraction ``at`` of the body (None: before it starts).
    Returns the time and whether node 0 had dropped its link to the victim by the end."""
    frozen = False

    def progress(received: int) -> None:
        nonlocal frozen
        if not frozen and at is not None and received >= at * size:
            bench.freeze(victim)
            frozen = True

    if at is None:
        bench.freeze(victim)
        _wait(lambda: bench.stopped(victim), 10, "the kernel to show the node stopped")
        frozen = True
    try:
        seconds = bench.get(key, size, progress)
        detected = bench.link_state(victim) != "connected"
    finally:
        if frozen:
            bench.thaw(victim)
    return seconds, detected


def run(size_mib: int, rounds: int, freeze_at: float, profile: str) -> dict[str, Any]:
    size = size_mib * MIB
    modes = ["healthy", "frozen_mid", "frozen_before"]
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    counters: dict[str, dict[str, int]] = {mode: {} for mode in modes}
    detected = {mode: 0 for mode in modes}
    per_get: dict[str, list[list[int]]] = {mode: [] for mode in modes}
    from cli.cluster import stop_nodes

    with tempfile.TemporaryDirectory(prefix="hedged-get-") as tmp:
        bench = Bench(Path(tmp) / "cluster", profile)
        try:
            _wait(bench.all_online, 60, "every node to see every drive online")
            key, victim, data_shards = _choose_key(bench.drive_nodes())
            bench.put(key, size)
            bench.get(key, size)  # warm up: every drive's latency window gets its first samples
            for round_index in range(rounds):
                shift = round_index % len(modes)
                for mode in modes[shift:] + modes[:shift]:
                    before = bench.reads()
                    if mode == "healthy":
                        seconds, lost = bench.get(key, size), False
                    else:
                        at = freeze_at if mode == "frozen_mid" else None
                        seconds, lost = _frozen_get(bench, key, victim, size, at)
                    times[mode].append(seconds)
                    detected[mode] += int(lost)
                    delta = _delta(bench.reads(), before)
                    for name, value in delta.items():
                        counters[mode][name] = counters[mode].get(name, 0) + value
                    per_get[mode].append([delta.get("hedges", 0), delta.get("replacements", 0)])
        finally:
            for node in range(4):
                bench.cluster.process(node).signal(signal.SIGCONT)
            stop_nodes(bench.cluster)
    medians = {mode: statistics.median(values) for mode, values in times.items()}
    ratio = medians["frozen_mid"] / medians["healthy"]
    return {
        "benchmark": "hedged_get",
        "size_mib": size_mib,
        "nodes": 4,
        "drives_per_node": 2,
        "data": 4,
        "parity": 4,
        "profile": profile,
        "rounds": rounds,
        "cpus": os.cpu_count(),
        "frozen_node": victim,
        "frozen_node_data_shards": data_shards,
        "freeze_at_fraction": freeze_at,
        "healthy_median_s": round(medians["healthy"], 3),
        "frozen_mid_median_s": round(medians["frozen_mid"], 3),
        "frozen_before_median_s": round(medians["frozen_before"], 3),
        "frozen_vs_healthy": round(ratio, 3),
        "frozen_before_vs_healthy": round(medians["frozen_before"] / medians["healthy"], 3),
        "target": TARGET,
        "meets_target": ratio < TARGET,
        "rounds_s": {mode: [round(t, 3) for t in values] for mode, values in times.items()},
        "reads": counters,
        "rounds_hedges_replacements": per_get,
        "detected_during_get": {mode: detected[mode] for mode in modes[1:]},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size-mib", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--freeze-at", type=float, default=0.25,
                        help="freeze once this fraction of the body has arrived")  # fmt: skip
    parser.add_argument("--profile", default="fast", help="the cluster's liveness profile")
    args = parser.parse_args(argv)
    if not 0 < args.freeze_at < 1:
        parser.error("--freeze-at is a fraction of the body, between 0 and 1")
    print(json.dumps(run(args.size_mib, args.rounds, args.freeze_at, args.profile)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
