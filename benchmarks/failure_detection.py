"""How fast does the grid notice a dead peer, and does it ever accuse a live one?

One run measures, with real node processes on 127.0.0.1:

* **frozen**: a peer is stopped with SIGSTOP while a call to it is in flight; the time from the
  signal to the call failing with ``Disconnected`` (``--rounds`` rounds, a fresh pair each);
* **partition**: the loopback traffic of the pair is dropped silently with iptables (root
  only; without it the part is skipped and says why), the same measure;
* **killed**: a peer killed with SIGKILL (its kernel resets the connection: this is the fast
  path, for comparison);
* **soak**: two CPU hogs (busy loops competing with the nodes for the cores) and continuous
  grid traffic (concurrent calls and streams, both ways) between three nodes (this process and
  two node processes, full mesh) for ``--soak`` seconds: how many sessions ended (must be 0)
  and the worst loop lag seen (ours, measured; the peers', from their pongs).

With ``--minio`` the frozen and killed rounds also run on the ``minio`` profile (MinIO's own
timings: 20 s windows, so it takes a while). Prints one JSON object on stdout.

    .venv/bin/python benchmarks/failure_detection.py [--rounds 7] [--soak 60] [--minio]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from minigrid import Disconnected, HandlerID, Manager, State, profile
from minigrid.testing import (
    TEST_SECRET,
    NodeProcess,
    generate_request,
    host_of,
    listening_socket,
    register_test_handlers,
    serve_manager,
)

#: The issue's targets for a frozen or silently partitioned peer (fast profile).
TARGET_P50_S = 2.0
TARGET_WORST_S = 2.5
KiB = 1024


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ the silent partition


def partition_unavailable() -> str:
    """Why iptables cannot cut loopback flows here ("" when it can)."""
    if os.geteuid() != 0:
        return "not root: iptables needs CAP_NET_ADMIN"
    if shutil.which("iptables") is None:
        return "no iptables binary"
    probe = subprocess.run(["iptables", "-w", "-S", "INPUT"], capture_output=True, check=False)
    if probe.returncode != 0:
        return f"iptables does not work here: {probe.stderr.decode().strip()}"
    return ""


@contextlib.contextmanager
def dropped(ports: tuple[int, ...]) -> Iterator[None]:
    """Every loopback TCP packet to or from ``ports`` is dropped (a silent partition: no
    reset, no FIN; both processes keep running) until the block ends."""
    rules = [
        ["INPUT", "-i", "lo", "-p", "tcp", direction, str(port), "-j", "DROP"]
        for port in ports
        for direction in ("--dport", "--sport")
    ]
    added: list[list[str]] = []
    try:
        for rule in rules:
            subprocess.run(["iptables", "-w", "-I", *rule], check=True, capture_output=True)
            added.append(rule)
        yield
    finally:
        for rule in added:
            subprocess.run(["iptables", "-w", "-D", *rule], check=False, capture_output=True)


# ------------------------------------------------------------------ one detection round


async def one_round(profile_name: str, fault: str) -> dict[str, float | str]:
    """A fresh pair (this process and one node process); ``fault`` hits the node while a call
    to it is in flight; how long until the call fails, and until the pair is back."""
    ours, theirs = listening_socket(), listening_socket()
    node = NodeProcess(theirs, [host_of(ours)], profile_name=profile_name)
    manager = Manager(host_of(ours), [node.host], TEST_SECRET, config=profile(profile_name))
    register_test_handlers(manager)
    runner = await serve_manager(manager, ours)
    ports = (ours.getsockname()[1], theirs.getsockname()[1])
    try:
        await asyncio.to_thread(node.start)
        await manager.start()
        await manager.wait_connected(20)
        conn = manager.connection(node.host)
        await asyncio.sleep(1.0)  # a few pings each way: the session is in its steady state
        call = asyncio.create_task(conn.call(HandlerID.TEST_SLEEP, b"3600", timeout=3600))
        await asyncio.sleep(0)  # let the call register and queue its request
        assert conn.stats().inflight_calls == 1
        with contextlib.ExitStack() as faults:
            if fault == "partition":
                await asyncio.to_thread(faults.enter_context, dropped(ports))
                started = time.monotonic()  # the rules are in: from now on nothing passes
            else:
                started = time.monotonic()
                node.signal(signal.SIGSTOP if fault == "frozen" else signal.SIGKILL)
            cause = ""
            try:
                await call
            except Disconnected as exc:
                cause = exc.cause
            detected = time.monotonic() - started
            result: dict[str, float | str] = {"detect_s": round(detected, 3), "cause": cause}
        if fault != "killed":  # the partition lifted (ExitStack) or the node thawed: back?
            resumed = time.monotonic()
            if fault == "frozen":
                node.signal(signal.SIGCONT)
            await conn.wait_state(State.CONNECTED, timeout=60)
            result["reconnect_s"] = round(time.monotonic() - resumed, 3)
        return result
    finally:
        await manager.close()
        await runner.cleanup()
        await asyncio.to_thread(node.kill)
        ours.close()
        theirs.close()


# ------------------------------------------------------------------ the soak


def start_hogs(count: int) -> list[subprocess.Popen[bytes]]:
    """``count`` busy loops, pinned to nothing: the scheduler spreads them over the cores."""
    return [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
        for _ in range(count)
    ]


class Traffic:
    """Continuous calls and streams from this node to its peers, counted."""

    def __init__(self, manager: Manager, peers: list[str]) -> None:
        self.manager, self.peers = manager, peers
        self.calls = self.items = self.bytes = self.errors = 0

    async def calls_to(self, peer: str, size: int) -> None:
        conn, payload = self.manager.connection(peer), os.urandom(size)
        while True:
            try:
                answer = await conn.call(HandlerID.TEST_ECHO, payload, timeout=30)
            except Disconnected:
                self.errors += 1
                await asyncio.sleep(0.1)
                continue
            self.calls += 1
            self.bytes += 2 * len(answer)

    async def generated_from(self, peer: str, size: int) -> None:
        conn = self.manager.connection(peer)
        while True:
            try:
                async with conn.stream(
                    HandlerID.TEST_STREAM_GENERATE, generate_request(2000, size)
                ) as stream:
                    while (item := await stream.recv()) is not None:
                        self.items += 1
                        self.bytes += len(item)
            except Disconnected:
                self.errors += 1
                await asyncio.sleep(0.1)

    async def echoed_by(self, peer: str, size: int) -> None:
        conn, payload = self.manager.connection(peer), os.urandom(size)
        while True:
            try:
                async with conn.stream(HandlerID.TEST_STREAM_ECHO) as stream:
                    for _ in range(500):
                        await stream.send(payload)
                        item = await stream.recv()
                        assert item is not None
                        self.items += 1
                        self.bytes += 2 * len(item)
            except Disconnected:
                self.errors += 1
                await asyncio.sleep(0.1)

    def tasks(self, group: asyncio.TaskGroup) -> list[asyncio.Task[None]]:
        made = []
        for peer in self.peers:
            made += [group.create_task(self.calls_to(peer, 256 * KiB)) for _ in range(4)]
            made += [group.create_task(self.calls_to(peer, 100)) for _ in range(8)]
            made.append(group.create_task(self.generated_from(peer, 64 * KiB)))
            made.append(group.create_task(self.echoed_by(peer, 16 * KiB)))
        return made


def sessions_ended(manager: Manager) -> int:
    """Sessions of ``manager``'s connections that ended (works on any version's counters)."""
    return sum(
        max(0, conn.counters.sessions - (1 if conn.state is State.CONNECTED else 0))
        for conn in manager.connections()
    )


def lost_in_log(text: str) -> int:
    """Sessions a node process logged as lost (a ``connected -> ...`` state change)."""
    return sum(
        1 for line in text.splitlines() if ": connected -> " in line and "-> shutdown" not in line
    )


async def soak(seconds: float, hogs: int, workdir: Path) -> dict[str, Any]:
    socks = [listening_socket() for _ in range(3)]
    hosts = [host_of(sock) for sock in socks]
    nodes = [
        NodeProcess(socks[i], [h for h in hosts if h != hosts[i]], log_path=str(workdir / f"n{i}"))
        for i in (1, 2)
    ]
    manager = Manager(hosts[0], hosts[1:], TEST_SECRET, config=profile("fast"))
    register_test_handlers(manager)
    runner = await serve_manager(manager, socks[0])
    burners: list[subprocess.Popen[bytes]] = []
    try:
        for node in nodes:
            await asyncio.to_thread(node.start)
        await manager.start()
        await manager.wait_connected(30)
        for node in nodes:  # and the two node processes to each other
            await asyncio.wait_for(_wait_logged(node, hosts), 30)
        before = sessions_ended(manager)
        burners = start_hogs(hogs)
        traffic = Traffic(manager, hosts[1:])
        worst_ours = worst_peers = worst_window = 0.0
        started = time.monotonic()
        async with asyncio.TaskGroup() as group:
            workers = traffic.tasks(group)
            while time.monotonic() - started < seconds:
                await asyncio.sleep(0.5)
                worst_ours = max(worst_ours, manager.monitor.worst_lag())
                for conn in manager.connections():
                    stats = conn.stats()
                    worst_peers = max(worst_peers, stats.peer_loop_lag or 0.0)
                    worst_window = max(worst_window, getattr(stats, "silence_window", 0) or 0)
            for worker in workers:
                worker.cancel()
        elapsed = time.monotonic() - started
        ours_lost = sessions_ended(manager) - before
        theirs_lost = sum(lost_in_log(node.log_text()) for node in nodes)
        return {
            "soak_seconds": round(elapsed, 1),
            "soak_cpu_hogs": hogs,
            "soak_disconnects": ours_lost + theirs_lost,
            "soak_calls": traffic.calls,
            "soak_stream_items": traffic.items,
            "soak_mib_moved": round(traffic.bytes / (1 << 20), 1),
            "soak_call_errors": traffic.errors,
            "soak_worst_loop_lag_s": round(max(worst_ours, worst_peers), 3),
            "soak_worst_own_loop_lag_s": round(worst_ours, 3),
            "soak_worst_peer_loop_lag_s": round(worst_peers, 3),
            "soak_longest_own_stall_s": round(manager.monitor.longest_stall(), 3),
            "soak_worst_silence_window_s": round(worst_window, 3) if worst_window else None,
            "soak_meets_target": ours_lost + theirs_lost == 0,
        }
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
        await manager.close()
        await runner.cleanup()
        for node in nodes:
            await asyncio.to_thread(node.kill)
        for sock in socks:
            sock.close()


async def _wait_logged(node: NodeProcess, hosts: list[str]) -> None:
    """Until ``node`` logged being connected to each of its peers."""
    wanted = {f"{node.host}->{peer}:" for peer in hosts if peer != node.host}
    while True:
        lines = [line for line in node.log_text().splitlines() if "-> connected" in line]
        if all(any(where in line for line in lines) for where in wanted):
            return
        await asyncio.sleep(0.1)


# ------------------------------------------------------------------ the run


def summary(results: list[dict[str, float | str]]) -> dict[str, Any]:
    times = [float(r["detect_s"]) for r in results]
    return {
        "p50_s": round(statistics.median(times), 3),
        "worst_s": round(max(times), 3),
        "causes": sorted({str(r["cause"]).split(":")[0] for r in results}),
    }


async def main(rounds: int, soak_s: float, hogs: int, minio: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"benchmark": "failure_detection", "rounds": rounds}
    config = profile("fast")
    out["fast_ping_interval_s"] = config.ping_interval
    out["fast_dead_after_s"] = config.dead_after
    out["fast_dead_after_max_s"] = getattr(config, "dead_after_max", config.dead_after)
    why_not = partition_unavailable()
    faults = ["frozen", "killed"] + (["partition"] if not why_not else [])
    if why_not:
        out["partition_skipped"] = why_not
    raw: dict[str, list[dict[str, float | str]]] = {}
    for _ in range(rounds):
        for profile_name in ["fast", "minio"] if minio else ["fast"]:
            for fault in faults:  # alternate, so drift hits them alike
                if profile_name == "minio" and fault == "partition":
                    continue
                key = f"{profile_name}_{fault}"
                raw.setdefault(key, []).append(await one_round(profile_name, fault))
                log(key, raw[key][-1])
    for key, results in raw.items():
        found = summary(results)
        out[f"{key}_detect_p50_s"] = found["p50_s"]
        out[f"{key}_detect_worst_s"] = found["worst_s"]
        out[f"{key}_causes"] = found["causes"]
        if "reconnect_s" in results[0]:
            out[f"{key}_reconnect_p50_s"] = statistics.median(
                float(r["reconnect_s"]) for r in results
            )
    silent = [r for key in ("fast_frozen", "fast_partition") for r in raw.get(key, [])]
    found = summary(silent)
    out["fast_silent_detect_p50_s"] = found["p50_s"]
    out["fast_silent_detect_worst_s"] = found["worst_s"]
    out["detect_target"] = {"p50_s": TARGET_P50_S, "worst_s": TARGET_WORST_S}
    out["detect_meets_target"] = (
        found["p50_s"] <= TARGET_P50_S and found["worst_s"] <= TARGET_WORST_S and not why_not
    )
    if minio:
        out["frozen_speedup_vs_minio"] = round(
            out["minio_frozen_detect_p50_s"] / out["fast_frozen_detect_p50_s"], 2
        )
    if soak_s > 0:
        with tempfile.TemporaryDirectory(prefix="detect-soak-") as tmp:
            out.update(await soak(soak_s, hogs, Path(tmp)))
            log("soak", {k: v for k, v in out.items() if k.startswith("soak")})
    out["raw"] = raw
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="rounds per fault [7]")
    parser.add_argument("--soak", type=float, default=60.0, help="soak seconds, 0 to skip [60]")
    parser.add_argument("--hogs", type=int, default=2, help="CPU hogs during the soak [2]")
    parser.add_argument("--minio", action="store_true", help="also the minio profile (slow)")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.rounds, args.soak, args.hogs, args.minio))))
