"""How the grid's liveness design scales past one machine, measured in the simulator.

For each cluster size (full mesh: every node holds a real GridSession per peer, N * (N - 1) in
all, with the real handshake, on minigrid.sim's virtual clock) two scenarios run:

* **frozen**: one node's loop stops (SIGSTOP) once the cluster is up;
* **partition**: half the nodes are cut off from the other half, silently (iptables DROP).

Reported per size and scenario: how long each peer took to declare the lost ones down (min,
median, max, in virtual seconds from the fault), how many sessions ended that no fault explains
(false positives: sessions between nodes on the same side), the liveness traffic each node
sends while the cluster is idle (pings and pongs: messages, frames and bytes per second), and
what the simulation itself cost in wall-clock seconds (setting up, and per virtual second).

Run from the repository root::

    .venv/bin/python benchmarks/sim_scale.py [--sizes 4,16,64,256] [--seed 1]

Exactly one JSON object goes to stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import resource
import statistics
import sys
import time
from typing import Any

from minigrid.config import GridConfig
from minigrid.sim import Simulation

#: Virtual seconds of an idle, connected cluster over which liveness traffic is measured.
STEADY = 3.0


def log(message: str) -> None:
    print(f"[sim_scale] {message}", file=sys.stderr, flush=True)


def connect(size: int, seed: int, config: GridConfig) -> tuple[Simulation, float]:
    """A connected cluster, and the wall seconds it took (every handshake included)."""
    began = time.perf_counter()
    sim = Simulation(size, seed, config=config)
    for _ in range(60):
        sim.run(0.5)
        if sim.all_connected():
            break
    else:
        raise RuntimeError(f"{size} nodes did not connect within 30 virtual seconds")
    return sim, time.perf_counter() - began


def liveness_traffic(sim: Simulation) -> dict[str, float]:
    """Messages, frames and bytes each node sends per second while idle (pings and pongs)."""
    def totals() -> tuple[int, int, int]:
        messages = frames = size = 0
        for node in sim.nodes.values():
            for link in node.peers.values():
                messages += link.counters.messages_out
                frames += link.counters.frames_out
                size += link.counters.bytes_out
        return messages, frames, size

    before, began = totals(), time.perf_counter()
    sim.run(STEADY)
    after, wall = totals(), time.perf_counter() - began
    per = STEADY * len(sim.nodes)
    return {
        "messages_per_s_per_node": round((after[0] - before[0]) / per, 2),
        "frames_per_s_per_node": round((after[1] - before[1]) / per, 2),
        "bytes_per_s_per_node": round((after[2] - before[2]) / per, 1),
        "wall_s_per_virtual_s": round(wall / STEADY, 4),
    }


def detections(sim: Simulation, pairs: list[tuple[str, str]], start: float) -> list[float]:
    """For each (watcher, lost) pair, how long after ``start`` the watcher gave up on it."""
    found = []
    for watcher, lost in pairs:
        downs = [when for when, _ in sim.nodes[watcher].peers[lost].downs if when >= start]
        if downs:
            found.append(downs[0] - start)
    return found


def false_positives(sim: Simulation, pairs: list[tuple[str, str]], start: float) -> int:
    """Sessions that ended after ``start`` between nodes the fault did not separate."""
    return sum(
        1
        for a, b in pairs
        for when, _ in sim.nodes[a].peers[b].downs
        if when >= start
    )


def scenario(size: int, seed: int, config: GridConfig, kind: str) -> dict[str, Any]:
    sim, setup_wall = connect(size, seed, config)
    traffic = liveness_traffic(sim)
    names = sorted(sim.nodes)
    sim.run(sim.scheduler.random.uniform(0, config.ping_interval))  # no fault on a ping's beat
    start = sim.now
    if kind == "frozen":
        lost = {names[-1]}
        sim.freeze(names[-1])
    else:
        lost = set(names[: size // 2])
        sim.partition(lost, "silent")
    began = time.perf_counter()
    sim.run(config.dead_after + 2.0)
    fault_wall = time.perf_counter() - began
    crossing = [(a, b) for a, b in sim.links() if (a in lost) != (b in lost)]
    if kind == "frozen":
        crossing = [(a, b) for a, b in crossing if a not in lost]  # a frozen node declares nothing
    if kind == "frozen":
        same_side = [(a, b) for a, b in sim.links() if a not in lost and b not in lost]
    else:
        same_side = [(a, b) for a, b in sim.links() if (a in lost) == (b in lost)]
    found = detections(sim, crossing, start)
    violations = sim.check()
    result = {
        "nodes": size,
        "sessions": size * (size - 1),
        "detections": len(found),
        "expected_detections": len(crossing),
        "detect_s_min": round(min(found), 4) if found else None,
        "detect_s_median": round(statistics.median(found), 4) if found else None,
        "detect_s_max": round(max(found), 4) if found else None,
        "false_positives": false_positives(sim, same_side, start),
        "invariant_violations": len(violations),
        **traffic,
        "setup_wall_s": round(setup_wall, 3),
        "fault_wall_s_per_virtual_s": round(fault_wall / (config.dead_after + 2.0), 4),
        "scheduler_steps": sim.scheduler.steps,
    }
    log(
        f"{size:4d} nodes {kind:9s} detect {result['detect_s_min']}-{result['detect_s_max']}s "
        f"({len(found)}/{len(crossing)}), false positives {result['false_positives']}, "
        f"{traffic['messages_per_s_per_node']} liveness msgs/s/node, "
        f"setup {setup_wall:.1f}s wall, {traffic['wall_s_per_virtual_s']}s wall per virtual s"
    )
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="4,16,64,256", help="cluster sizes, comma separated")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", default="fast", choices=("fast", "minio"))
    args = parser.parse_args(argv)
    logging.disable(logging.CRITICAL)  # every simulated node logs what a real one would
    from minigrid.config import profile

    config = profile(args.profile)
    sizes = [int(size) for size in args.sizes.split(",")]
    began = time.perf_counter()
    runs: dict[str, dict[str, Any]] = {}
    for size in sizes:
        for kind in ("frozen", "partition"):
            runs[f"{size}_{kind}"] = scenario(size, args.seed, config, kind)
    result = {
        "benchmark": "sim_scale",
        "profile": config.profile,
        "dead_after_s": config.dead_after,
        "dead_after_max_s": config.dead_after_max,
        "ping_interval_s": config.ping_interval,
        "seed": args.seed,
        "sizes": sizes,
        "runs": runs,
        "total_wall_s": round(time.perf_counter() - began, 2),
        "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "python": platform.python_version(),
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
